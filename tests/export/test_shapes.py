"""Shapes: one description, span template and metric series per exchange shape; sizes, times and
route overflows still counted per exchange."""

from __future__ import annotations

import time

from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans
from opentelemetry.sdk.resources import Resource

from beyla_sidecar.bpf.events import ConnTuple
from beyla_sidecar.config import Config, load
from beyla_sidecar.export.metrics import Metrics
from beyla_sidecar.export.shapes import Shapes
from beyla_sidecar.export.traces import TraceExport
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange
from beyla_sidecar.tracker.routes import OVERFLOW_ROUTE, Drop, Routes

from ..protocols.test_http1 import parse
from .test_spans import FixedClock

CONN = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
OTHER = ConnTuple("10.0.0.1", 8080, "10.0.0.3", 41000)
HTTP = HTTP1()


def exchange(request: bytes, response: bytes | None, kind: SpanKind = SpanKind.SERVER,
             conn: ConnTuple = CONN) -> Exchange:
    p = parse(request, response)
    return Exchange(HTTP, kind, p.request, p.response, TraceContext(1, 2), 10, 11, 10, conn)


def get(size: int = 2, path: str = "/users/1", host: str = "shop") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode() + b"x" * size


def ok(size: int = 2, status: int = 200) -> bytes:
    return f"HTTP/1.1 {status} OK\r\nContent-Length: {size}\r\n\r\n".encode() + b"y" * size


class Setup:
    def __init__(self, routes: Routes | None = None, traces: bool = True) -> None:
        env = {"BEYLA_TRACE_PRINTER": "json" if traces else "disabled"}
        self.export = TraceExport(load(Config, env), FixedClock())
        self.metrics = Metrics(all_protocols())
        self.service = self.metrics.service("shop", Resource({"service.name": "shop"}))
        self.routes = routes or Routes((), "auto", 100)
        self.shapes = Shapes("shop", self.routes, self.export, self.service, False)

    def record(self, ex: Exchange) -> None:
        """What the pipeline does with one exchange."""
        shape = self.shapes.get(ex)
        if shape.metrics is not None:
            series = shape.series(ex)
            if series is not None:
                shape.metrics.add(series, ex.protocol.metric_values(ex.request, ex.response))

    def span(self, ex: Exchange) -> dict[str, object]:
        template = self.shapes.get(ex).template
        assert template is not None
        framed = self.export._encoder.encode(ex, template)  # noqa: SLF001 (the bytes submit queues)
        span = ScopeSpans.FromString(framed).spans[0]
        return {a.key: a.value.int_value or a.value.string_value for a in span.attributes}

    def close(self) -> None:
        self.export.shutdown(time.monotonic() + 1.0)


def test_one_shape_for_exchanges_that_differ_in_sizes_and_times_only() -> None:
    s = Setup()
    a, b = exchange(get(2), ok(2)), exchange(get(5), ok(9))
    b.request.start_ns += 1000
    assert s.shapes.get(a) is s.shapes.get(b)
    assert s.shapes.get(exchange(get(path="/users/2"), ok())) is not s.shapes.get(a)  # another path
    assert s.shapes.get(exchange(get(), ok(status=500))) is not s.shapes.get(a)  # another status
    assert s.shapes.get(exchange(get(), None)) is not s.shapes.get(a)  # no response
    assert s.shapes.get(exchange(get(), ok(), SpanKind.CLIENT)) is not s.shapes.get(a)
    # each span still carries its own exchange's sizes
    assert [(x["http.request.body.size"], x["http.response.body.size"]) for x in (s.span(a), s.span(b))] == [
        (2, 2), (5, 9)]
    s.close()


def test_metrics_count_every_exchange_of_a_shape() -> None:
    s = Setup()
    for size in (1, 2, 3, 4):
        s.record(exchange(get(size), ok(10 * size)))
    [snap] = s.metrics.snapshot()
    counts = {i.instrument.name: [(p.buckets.count, p.buckets.sum) for p in i.points] for i in snap.instruments}
    assert counts["http.server.request.body.size"] == [(4, 10)]
    assert counts["http.server.response.body.size"] == [(4, 100)]
    s.close()


def test_client_series_per_connection_when_the_peer_names_the_server() -> None:
    s = Setup()
    no_host = b"GET /users/1 HTTP/1.1\r\n\r\n"
    for conn in (CONN, OTHER, CONN):
        s.record(exchange(no_host, ok(), SpanKind.CLIENT, conn))
    [snap] = s.metrics.snapshot()
    duration = next(i for i in snap.instruments if i.instrument.name == "http.client.request.duration")
    assert sorted((p.attributes["server.address"], p.buckets.count) for p in duration.points) == [
        ("10.0.0.2", 2), ("10.0.0.3", 1)]
    s.close()


def test_route_overflow_counted_for_every_exchange() -> None:
    s = Setup(Routes((), "path", 1))
    s.record(exchange(get(path="/a"), ok()))
    for _ in range(3):
        s.record(exchange(get(path="/b"), ok()))
    assert s.shapes.get(exchange(get(path="/b"), ok())).route == OVERFLOW_ROUTE
    assert s.routes.overflows == {"shop": 4}
    s.close()


def test_ignored_routes_and_no_span_destination() -> None:
    s = Setup(Routes((), "auto", 100, ignore=("/health",), ignore_mode=Drop.TRACES))
    health = s.shapes.get(exchange(get(path="/health"), ok()))
    assert health.drop is Drop.TRACES and health.template is None and health.metrics is not None
    s.close()
    quiet = Setup(traces=False)
    shape = quiet.shapes.get(exchange(get(), ok()))
    assert shape.template is None and shape.metrics is not None
    quiet.close()


def test_messages_of_unknown_shape_are_described_one_by_one() -> None:
    s = Setup()
    a, b = exchange(get(), ok()), exchange(get(), ok())
    a.request.shape = b.request.shape = None
    assert s.shapes.get(a) is not s.shapes.get(b)
    assert s.span(a)["url.path"] == "/users/1"
    s.close()
