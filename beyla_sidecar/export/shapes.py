"""What exporting an exchange needs that depends only on its shape, worked out once per shape.

An exchange's route, ignore decision, span name, attributes, error and metric series follow
from what its protocol read of the request and the response (their `shape`: HTTP's method,
path, Host, status...), its kind, TLS and its service. Only times, sizes, trace ids and the
connection differ from one exchange of a shape to the next. So each service keeps its shapes:
an exchange of a known shape costs a lookup, its span is the shape's encoded template plus
ids, times and sizes, and its metrics go straight into the shape's series.
"""

from __future__ import annotations

from collections.abc import Hashable

from ..bpf.events import ConnTuple
from ..protocols.base import SpanDescription, SpanKind
from ..tracker.context import TraceContext
from ..tracker.exchange import Exchange
from ..tracker.routes import Drop, Routes
from .metrics import Series, ServiceMetrics
from .spans import SpanTemplate, SpanWriter
from .traces import TraceExport

SHAPES_LIMIT = 4096  # shapes remembered per service before its cache starts over
SERIES_LIMIT = 1024  # connections whose metric series a shape remembers before starting over
_NO_RESPONSE = object()  # the response part of the key of exchanges without a response
_UNKNOWN = object()
_SERVER = SpanKind.SERVER


class Shape:
    """Exchanges of one shape: what their spans and metrics share."""

    __slots__ = ("drop", "overflowed", "route", "desc", "template", "metrics", "_series", "_export")

    def __init__(self, drop: Drop, overflowed: bool, route: str | None, desc: SpanDescription,
                 template: SpanTemplate | None, metrics: ServiceMetrics | None, export: TraceExport) -> None:
        self.drop = drop
        self.overflowed = overflowed  # its route is the overflow route: counted per exchange
        self.route = route
        self.desc = desc
        self.template = template  # None: no span destination, or the route is ignored for traces
        self.metrics = metrics  # None: no metrics, or the route is ignored for metrics
        self._series: dict[ConnTuple, Series | None] = {}  # a protocol may name the peer in its attributes
        self._export = export

    def series(self, ex: Exchange) -> Series | None:
        """The metric series exchanges of this shape on `ex`'s connection record in."""
        series = self._series.get(ex.conn, _UNKNOWN)
        if series is _UNKNOWN:
            series = self._new_series(ex)
        return series  # type: ignore[return-value]

    def output(self, ex: Exchange, resource: bytes) -> ShapeOutput:
        """Where exchanges of this shape on `ex`'s connection go, for the tracker's short way
        (tracker/known.py); `resource`: their process's, encoded (TraceExport.resource)."""
        series = self.series(ex) if self.metrics is not None else None
        t = self.template
        writer = self._export.writer(ex.conn, ex.kind is _SERVER, t) if t is not None else None
        return ShapeOutput(self.metrics if series is not None else None, series, self._export, writer, resource)

    def _new_series(self, ex: Exchange) -> Series | None:
        metrics = self.metrics
        assert metrics is not None
        m = ex.protocol.metric_attributes(ex.kind, ex.conn, self.desc, self.route, metrics.extra)
        series = metrics.series(*m) if m is not None else None
        if len(self._series) >= SERIES_LIMIT:
            self._series.clear()
        self._series[ex.conn] = series
        return series


class Shapes:
    """The shapes of one service's exchanges; written by the pipeline thread only."""

    def __init__(self, service: str, routes: Routes, export: TraceExport, metrics: ServiceMetrics | None,
                 with_query: bool) -> None:
        self._service = service
        self._routes = routes
        self._export = export
        self._metrics = metrics
        self._with_query = with_query
        self._shapes: dict[Hashable, Shape] = {}

    def get(self, ex: Exchange) -> Shape:
        """The shape of `ex`; a route overflow is counted for every exchange that has one."""
        request, response = ex.request, ex.response
        # `is`, not the Enum itself: hashing an Enum member runs Python code
        key = (ex.protocol, ex.kind is _SERVER, ex.tls, request.shape,
               _NO_RESPONSE if response is None else response.shape)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._new(ex)
            if request.shape is not None and (response is None or response.shape is not None):
                if len(self._shapes) >= SHAPES_LIMIT:
                    self._shapes.clear()
                self._shapes[key] = shape
        elif shape.overflowed:
            self._routes.count_overflow(self._service)
        return shape

    def _new(self, ex: Exchange) -> Shape:
        protocol = ex.protocol
        path = protocol.path(ex.request)
        drop = self._routes.dropped(path)
        overflows = self._routes.overflows.get(self._service, 0)
        route = self._routes.route(self._service, path)  # counts an overflow
        desc = protocol.describe(ex.request, ex.response, ex.kind, self._with_query, route=route, tls=ex.tls)
        # `is Drop.NONE` first: Flag's `&` costs a microsecond, and most paths are not ignored
        traces = self._export.enabled and (drop is Drop.NONE or not drop & Drop.TRACES)
        metrics = self._metrics if drop is Drop.NONE or not drop & Drop.METRICS else None
        template = self._export.template(desc, protocol.size_attributes) if traces else None
        overflowed = self._routes.overflows.get(self._service, 0) != overflows
        return Shape(drop, overflowed, route, desc, template, metrics, self._export)


class ShapeOutput:
    """The exchanges of one shape on one connection, from their times and sizes alone: a
    protocol's Repeats promise that its metric values are duration, request and response size."""

    __slots__ = ("_metrics", "_series", "_export", "_writer", "_resource")

    def __init__(self, metrics: ServiceMetrics | None, series: Series | None, export: TraceExport,
                 writer: SpanWriter | None, resource: bytes) -> None:
        self._metrics = metrics
        self._series = series
        self._export = export
        self._writer = writer  # None: no span destination, or the route is ignored for traces
        self._resource = resource

    def emit(self, ctx: TraceContext | None, start_ns: int, end_ns: int, request_size: int,
             response_size: int) -> None:
        if self._metrics is not None:
            self._metrics.add(self._series, ((end_ns - start_ns) / 1e9, request_size, response_size))
        if ctx is not None and ctx.sampled and self._writer is not None:
            self._export.put(self._resource, self._writer.encode(ctx, start_ns, end_ns, request_size, response_size))
