"""SIGTERM/SIGINT as a stop event, for the long-running commands (run, webhook)."""

from __future__ import annotations

import os
import signal
import threading


class StopSignal(threading.Event):
    """Set by SIGTERM or SIGINT. The handler only records and sets: it may interrupt the main
    thread inside a log write, and logging from it would wait forever on the logger's lock.
    fileno() turns readable when a signal comes (signal.set_wakeup_fd): a wait that watches it
    ends at once, where Python would resume it after the handler ran."""

    def __init__(self) -> None:  # call from the main thread
        super().__init__()
        self.received: str | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def fileno(self) -> int:
        return self._wake_read

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = signal.Signals(signum).name
        self.set()

