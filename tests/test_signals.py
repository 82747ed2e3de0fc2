"""SIGTERM during a log write must not deadlock: the handler never logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap


def test_sigterm_while_logging_stops_promptly() -> None:
    # The child logs in a tight loop with structlog's locking PrintLogger while it is sent
    # SIGTERM many times; a handler that logged would, sooner or later, wait on that lock forever.
    code = textwrap.dedent("""
        import structlog, sys
        from beyla_sidecar.log import configure
        from beyla_sidecar.signals import StopSignal
        configure("info")
        log = structlog.get_logger()
        stop = StopSignal()
        print("ready", file=sys.stdout, flush=True)
        while not stop.is_set():
            log.info("busy", n=1)
        print(stop.received, file=sys.stdout, flush=True)
    """)
    for _ in range(20):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=10)
        assert out == "SIGTERM\n" and child.returncode == 0
