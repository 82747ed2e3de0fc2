"""SIGTERM stops the sidecar promptly: the handler never logs (no deadlock during a log write),
and the final export keeps to BEYLA_SHUTDOWN_TIMEOUT_MS whatever the collector does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from .e2e.pod import APPS, Pod, Sidecar, free_port
from .e2e.test_http import start_python_server
from .export.test_traces import refused, stalled


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


SHUTDOWN_TIMEOUT_MS = 2000
MARGIN = 2.0  # after the deadline: the abort (0.5 s at most), the probes' detach, the interpreter's exit


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod(tmp_path)
    yield p
    p.close()


@pytest.mark.bpf
@pytest.mark.parametrize("collector", [stalled, refused], ids=["stalled", "refused"])
def test_sigterm_exits_within_the_shutdown_deadline_and_reports_what_it_abandoned(pod: Pod, collector) -> None:
    app = free_port()
    start_python_server(pod, app, inside=True, service="app")
    with collector() as port:
        sidecar = Sidecar(pod, {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                                "BEYLA_TRACE_PRINTER": "disabled",
                                "BEYLA_SHUTDOWN_TIMEOUT_MS": str(SHUTDOWN_TIMEOUT_MS),
                                # nothing leaves before SIGTERM: everything is for the final export
                                "OTEL_BSP_SCHEDULE_DELAY": "600000", "OTEL_METRIC_EXPORT_INTERVAL": "600000"})
        pod.run([sys.executable, str(APPS / "keepalive_client.py"), str(app), "9"])  # 10 requests
        started = time.monotonic()
        assert sidecar.stop() == 0
        elapsed = time.monotonic() - started
    logs = [json.loads(line) for line in sidecar.err.read_text().splitlines() if line.startswith("{")]
    [final] = [entry for entry in logs if entry["event"] == "final export"]
    # server and client side of each request, all queued; the one metric export due at shutdown
    assert (final["spans_abandoned"], final["metric_exports_abandoned"]) == ({"otlp": 20}, 1)
    assert SHUTDOWN_TIMEOUT_MS / 1000 <= elapsed < SHUTDOWN_TIMEOUT_MS / 1000 + MARGIN


@pytest.mark.bpf
@pytest.mark.parametrize("delay", [0.25, 0.5, 0.75])
def test_sigterm_ends_the_idle_wait_of_the_ring_at_once(pod: Pod, delay: float) -> None:
    """An idle pod's loop waits a second at a time for the ring; a SIGTERM ends that wait at once
    (the signal's wakeup pipe is in the ring's epoll) wherever in the wait it lands, where Python
    would go back to waiting after the handler ran."""
    sidecar = Sidecar(pod, {"BEYLA_TRACE_PRINTER": "disabled"})
    time.sleep(2 + delay)  # nothing in the pod: the loop is in its 1 s waits
    sent = time.time()
    assert sidecar.stop() == 0
    logs = [json.loads(line) for line in sidecar.err.read_text().splitlines() if line.startswith("{")]
    [stopping] = [entry for entry in logs if entry["event"] == "stopping"]
    latency = datetime.fromisoformat(stopping["timestamp"]).timestamp() - sent
    print(f"SIGTERM {delay} s into the idle: the loop stopped {latency * 1000:.0f} ms later")
    assert latency < 0.2
