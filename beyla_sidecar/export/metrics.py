"""HTTP RED metrics from every completed exchange: our own cumulative histograms, per service.

The OTel SDK's instruments cost ~21 us per exchange (three histograms: attribute hashing,
view matching, locks), so the hot path records into plain per-service dicts instead
(~2 us, see benchmarks/metrics_cost.py). Snapshots of that state feed both exporters:
`to_metrics_data` (OTel SDK data classes, for the OTLP exporter) and the Prometheus
endpoint. State is cumulative and bounded by cardinality (routes are capped per service,
series per instrument at MAX_SERIES), so a dead collector never makes it grow.

Which exchanges: any whose protocol description has `http.request.method`, i.e. HTTP
whatever the transport (HTTP/1.x today), so a new HTTP-speaking protocol gets metrics
without touching this module.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from .. import __version__
from ..protocols.base import SpanDescription, SpanKind
from ..tracker.exchange import Exchange

# OTel HTTP semantic conventions: explicit bucket boundaries of http.*.request.duration.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Body sizes (the conventions give none): powers of two up to 1 MiB.
SIZE_BOUNDS = (0.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
               16384.0, 65536.0, 262144.0, 1048576.0)
# Attribute sets per instrument beyond which data goes to one `otel.metric.overflow` series
# (the OTel SDK's default cardinality limit).
MAX_SERIES = 2000

SERVER_ATTRIBUTES = ("http.request.method", "http.response.status_code", "http.route", "error.type",
                     "url.path", "client.address")
CLIENT_ATTRIBUTES = ("http.request.method", "http.response.status_code", "http.route", "error.type",
                     "server.address", "server.port", "url.path")
OVERFLOW_ATTRIBUTES: dict[str, str | int | bool] = {"otel.metric.overflow": True}
_OVERFLOW = None  # the series key of the overflow series
_SCOPE = InstrumentationScope("beyla-sidecar", __version__)


@dataclass(frozen=True, slots=True)
class Instrument:
    name: str
    unit: str
    description: str
    bounds: tuple[float, ...]


# (duration, request body, response body) per span kind, in the order of Series' histograms.
INSTRUMENTS = {
    SpanKind.SERVER: (
        Instrument("http.server.request.duration", "s", "Duration of HTTP server requests.", DURATION_BOUNDS),
        Instrument("http.server.request.body.size", "By", "Size of HTTP server request bodies.", SIZE_BOUNDS),
        Instrument("http.server.response.body.size", "By", "Size of HTTP server response bodies.", SIZE_BOUNDS),
    ),
    SpanKind.CLIENT: (
        Instrument("http.client.request.duration", "s", "Duration of HTTP client requests.", DURATION_BOUNDS),
        Instrument("http.client.request.body.size", "By", "Size of HTTP client request bodies.", SIZE_BOUNDS),
        Instrument("http.client.response.body.size", "By", "Size of HTTP client response bodies.", SIZE_BOUNDS),
    ),
}
ATTRIBUTE_NAMES = {SpanKind.SERVER: SERVER_ATTRIBUTES, SpanKind.CLIENT: CLIENT_ATTRIBUTES}


class Buckets:
    """One cumulative explicit-bucket histogram; `counts[i]` counts values <= bounds[i]."""

    __slots__ = ("counts", "sum", "count", "min", "max")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.sum = 0.0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float, bounds: tuple[float, ...]) -> None:
        self.counts[bisect_left(bounds, value)] += 1
        self.sum += value
        self.count += 1
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def copy(self) -> Buckets:
        out = Buckets(0)
        out.counts = self.counts.copy()
        out.sum, out.count, out.min, out.max = self.sum, self.count, self.min, self.max
        return out


class Series:
    """The three histograms of one attribute set (they always share attributes)."""

    __slots__ = ("duration", "request", "response")

    def __init__(self) -> None:
        self.duration = Buckets(len(DURATION_BOUNDS) + 1)
        self.request = Buckets(len(SIZE_BOUNDS) + 1)
        self.response = Buckets(len(SIZE_BOUNDS) + 1)


SeriesKey = tuple[str | int | None, ...] | None


@dataclass(frozen=True, slots=True)
class Point:
    attributes: dict[str, str | int | bool]
    buckets: Buckets


@dataclass(frozen=True, slots=True)
class InstrumentSnapshot:
    instrument: Instrument
    points: list[Point]


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    resource: Resource
    start_ns: int
    instruments: list[InstrumentSnapshot]


def attributes(kind: SpanKind, key: SeriesKey) -> dict[str, str | int | bool]:
    if key is _OVERFLOW:
        return dict(OVERFLOW_ATTRIBUTES)
    return {name: value for name, value in zip(ATTRIBUTE_NAMES[kind], key) if value is not None}


class ServiceMetrics:
    """The series of one service (one OTel resource). Written by the pipeline thread only."""

    def __init__(self, resource: Resource, lock: threading.Lock, with_path: bool, with_client: bool) -> None:
        self.resource = resource
        self.start_ns = time.time_ns()
        self._lock = lock
        self._with_path = with_path
        self._with_client = with_client
        self._series: dict[SpanKind, dict[SeriesKey, Series]] = {SpanKind.SERVER: {}, SpanKind.CLIENT: {}}

    def record(self, ex: Exchange, desc: SpanDescription, route: str | None) -> None:
        a = desc.attributes
        method = a.get("http.request.method")
        if method is None:
            return  # not HTTP
        path = a.get("url.path") if self._with_path else None
        if ex.kind is SpanKind.SERVER:
            client = ex.conn.remote_addr if self._with_client else None
            key: SeriesKey = (method, a.get("http.response.status_code"), route, desc.error_type, path, client)
        else:
            key = (method, a.get("http.response.status_code"), route, desc.error_type,
                   a.get("server.address") or ex.conn.remote_addr, ex.conn.remote_port, path)
        response = ex.response
        with self._lock:
            series_map = self._series[ex.kind]
            s = series_map.get(key)
            if s is None:
                if len(series_map) >= MAX_SERIES:
                    key = _OVERFLOW
                    s = series_map.get(key)
                if s is None:
                    s = series_map[key] = Series()
            s.duration.record((ex.end_ns - ex.start_ns) / 1e9, DURATION_BOUNDS)
            s.request.record(ex.request.size, SIZE_BOUNDS)
            if response is not None:
                s.response.record(response.size, SIZE_BOUNDS)

    def snapshot(self) -> ServiceSnapshot:
        """A consistent copy, taken under the lock, for an exporter thread."""
        instruments = []
        with self._lock:
            for kind, series_map in self._series.items():
                if not series_map:
                    continue
                for i, instrument in enumerate(INSTRUMENTS[kind]):
                    points = [Point(attributes(kind, key), (s.duration, s.request, s.response)[i].copy())
                              for key, s in series_map.items()]
                    instruments.append(InstrumentSnapshot(instrument, [p for p in points if p.buckets.count]))
        return ServiceSnapshot(self.resource, self.start_ns, instruments)


class Metrics:
    """Every service's metrics; thread-safe snapshots for the exporters."""

    def __init__(self, extra_attributes: tuple[str, ...] = ()) -> None:
        self._lock = threading.Lock()
        self._with_path = "url.path" in extra_attributes
        self._with_client = "client.address" in extra_attributes
        self._services: dict[str, ServiceMetrics] = {}

    def service(self, name: str, resource: Resource) -> ServiceMetrics:
        """The metrics of service `name`, created with `resource` on first use."""
        sm = self._services.get(name)
        if sm is None:
            sm = ServiceMetrics(resource, self._lock, self._with_path, self._with_client)
            with self._lock:
                self._services[name] = sm
        return sm

    def snapshot(self) -> list[ServiceSnapshot]:
        with self._lock:
            services = list(self._services.values())
        return [s.snapshot() for s in services]


def to_metrics_data(snapshots: list[ServiceSnapshot], now_ns: int | None = None) -> MetricsData:
    """Snapshots as the OTel SDK data model, what OTLPMetricExporter.export takes."""
    now_ns = now_ns or time.time_ns()
    resource_metrics = []
    for snap in snapshots:
        metrics = [
            Metric(name=inst.instrument.name, description=inst.instrument.description, unit=inst.instrument.unit,
                   data=Histogram(
                       data_points=[HistogramDataPoint(
                           attributes=p.attributes, start_time_unix_nano=snap.start_ns, time_unix_nano=now_ns,
                           count=p.buckets.count, sum=p.buckets.sum, bucket_counts=p.buckets.counts,
                           explicit_bounds=inst.instrument.bounds, min=p.buckets.min, max=p.buckets.max)
                           for p in inst.points],
                       aggregation_temporality=AggregationTemporality.CUMULATIVE))
            for inst in snap.instruments if inst.points]
        if metrics:
            resource_metrics.append(ResourceMetrics(snap.resource, [ScopeMetrics(_SCOPE, metrics, "")], ""))
    return MetricsData(resource_metrics)
