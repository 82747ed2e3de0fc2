"""Cumulative counters (monotonic sums) and histograms with bounded attribute sets, for metrics
that are not a protocol's (network flows, TCP health). Snapshots feed both exporters, as
export/metrics.py's do: `to_sums` (OTel SDK data, OTLP) and `counter_families` (Prometheus
`_total` counters); a HistogramSet's snapshot is export/metrics.py's own ServiceSnapshot.

One CounterSet holds several counters over the same attribute names (bytes and packets of a
flow); an attribute set is a tuple of values in that order. Counters may share one metric name
and differ by fixed attributes (`reason="refused"`, `reason="timeout"`). A series is reported
once it counted something. Past `max_series` attribute sets, new ones go to a single
`otel.metric.overflow=true` series and are counted in `overflows`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import AggregationTemporality, Metric, NumberDataPoint, Sum
from opentelemetry.sdk.resources import Resource

from ..protocols.instruments import Instrument
from .metrics import OVERFLOW_ATTRIBUTES, Buckets, InstrumentSnapshot, Point, ServiceSnapshot
from .prometheus import Family, metric_name, sanitize, service_labels

AttributeValue = str | int | bool
Key = tuple[AttributeValue | None, ...]
_OVERFLOW: Key = ("\0overflow",)


@dataclass(frozen=True, slots=True)
class Counter:
    name: str         # OTel name, e.g. beyla.network.flow.bytes
    unit: str         # UCUM: By, {packet}
    description: str
    attributes: tuple[tuple[str, AttributeValue], ...] = ()  # fixed: added to each of its points


@dataclass(frozen=True, slots=True)
class CounterSnapshot:
    counter: Counter
    resource: Resource
    start_ns: int
    points: list[tuple[dict[str, AttributeValue], int]]


class CounterSet:
    """Counters sharing attribute names; `add` from one writer thread, `snapshot` from any."""

    def __init__(self, counters: tuple[Counter, ...], attributes: tuple[str, ...], resource: Resource,
                 max_series: int) -> None:
        self.counters = counters
        self.attributes = attributes
        self.resource = resource
        self.max_series = max_series
        self.start_ns = time.time_ns()
        self.overflows = 0  # additions that went to the overflow series
        self._lock = threading.Lock()
        self._series: dict[Key, list[int]] = {}

    def add(self, key: Key, values: tuple[int, ...]) -> None:
        """Add `values` (one per counter) to the series of `key` (values in `attributes` order;
        None: attribute absent)."""
        with self._lock:
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= self.max_series + (_OVERFLOW in self._series):
                    key = _OVERFLOW
                    self.overflows += 1
                series = self._series.setdefault(key, [0] * len(self.counters))
            for i, v in enumerate(values):
                series[i] += v

    def _attributes(self, key: Key) -> dict[str, AttributeValue]:
        return _attributes(self.attributes, key)

    def snapshot(self) -> list[CounterSnapshot]:
        with self._lock:
            items = [(self._attributes(k), list(v)) for k, v in self._series.items()]
        return [CounterSnapshot(c, self.resource, self.start_ns,
                                [({**attrs, **dict(c.attributes)}, values[i]) for attrs, values in items if values[i]])
                for i, c in enumerate(self.counters)]


class HistogramSet:
    """One histogram instrument over bounded attribute sets, fed with buckets aggregated elsewhere
    (a kernel map's); `merge` from one writer thread, `snapshot` from any."""

    def __init__(self, instrument: Instrument, attributes: tuple[str, ...], resource: Resource,
                 max_series: int) -> None:
        self.instrument = instrument
        self.attributes = attributes
        self.resource = resource
        self.max_series = max_series
        self.start_ns = time.time_ns()
        self.overflows = 0  # merges that went to the overflow series
        self._lock = threading.Lock()
        self._series: dict[Key, Buckets] = {}

    def merge(self, key: Key, counts: Sequence[int], total: float, low: float, high: float) -> None:
        """Add buckets (`counts` per bound of the instrument, then one above them all), their sum,
        minimum and maximum to the series of `key`."""
        with self._lock:
            b = self._series.get(key)
            if b is None:
                if len(self._series) >= self.max_series + (_OVERFLOW in self._series):
                    key = _OVERFLOW
                    self.overflows += 1
                b = self._series.setdefault(key, Buckets(self.instrument.bounds))
            for i, n in enumerate(counts):
                b.counts[i] += n
            b.count += sum(counts)
            b.sum += total
            b.min = min(b.min, low)
            b.max = max(b.max, high)

    def snapshot(self) -> ServiceSnapshot:
        with self._lock:
            points = [Point(_attributes(self.attributes, k), b.copy()) for k, b in self._series.items() if b.count]
        # nothing recorded yet: no instrument, as export/metrics.py leaves out empty ones
        instruments = [InstrumentSnapshot(self.instrument, points)] if points else []
        return ServiceSnapshot(self.resource, self.start_ns, instruments)


def _attributes(names: tuple[str, ...], key: Key) -> dict[str, AttributeValue]:
    if key == _OVERFLOW:
        return dict(OVERFLOW_ATTRIBUTES)
    return {name: value for name, value in zip(names, key) if value is not None}


def to_sums(snapshots: list[CounterSnapshot], now_ns: int) -> list[tuple[Resource, list[Metric]]]:
    """Cumulative monotonic Sum metrics, grouped by resource, for MetricsData; counters of one
    name (differing by fixed attributes) are one metric."""
    by_resource: dict[int, tuple[Resource, dict[str, Metric]]] = {}
    for snap in snapshots:
        if not snap.points:
            continue
        c = snap.counter
        points = [NumberDataPoint(attributes=attrs, start_time_unix_nano=snap.start_ns, time_unix_nano=now_ns,
                                  value=value) for attrs, value in snap.points]
        metrics = by_resource.setdefault(id(snap.resource), (snap.resource, {}))[1]
        if c.name in metrics:
            metrics[c.name].data.data_points.extend(points)  # type: ignore[union-attr]
            continue
        metrics[c.name] = Metric(name=c.name, description=c.description, unit=c.unit, data=Sum(
            data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE, is_monotonic=True))
    return [(resource, list(metrics.values())) for resource, metrics in by_resource.values()]


def prometheus_name(counter: Counter) -> str:
    """`beyla.network.flow.bytes` (By) -> `beyla_network_flow_bytes_total`."""
    return metric_name(counter.name, counter.unit) + "_total"


def counter_families(snapshots: list[CounterSnapshot]) -> list[Family]:
    families: dict[str, Family] = {}
    for snap in snapshots:
        name = prometheus_name(snap.counter)
        fam = families.get(name)
        if fam is None:
            fam = families[name] = Family(name, "counter", snap.counter.description)
        common = service_labels(snap.resource)
        for attrs, value in snap.points:
            labels = {**common, **{sanitize(k): str(v).lower() if isinstance(v, bool) else str(v)
                                   for k, v in attrs.items()}}
            fam.samples.append((name, labels, value))
    return list(families.values())


__all__ = ["Counter", "CounterSet", "CounterSnapshot", "HistogramSet", "counter_families", "prometheus_name",
           "to_sums"]
