"""Span export queues against a real OTLP/gRPC receiver: exact deliveries, drops, failures and
what the shutdown deadline abandons."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

from beyla_sidecar.config import Config, load
from beyla_sidecar.export.otlp_encode import SpanItem
from beyla_sidecar.export.resource import ResourceFactory
from beyla_sidecar.export.spans import SpanEncoder
from beyla_sidecar.export.traces import BatchSettings, TraceExport
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.tracker.context import TraceContext, new_span_id, new_trace_id
from beyla_sidecar.tracker.exchange import Exchange

from ..e2e.otlp_receiver import Receiver
from .test_spans import SERVER_DESC, FixedClock, exchange

TEMPLATE = SpanEncoder.template(SERVER_DESC, HTTP1.size_attributes)


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


class StalledCollector:
    """A TCP listener that accepts connections and never answers, not even the HTTP/2 handshake."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self._connections.append(conn)

    def __enter__(self) -> StalledCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for conn in self._connections:
            conn.close()


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


def shutdown(export: TraceExport, seconds: float = 10.0) -> dict[str, int]:
    """export.shutdown() with a deadline `seconds` away."""
    return export.shutdown(time.monotonic() + seconds)


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
            export.submit(ex, TEMPLATE, shop if i % 2 == 0 else cart)
        stats = export.stats["otlp"]
        wait_for(lambda: stats.exported == 1000)  # the worker alone, before shutdown
        assert shutdown(export) == {"otlp": 0}
        received = {span.span_id: resource["process.pid"] for resource, span in receiver.spans()}
        assert received == sent
        assert (stats.queued, stats.exported, stats.failed, stats.dropped, stats.abandoned) == (1000, 1000, 0, 0, 0)
        assert len(receiver.requests) >= 10  # batches of at most 100
        assert all(sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans) <= 100
                   for r in receiver.requests)
        assert all(len(r.resource_spans) <= 2 for r in receiver.requests)  # grouped by resource


def test_standard_exporter_variables_still_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=acme")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    with HeaderReceiver() as receiver:
        export = otlp_export(receiver.port)
        export.submit(new_exchange(), TEMPLATE, b"")
        shutdown(export)
        assert len(receiver.spans()) == 1 and receiver.metadata[0]["x-tenant"] == "acme"


def test_full_queue_drops_are_counted_exactly() -> None:
    with BlockingReceiver() as receiver:
        export = otlp_export(receiver.port, OTEL_BSP_MAX_QUEUE_SIZE="50", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
                             OTEL_BSP_SCHEDULE_DELAY="60000")
        resource = b""
        for _ in range(10):  # one full batch: the worker takes it and the receiver holds it
            export.submit(new_exchange(), TEMPLATE, resource)
        assert receiver.entered.wait(10)
        for _ in range(60):  # 50 fit the queue, 10 do not
            export.submit(new_exchange(), TEMPLATE, resource)
        stats = export.stats["otlp"]
        assert (stats.queued, stats.dropped) == (60, 10)
        receiver.release.set()
        wait_for(lambda: stats.exported == 60)  # the worker goes on with the full batches queued meanwhile
        assert (stats.queued, stats.exported, stats.failed, stats.dropped) == (60, 60, 0, 10)
        assert len(receiver.spans()) == 60
        export.submit(new_exchange(), TEMPLATE, resource)  # room again
        assert stats.queued == 61
        assert shutdown(export) == {"otlp": 0}
        assert len(receiver.spans()) == 61


def full_queue(receiver: BlockingReceiver) -> TraceExport:
    """50 spans queued (the queue's size) behind a batch of 10 the receiver holds."""
    export = otlp_export(receiver.port, OTEL_BSP_MAX_QUEUE_SIZE="50", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
                         OTEL_BSP_SCHEDULE_DELAY="60000")
    for _ in range(10):
        export.submit(new_exchange(), TEMPLATE, b"")
    assert receiver.entered.wait(10)
    for _ in range(50):
        export.submit(new_exchange(), TEMPLATE, b"")
    assert export.stats["otlp"].dropped == 0
    return export


def test_make_room_waits_for_the_worker_to_take_a_batch() -> None:
    with BlockingReceiver() as receiver:
        export = full_queue(receiver)
        threading.Timer(0.2, receiver.release.set).start()
        started = time.monotonic()
        export.make_room(10, 30.0)  # returns once the first export is answered and the next batch leaves
        assert time.monotonic() - started < 20
        for _ in range(10):
            export.submit(new_exchange(), TEMPLATE, b"")
        stats = export.stats["otlp"]
        assert (stats.queued, stats.dropped) == (70, 0)
        assert shutdown(export) == {"otlp": 0}
        assert len(receiver.spans()) == 70


def test_make_room_gives_up_on_a_stalled_worker_until_it_takes_a_batch() -> None:
    with BlockingReceiver() as receiver:
        export = full_queue(receiver)
        export.make_room(10, 0.2)  # the receiver holds the first export: nothing leaves
        started = time.monotonic()
        export.make_room(10, 30.0)  # not waited for again
        assert time.monotonic() - started < 20
        for _ in range(10):
            export.submit(new_exchange(), TEMPLATE, b"")
        stats = export.stats["otlp"]
        assert (stats.queued, stats.dropped) == (60, 10)  # as without make_room: counted
        receiver.release.set()
        wait_for(lambda: stats.exported == 60)
        assert shutdown(export) == {"otlp": 0}


