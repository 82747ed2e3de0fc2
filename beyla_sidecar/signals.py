"""SIGTERM/SIGINT as a stop event, for the long-running commands (run, webhook)."""

from __future__ import annotations

import signal
import threading


class StopSignal(threading.Event):
    """Set by SIGTERM or SIGINT. The handler only records and sets: it may interrupt the main
    thread inside a log write, and logging from it would wait forever on the logger's lock."""

    def __init__(self) -> None:  # call from the main thread
        super().__init__()
        self.received: str | None = None
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.received = signal.Signals(signum).name
        self.set()

