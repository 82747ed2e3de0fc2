"""RED metrics from every completed exchange: our own cumulative histograms, per service.

What is recorded is each protocol's business: it declares its instruments per span kind,
the attributes of exchanges of one shape, and each exchange's values (protocols/instruments.py).
This module only aggregates and snapshots, so a new protocol's metrics need no change here.

The OTel SDK's instruments cost ~21 us per exchange (three histograms: attribute hashing,
view matching, locks), so the hot path records into plain per-service dicts instead
(~2 us, see benchmarks/metrics_cost.py). Snapshots of that state feed both exporters:
`to_metrics_data` (OTel SDK data classes, for the OTLP exporter) and the Prometheus
endpoint. State is cumulative and bounded by cardinality (routes are capped per service,
series per instrument set at MAX_SERIES), so a dead collector never makes it grow.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial, reduce
from operator import add, is_not

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
from ..protocols.base import Protocol, SpanKind
from ..protocols.instruments import AttributeValue, Instrument, InstrumentSet

# Attribute sets per instrument beyond which data goes to one `otel.metric.overflow` series
# (the OTel SDK's default cardinality limit).
MAX_SERIES = 2000

OVERFLOW_ATTRIBUTES: dict[str, AttributeValue] = {"otel.metric.overflow": True}
_OVERFLOW = None  # the series key of the overflow series
_SCOPE = InstrumentationScope("beyla-sidecar", __version__)
# Values a series holds back before they go into its histograms (ServiceMetrics.add); the
# pipeline flushes every series after each drain, snapshots before they read.
PENDING_LIMIT = 512
_NOT_NONE = partial(is_not, None)


class Buckets:
    """One cumulative explicit-bucket histogram (Series.flush fills it); `counts[i]`
    counts values <= bounds[i]."""

    __slots__ = ("bounds", "counts", "sum", "count", "min", "max")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0
        self.min = math.inf
        self.max = -math.inf

    def add_all(self, values: list[float]) -> None:
        """Values in the order they came (the sum adds them in it): sorted once, then one bisect
        per bound instead of one per value."""
        if not values:
            return
        self.sum = reduce(add, values, self.sum)
        self.count += len(values)
        values.sort()
        if values[0] < self.min:
            self.min = values[0]
        if values[-1] > self.max:
            self.max = values[-1]
        counts, done, n = self.counts, 0, len(values)
        for i, bound in enumerate(self.bounds):
            below = bisect_right(values, bound, done)  # counts[i]: values in (bounds[i-1], bounds[i]]
            counts[i] += below - done
            done = below
            if done == n:
                return
        counts[-1] += n - done

    def copy(self) -> Buckets:
        out = Buckets(self.bounds)
        out.counts = self.counts.copy()
        out.sum, out.count, out.min, out.max = self.sum, self.count, self.min, self.max
        return out


class Series:
    """One attribute set's histograms, one per instrument of its set. Each exchange's values wait
    in `pending` and go into the histograms in batches (flush()): a bisect and five updates per
    value and histogram in Python cost ~0.5 us, a batch sorted and bisected in C a few ns a value."""

    __slots__ = ("histograms", "pending")

    def __init__(self, instruments: InstrumentSet) -> None:
        self.histograms = [Buckets(i.bounds) for i in instruments.instruments]
        self.pending: list[tuple[float | None, ...]] = []

    def flush(self) -> None:
        pending = self.pending
        if pending:
            self.pending = []
            for b, column in zip(self.histograms, zip(*pending)):
                b.add_all(list(filter(_NOT_NONE, column)))


SeriesKey = tuple[AttributeValue | None, ...] | None


@dataclass(frozen=True, slots=True)
class Point:
    attributes: dict[str, AttributeValue]
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


def attributes(instruments: InstrumentSet, key: SeriesKey) -> dict[str, AttributeValue]:
    if key is _OVERFLOW:
        return dict(OVERFLOW_ATTRIBUTES)
    return {name: value for name, value in zip(instruments.attributes, key) if value is not None}


def _new_series(series_map: dict[SeriesKey, Series], key: SeriesKey, instruments: InstrumentSet) -> Series:
    """The series of a key not seen yet: a new one, or the overflow series past MAX_SERIES."""
    if len(series_map) >= MAX_SERIES:
        key = _OVERFLOW
        overflow = series_map.get(key)
        if overflow is not None:
            return overflow
    series = series_map[key] = Series(instruments)
    return series


class ServiceMetrics:
    """The series of one service (one OTel resource). Written by the pipeline thread only."""

    def __init__(self, resource: Resource, lock: threading.Lock, sets: tuple[InstrumentSet, ...],
                 extra: frozenset[str]) -> None:
        self.resource = resource
        self.start_ns = time.time_ns()
        self._lock = lock
        self.extra = extra  # the opted-in attributes (BEYLA_METRICS_EXTRA_ATTRIBUTES)
        # Every declared set from the start: snapshots list them in declaration order.
        self._series: dict[InstrumentSet, dict[SeriesKey, Series]] = {s: {} for s in sets}
        self._dirty: list[Series] = []  # with pending values

    def series(self, instruments: InstrumentSet, key: SeriesKey) -> Series:
        """The histograms of one attribute set (the overflow series' past MAX_SERIES); callers keep
        it for exchanges of the same shape (export/shapes.py)."""
        with self._lock:
            series_map = self._series[instruments]
            series = series_map.get(key)
            return series if series is not None else _new_series(series_map, key, instruments)

    def add(self, series: Series, values: tuple[float | None, ...]) -> None:
        """One exchange's values, one per histogram of `series` (None: none)."""
        with self._lock:
            pending = series.pending
            if not pending:
                self._dirty.append(series)
            pending.append(values)
            if len(pending) >= PENDING_LIMIT:
                series.flush()

    def flush(self) -> None:
        """Pending values into their histograms."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        for series in self._dirty:
            series.flush()
        self._dirty.clear()

    def snapshot(self) -> ServiceSnapshot:
        """A consistent copy, taken under the lock, for an exporter thread."""
        instruments = []
        with self._lock:
            self._flush()
            for instrument_set, series_map in self._series.items():
                if not series_map:
                    continue
                for i, instrument in enumerate(instrument_set.instruments):
                    points = [Point(attributes(instrument_set, key), s.histograms[i].copy())
                              for key, s in series_map.items()]
                    instruments.append(InstrumentSnapshot(instrument, [p for p in points if p.buckets.count]))
        return ServiceSnapshot(self.resource, self.start_ns, instruments)


class Metrics:
    """Every service's metrics, for the instruments `protocols` declare; thread-safe snapshots."""

    def __init__(self, protocols: Iterable[Protocol], extra_attributes: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._sets = tuple(s for p in protocols for kind in SpanKind if (s := p.instruments(kind)) is not None)
        self._extra = frozenset(extra_attributes)
        self._services: dict[str, ServiceMetrics] = {}

    def service(self, name: str, resource: Resource) -> ServiceMetrics:
        """The metrics of service `name`, created with `resource` on first use."""
        sm = self._services.get(name)
        if sm is None:
            sm = ServiceMetrics(resource, self._lock, self._sets, self._extra)
            with self._lock:
                self._services[name] = sm
        return sm

    def snapshot(self) -> list[ServiceSnapshot]:
        with self._lock:
            services = list(self._services.values())
        return [s.snapshot() for s in services]

    def flush(self) -> None:
        """Every service's pending values into their histograms (after each drain)."""
        with self._lock:
            services = list(self._services.values())
        for service in services:
            service.flush()


def to_metrics_data(snapshots: list[ServiceSnapshot], now_ns: int | None = None,
                    sums: Iterable[tuple[Resource, list[Metric]]] = ()) -> MetricsData:
    """Snapshots as the OTel SDK data model, what OTLPMetricExporter.export takes; `sums`: other
    metrics by resource (export/counters.py's to_sums), appended as they are."""
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
    for resource, metrics in sums:
        if metrics:
            resource_metrics.append(ResourceMetrics(resource, [ScopeMetrics(_SCOPE, metrics, "")], ""))
    return MetricsData(resource_metrics)