def test_make_room_does_not_wait_without_a_full_batch_to_take() -> None:
    export = TraceExport(load(Config, {"BEYLA_TRACE_PRINTER": "disabled"}), FixedClock())
    sink = Collect()
    export.add("collect", sink, BatchSettings(20, 10, 60.0, 1.0))
    for _ in range(5):
        export.submit(new_exchange(), TEMPLATE, b"r")
    started = time.monotonic()
    export.make_room(512, 30.0)  # more than the queue holds, but the worker has no batch to take
    assert time.monotonic() - started < 20
    assert sink.batches == []
    assert shutdown(export) == {"collect": 0}
    assert [len(b) for b in sink.batches] == [5]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_receiver_down_is_counted_as_failed() -> None:
    export = otlp_export(closed_port(), OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10", OTEL_BSP_EXPORT_TIMEOUT="300")
    for _ in range(25):
        export.submit(new_exchange(), TEMPLATE, b"")
    started = time.monotonic()
    assert shutdown(export) == {"otlp": 0}  # failed before the deadline: not abandoned
    stats = export.stats["otlp"]
    assert (stats.queued, stats.exported, stats.failed, stats.dropped, stats.abandoned) == (25, 0, 25, 0, 0)
    assert time.monotonic() - started < 5  # OTEL_BSP_EXPORT_TIMEOUT cut the retries short


def test_shutdown_exports_what_is_queued_then_refuses() -> None:
    with Receiver() as receiver:
        export = otlp_export(receiver.port, OTEL_BSP_SCHEDULE_DELAY="60000")
        for _ in range(5):  # less than a batch, long before the delay
            export.submit(new_exchange(), TEMPLATE, b"")
        assert shutdown(export) == {"otlp": 0}
        assert len(receiver.spans()) == 5
        export.submit(new_exchange(), TEMPLATE, b"")
        stats = export.stats["otlp"]
        assert (stats.queued, stats.exported, stats.failed, stats.dropped, stats.abandoned) == (5, 5, 0, 1, 0)


@contextlib.contextmanager
def stalled() -> Iterator[int]:
    with StalledCollector() as collector:
        yield collector.port


@contextlib.contextmanager
def refused() -> Iterator[int]:
    yield closed_port()


@contextlib.contextmanager
def sleeping() -> Iterator[int]:
    with BlockingReceiver() as receiver:
        try:
            yield receiver.port
        finally:
            receiver.release.set()


# Collectors that answer no export within the deadline: a stalled socket, a refused port, a handler that sleeps.
UNREACHABLE: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
    "stalled": stalled, "refused": refused, "sleeping": sleeping}
DEADLINE = 1.0
MARGIN = 1.0  # ABORT_GRACE_SECONDS at most, and a busy machine


@pytest.mark.parametrize("collector", UNREACHABLE.values(), ids=UNREACHABLE.keys())
def test_shutdown_abandons_at_the_deadline_what_was_not_delivered(collector) -> None:
    with collector() as port:
        # the exporter's own timeout (10 s) and retries would outlast the deadline many times
        export = otlp_export(port, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="100", OTEL_BSP_SCHEDULE_DELAY="60000")
        for _ in range(250):  # two full batches (the worker starts on them) and 50 more
            export.submit(new_exchange(), TEMPLATE, b"")
        started = time.monotonic()
        assert export.shutdown(started + DEADLINE) == {"otlp": 250}
        assert DEADLINE <= time.monotonic() - started < DEADLINE + MARGIN
        stats = export.stats["otlp"]
        assert (stats.queued, stats.exported, stats.failed, stats.dropped, stats.abandoned) == (250, 0, 0, 0, 250)


class AnswersOnce(BlockingReceiver):
    """Answers the first export and holds the others: a collector that stalls mid-flush."""

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        if not self.requests:
            return Receiver.Export(self, request, context)
        return super().Export(request, context)


def test_shutdown_splits_delivered_and_abandoned_exactly() -> None:
    with AnswersOnce() as receiver:
        export = otlp_export(receiver.port, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="100", OTEL_BSP_SCHEDULE_DELAY="60000")
        for _ in range(250):
            export.submit(new_exchange(), TEMPLATE, b"")
        try:
            assert shutdown(export, DEADLINE) == {"otlp": 150}  # the batch held and the 50 never sent
        finally:
            receiver.release.set()
        stats = export.stats["otlp"]
        assert (stats.queued, stats.exported, stats.failed, stats.abandoned) == (250, 100, 0, 150)
        assert len(receiver.spans()) == 100


def test_printer_destination(capsys: pytest.CaptureFixture[str]) -> None:
    export = TraceExport(load(Config, {"BEYLA_TRACE_PRINTER": "json"}), FixedClock())
    assert export.destinations == ["stdout"]
    for _ in range(3):
        export.submit(new_exchange(), TEMPLATE, b"")
    assert shutdown(export) == {"stdout": 0}
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["GET /users/{id}"] * 3
    assert export.stats["stdout"].exported == 3


def test_no_destination_costs_nothing() -> None:
    export = TraceExport(load(Config, {"BEYLA_TRACE_PRINTER": "disabled"}), FixedClock())
    assert export.destinations == [] and export.stats == {}
    assert not export.enabled  # the pipeline then gives exchanges no trace context and submits nothing
    assert shutdown(export) == {}


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
        export.submit(ex, TEMPLATE, b"r")
    assert shutdown(export) == {"collect": 0}
    assert [len(b) for b in sink.batches] == [7, 7, 6]
    items = [item for batch in sink.batches for item in batch]
    assert {resource for resource, _ in items} == {b"r"}
    assert [ScopeSpans.FromString(span).spans[0].span_id for _, span in items] == [
        ex.context.span_id.to_bytes(8, "big") for ex in exchanges]
