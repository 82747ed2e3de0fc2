"""Cumulative counters (monotonic sums) with bounded attribute sets, for metrics that are not a
protocol's histograms (network flows). Snapshots feed both exporters, as export/metrics.py's do:
`to_sums` (OTel SDK data, OTLP) and `counter_families` (Prometheus `_total` counters).

One CounterSet holds several counters over the same attribute names (bytes and packets of a
flow); an attribute set is a tuple of values in that order. Past `max_series` attribute sets,
new ones go to a single `otel.metric.overflow=true` series and are counted in `overflows`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import AggregationTemporality, Metric, NumberDataPoint, Sum
from opentelemetry.sdk.resources import Resource

from .metrics import OVERFLOW_ATTRIBUTES
from .prometheus import Family, metric_name, sanitize, service_labels

AttributeValue = str | int | bool
Key = tuple[AttributeValue | None, ...]
_OVERFLOW: Key = ("\0overflow",)


@dataclass(frozen=True, slots=True)
class Counter:
    name: str         # OTel name, e.g. beyla.network.flow.bytes
    unit: str         # UCUM: By, {packet}
    description: str


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
        if key == _OVERFLOW:
            return dict(OVERFLOW_ATTRIBUTES)
        return {name: value for name, value in zip(self.attributes, key) if value is not None}

    def snapshot(self) -> list[CounterSnapshot]:
        with self._lock:
            items = [(self._attributes(k), list(v)) for k, v in self._series.items()]
        return [CounterSnapshot(c, self.resource, self.start_ns, [(attrs, values[i]) for attrs, values in items])
                for i, c in enumerate(self.counters)]


def to_sums(snapshots: list[CounterSnapshot], now_ns: int) -> list[tuple[Resource, list[Metric]]]:
    """Cumulative monotonic Sum metrics, grouped by resource, for MetricsData."""
    by_resource: dict[int, tuple[Resource, list[Metric]]] = {}
    for snap in snapshots:
        if not snap.points:
            continue
        c = snap.counter
        metric = Metric(name=c.name, description=c.description, unit=c.unit, data=Sum(
            data_points=[NumberDataPoint(attributes=attrs, start_time_unix_nano=snap.start_ns,
                                         time_unix_nano=now_ns, value=value) for attrs, value in snap.points],
            aggregation_temporality=AggregationTemporality.CUMULATIVE, is_monotonic=True))
        by_resource.setdefault(id(snap.resource), (snap.resource, []))[1].append(metric)
    return list(by_resource.values())


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


__all__ = ["Counter", "CounterSet", "CounterSnapshot", "counter_families", "prometheus_name", "to_sums"]
