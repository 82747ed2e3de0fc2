"""OTLP metric push against a real gRPC receiver: counted failures while it is down, recovery after."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.resources import Resource

from beyla_sidecar.export.metrics import Metrics, to_metrics_data
from beyla_sidecar.export.otlp_metrics import MetricPush
from beyla_sidecar.protocols import all_protocols

from ..e2e.otlp_metrics_receiver import MetricsReceiver
from ..e2e.pod import free_port
from .test_metrics import exchange, record
from .test_traces import DEADLINE, MARGIN, refused, stalled

KEY = ("shop", "http.server.request.duration",
       (("http.request.method", "GET"), ("http.response.status_code", 200), ("http.route", "/users/{id}")))


def wait(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_push_fails_while_down_then_delivers_everything() -> None:
    m = Metrics(all_protocols())
    sm = m.service("shop", Resource({"service.name": "shop"}))
    port = free_port()
    push = MetricPush(lambda: to_metrics_data(m.snapshot()), interval=0.2, timeout=0.5,
                      endpoint=f"http://127.0.0.1:{port}")
    push.start()
    try:
        assert push.exports == 0  # nothing recorded yet: nothing sent
        for _ in range(5):
            record(sm, exchange())
        assert wait(lambda: push.failures >= 2)
        with MetricsReceiver(port) as receiver:
            for _ in range(2):
                record(sm, exchange())
            assert wait(lambda: receiver.counts().get(KEY) == 7)
            failures = push.failures
            assert wait(lambda: push.exports >= failures + 2)  # succeeding now
            assert push.failures == failures
            assert receiver.resources()[0]["service.name"] == "shop"
    finally:
        push.stop(time.monotonic() + 5)


def test_final_export_on_stop() -> None:
    m = Metrics(all_protocols())
    sm = m.service("shop", Resource({"service.name": "shop"}))
    with MetricsReceiver() as receiver:
        push = MetricPush(lambda: to_metrics_data(m.snapshot()), interval=3600, timeout=5,
                          endpoint=f"http://127.0.0.1:{receiver.port}")
        push.start()
        record(sm, exchange())
        assert push.stop(time.monotonic() + 5) == 0
        assert receiver.counts().get(KEY) == 1
        assert (push.exports, push.failures, push.abandoned) == (1, 0, 0)


@pytest.mark.parametrize("collector", [stalled, refused], ids=["stalled", "refused"])
def test_stop_abandons_the_final_export_at_the_deadline(collector) -> None:
    m = Metrics(all_protocols())
    record(m.service("shop", Resource({"service.name": "shop"})), exchange())
    with collector() as port:
        # OTEL_METRIC_EXPORT_TIMEOUT's default: the export and its retries would go on for 30 s
        push = MetricPush(lambda: to_metrics_data(m.snapshot()), interval=3600, timeout=30,
                          endpoint=f"http://127.0.0.1:{port}")
        push.start()
        started = time.monotonic()
        assert push.stop(started + DEADLINE) == 1
        assert DEADLINE <= time.monotonic() - started < DEADLINE + MARGIN
        assert (push.exports, push.failures, push.abandoned) == (1, 0, 1)
