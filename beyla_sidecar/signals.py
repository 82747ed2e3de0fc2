"""SIGTERM/SIGINT as a stop event, for the long-running commands (run, webhook)."""

from __future__ import annotations

import signal
import threading

import structlog

log = structlog.get_logger()


def stop_on_signals(what: str) -> threading.Event:
    """An event set by SIGTERM or SIGINT; install from the main thread."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info(f"signal received, {what}", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
