"""Span export queues against a real OTLP/gRPC receiver: exact deliveries, drops and failures."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from beyla_sidecar.config import Config, load
from beyla_sidecar.export.otlp_encode import SpanItem
from beyla_sidecar.export.resource import ResourceFactory
from beyla_sidecar.export.traces import BatchSettings, TraceExport
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.tracker.context import TraceContext, new_span_id, new_trace_id
from beyla_sidecar.tracker.exchange import Exchange

from ..e2e.otlp_receiver import Receiver
from .test_spans import SERVER_DESC, FixedClock, exchange


class BlockingReceiver(Receiver):
    """Holds every export until released: a collector that stalls."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        self.entered.set()
        self.release.wait(10)
        return super().Export(request, context)


class HeaderReceiver(Receiver):
    """Keeps the gRPC metadata of every export."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, str]] = []

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        self.metadata.append(dict(context.invocation_metadata()))
        return super().Export(request, context)


def new_exchange() -> Exchange:
    ex = exchange(SpanKind.SERVER)
    ex.context = TraceContext(new_trace_id(), new_span_id())
    return ex


def otlp_export(port: int, **env: str) -> TraceExport:
    settings = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{port}", **env}
    return TraceExport(load(Config, settings), FixedClock())


def resources(export: TraceExport) -> list[bytes]:
    factory = ResourceFactory(load(Config, {}))
    return [export.resource(factory.create(pid, None)) for pid in (17, 18)]


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_receiver_gets_exactly_the_spans_submitted() -> None:
    with Receiver() as receiver:
        export = otlp_export(receiver.port, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="100", OTEL_BSP_SCHEDULE_DELAY="50")
        shop, cart = resources(export)
        sent: dict[bytes, int] = {}
        for i in range(1000):
            ex = new_exchange()
            sent[ex.context.span_id.to_bytes(8, "big")] = 17 + i % 2
            export.submit(ex, SERVER_DESC, shop if i % 2 == 0 else cart)
        stats = export.stats["otlp"]
        wait_for(lambda: stats.exported == 1000)  # the worker alone, without flush()
        export.shutdown()
        received = {span.span_id: resource["process.pid"] for resource, span in receiver.spans()}
        assert received == sent
        assert (stats.queued, stats.exported, stats.failed, stats.dropped) == (1000, 1000, 0, 0)
        assert len(receiver.requests) >= 10  # batches of at most 100
        assert all(sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) <= 100
                   for r in receiver.requests)
        assert all(len(r.resource_spans) <= 2 for r in receiver.requests)  # grouped by resource


def test_standard_exporter_variables_still_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=acme")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    with HeaderReceiver() as receiver:
        export = otlp_export(receiver.port)
        export.submit(new_exchange(), SERVER_DESC, b"")
        export.flush()
        assert len(receiver.spans()) == 1 and receiver.metadata[0]["x-tenant"] == "acme"
        export.shutdown()


def test_full_queue_drops_are_counted_exactly() -> None:
    with BlockingReceiver() as receiver:
        export = otlp_export(receiver.port, OTEL_BSP_MAX_QUEUE_SIZE="50", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
                             OTEL_BSP_SCHEDULE_DELAY="60000")
        resource = b""
        for _ in range(10):  # one full batch: the worker takes it and the receiver holds it
            export.submit(new_exchange(), SERVER_DESC, resource)
        assert receiver.entered.wait(10)
        for _ in range(60):  # 50 fit the queue, 10 do not
            export.submit(new_exchange(), SERVER_DESC, resource)
        stats = export.stats["otlp"]
        assert (stats.queued, stats.dropped) == (60, 10)
        receiver.release.set()
        export.flush()
        assert (stats.queued, stats.exported, stats.failed, stats.dropped) == (60, 60, 0, 10)
        assert len(receiver.spans()) == 60
        export.submit(new_exchange(), SERVER_DESC, resource)  # room again
        assert stats.queued == 61
        export.shutdown()
        assert len(receiver.spans()) == 61


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receiver_down_is_counted_as_failed() -> None:
    export = otlp_export(closed_port(), OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10", OTEL_BSP_EXPORT_TIMEOUT="300")
    for _ in range(25):
        export.submit(new_exchange(), SERVER_DESC, b"")
    started = time.monotonic()
    export.flush()
    stats = export.stats["otlp"]
    assert (stats.queued, stats.exported, stats.failed, stats.dropped) == (25, 0, 25, 0)
    assert time.monotonic() - started < 5  # OTEL_BSP_EXPORT_TIMEOUT cut the retries short
    export.shutdown()


def test_shutdown_exports_what_is_queued_then_refuses() -> None:
    with Receiver() as receiver:
        export = otlp_export(receiver.port, OTEL_BSP_SCHEDULE_DELAY="60000")
        for _ in range(5):  # less than a batch, long before the delay
            export.submit(new_exchange(), SERVER_DESC, b"")
        export.shutdown()
        assert len(receiver.spans()) == 5
        export.submit(new_exchange(), SERVER_DESC, b"")
        stats = export.stats["otlp"]
        assert (stats.queued, stats.exported, stats.failed, stats.dropped) == (5, 5, 0, 1)


def test_printer_destination(capsys: pytest.CaptureFixture[str]) -> None:
    export = TraceExport(load(Config, {"BEYLA_TRACE_PRINTER": "json"}), FixedClock())
    assert export.destinations == ["stdout"]
    for _ in range(3):
        export.submit(new_exchange(), SERVER_DESC, b"")
    export.flush()
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["GET /users/{id}"] * 3
    assert export.stats["stdout"].exported == 3
    export.shutdown()


def test_no_destination_costs_nothing() -> None:
    export = TraceExport(load(Config, {"BEYLA_TRACE_PRINTER": "disabled"}), FixedClock())
    assert export.destinations == [] and export.stats == {}
    export.submit(new_exchange(), SERVER_DESC, b"")
    export.flush()
    export.shutdown()


class Collect:
    """A destination that keeps the batches it is given."""

    def __init__(self) -> None:
        self.batches: list[list[SpanItem]] = []

    def export(self, items: list[SpanItem]) -> bool:
        self.batches.append(list(items))
        return True

    def shutdown(self) -> None:
        pass


def test_batches_keep_submission_order_and_size() -> None:
    export = TraceExport(load(Config, {"BEYLA_TRACE_PRINTER": "disabled"}), FixedClock())
    sink = Collect()
    export.add("collect", sink, BatchSettings(100, 7, 60.0, 1.0))
    exchanges = [new_exchange() for _ in range(20)]
    for ex in exchanges:
        export.submit(ex, SERVER_DESC, b"r")
    export.flush()
    assert [len(b) for b in sink.batches] == [7, 7, 6]
    items = [item for batch in sink.batches for item in batch]
    assert {item.resource for item in items} == {b"r"}
    assert [Span.FromString(item.span).span_id for item in items] == [
        ex.context.span_id.to_bytes(8, "big") for ex in exchanges]
    export.shutdown()
