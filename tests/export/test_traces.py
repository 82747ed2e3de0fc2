"""Span export queues: a stuck exporter leads to counted drops, never to unbounded memory."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from beyla_sidecar.config import Config, load
from beyla_sidecar.export.traces import TraceExport

from .test_spans import RESOURCE, ProtoKind, exchange, span_of


class Stuck(SpanExporter):
    """Blocks every export until released, like a collector that never answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.received = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.received += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_full_queue_drops_are_counted_and_bounded() -> None:
    cfg = load(Config, {"BEYLA_TRACE_PRINTER": "disabled", "OTEL_BSP_MAX_QUEUE_SIZE": "600"})
    export = TraceExport(cfg)
    stuck = Stuck()
    export._add("stuck", stuck)
    span = span_of(exchange(ProtoKind.SERVER))
    assert span.resource is RESOURCE
    for _ in range(5000):
        export.submit(span)
    stats = export.stats["stuck"]
    assert stats.in_flight <= 600 and stats.queued <= 600
    assert stats.dropped == 5000 - stats.queued >= 4400
    stuck.release.set()
    export.flush()
    deadline = time.monotonic() + 10
    while stats.exported < stats.queued and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stats.exported == stats.queued == stuck.received  # everything accepted was delivered
    export.submit(span)  # room again once the exporter caught up
    assert stats.queued == stuck.received + 1
    export.shutdown()
