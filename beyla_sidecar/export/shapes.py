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
from ..tracker.exchange import Exchange
from ..tracker.routes import Drop, Routes
from .metrics import Series, ServiceMetrics
from .spans import SpanTemplate
from .traces import TraceExport

SHAPES_LIMIT = 4096  # shapes remembered per service before its cache starts over
SERIES_LIMIT = 1024  # connections whose metric series a shape remembers before starting over
_NO_RESPONSE = object()  # the response part of the key of exchanges without a response
_UNKNOWN = object()
_SERVER = SpanKind.SERVER


class Shape:
    """Exchanges of one shape: what their spans and metrics share."""

    __slots__ = ("drop", "overflowed", "route", "desc", "template", "metrics", "_series")

    def __init__(self, drop: Drop, overflowed: bool, route: str | None, desc: SpanDescription,
                 template: SpanTemplate | None, metrics: ServiceMetrics | None) -> None:
        self.drop = drop
        self.overflowed = overflowed  # its route is the overflow route: counted per exchange
        self.route = route
        self.desc = desc
        self.template = template  # None: no span destination, or the route is ignored for traces
        self.metrics = metrics  # None: no metrics, or the route is ignored for metrics
        self._series: dict[ConnTuple, Series | None] = {}  # a protocol may name the peer in its attributes

    def series(self, ex: Exchange) -> Series | None:
        """The metric series exchanges of this shape on `ex`'s connection record in."""
        series = self._series.get(ex.conn, _UNKNOWN)
        if series is _UNKNOWN:
            series = self._new_series(ex)
        return series  # type: ignore[return-value]

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
        return Shape(drop, overflowed, route, desc, template, metrics)
