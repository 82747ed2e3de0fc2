"""Cumulative counters and histograms with bounded attribute sets, to Prometheus and to a real OTLP receiver."""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.resources import Resource

from beyla_sidecar.export.counters import Counter, CounterSet, HistogramSet, counter_families, to_sums
from beyla_sidecar.export.metrics import to_metrics_data
from beyla_sidecar.export.otlp_metrics import MetricPush
from beyla_sidecar.export.prometheus import histogram_families, render
from beyla_sidecar.protocols.instruments import Instrument

from ..e2e.otlp_metrics_receiver import MetricsReceiver

BYTES = Counter("beyla.network.flow.bytes", "By", "Bytes.")
PACKETS = Counter("beyla.network.flow.packets", "{packet}", "Packets.")
RESOURCE = Resource({"service.name": "shop", "k8s.namespace.name": "prod"})


def counters(max_series: int = 10) -> CounterSet:
    return CounterSet((BYTES, PACKETS), ("direction", "dst.name"), RESOURCE, max_series)


def test_sums_accumulate_and_overflow_is_one_counted_series() -> None:
    c = counters(max_series=2)
    c.add(("egress", "a.test"), (100, 2))
    c.add(("egress", "a.test"), (50, 1))
    c.add(("ingress", None), (10, 1))
    c.add(("egress", "c.test"), (7, 1))  # a third set: overflow
    c.add(("egress", "d.test"), (3, 1))
    c.add(("egress", "a.test"), (1, 1))  # known sets still count in their own series
    bytes_snap = c.snapshot()[0]
    assert bytes_snap.points == [({"direction": "egress", "dst.name": "a.test"}, 151),
                                 ({"direction": "ingress"}, 10), ({"otel.metric.overflow": True}, 10)]
    assert c.overflows == 2


def test_prometheus_counters() -> None:
    c = counters()
    c.add(("egress", "a.test"), (100, 2))
    text = render(counter_families(c.snapshot()))
    assert "# TYPE beyla_network_flow_bytes_total counter" in text
    assert ('beyla_network_flow_bytes_total{service_name="shop",k8s_namespace_name="prod",direction="egress",'
            'dst_name="a.test"} 100') in text
    assert "beyla_network_flow_packets_total{" in text


def test_otlp_cumulative_monotonic_sums() -> None:
    c = counters()
    c.add(("egress", "a.test"), (100, 2))
    with MetricsReceiver() as receiver:
        push = MetricPush(lambda: to_metrics_data([], sums=to_sums(c.snapshot(), time.time_ns())), interval=60,
                          timeout=5, endpoint=f"http://127.0.0.1:{receiver.port}")
        push.export()
        c.add(("egress", "a.test"), (20, 1))
        push.export()
        metrics = {m.name: m for req in receiver.requests[-1:] for rm in req.resource_metrics
                   for sm in rm.scope_metrics for m in sm.metrics}
    assert push.failures == 0 and len(receiver.requests) == 2
    total = metrics["beyla.network.flow.bytes"].sum
    assert total.is_monotonic and total.aggregation_temporality == 2  # CUMULATIVE
    assert [dp.as_int for dp in total.data_points] == [120]
    assert metrics["beyla.network.flow.packets"].unit == "{packet}"


FAILED = tuple(Counter("beyla.network.tcp.failed_connections", "{connection}", "Failed.", (("reason", r),))
               for r in ("refused", "timeout"))


def test_counters_of_one_name_differ_by_their_fixed_attributes_and_zeros_are_not_reported() -> None:
    c = CounterSet(FAILED, ("dst.name",), RESOURCE, 10)
    c.add(("a.test",), (2, 0))
    c.add(("b.test",), (0, 1))
    text = render(counter_families(c.snapshot()))
    assert text.count("# TYPE beyla_network_tcp_failed_connections_total counter") == 1
    samples = [line for line in text.splitlines() if line.startswith("beyla_network_tcp_failed")]
    assert samples == [
        'beyla_network_tcp_failed_connections_total{service_name="shop",k8s_namespace_name="prod",'
        'dst_name="a.test",reason="refused"} 2',
        'beyla_network_tcp_failed_connections_total{service_name="shop",k8s_namespace_name="prod",'
        'dst_name="b.test",reason="timeout"} 1']
    # OTLP: one metric of that name, with both points
    [(resource, metrics)] = to_sums(c.snapshot(), time.time_ns())
    assert resource is RESOURCE and [m.name for m in metrics] == ["beyla.network.tcp.failed_connections"]
    assert sorted((dict(p.attributes)["reason"], p.value) for p in metrics[0].data.data_points) == \
        [("refused", 2), ("timeout", 1)]


RTT = Instrument("beyla.network.tcp.rtt", "s", "RTT.", (0.001, 0.01, 0.1))


def test_histograms_merge_buckets_aggregated_elsewhere_and_overflow_is_counted() -> None:
    h = HistogramSet(RTT, ("dst.name",), RESOURCE, max_series=1)
    h.merge(("a.test",), (1, 2, 0, 0), total=0.0123, low=0.0005, high=0.006)
    h.merge(("a.test",), (0, 0, 1, 0), total=0.05, low=0.05, high=0.05)
    h.merge(("b.test",), (0, 0, 0, 3), total=3.0, low=0.5, high=2.0)  # a second set: overflow
    snap = h.snapshot()
    [inst] = snap.instruments
    by = {tuple(sorted(p.attributes.items())): p.buckets for p in inst.points}
    a = by[(("dst.name", "a.test"),)]
    assert (a.counts, a.count, a.sum, a.min, a.max) == ([1, 2, 1, 0], 4, pytest.approx(0.0623), 0.0005, 0.05)
    assert by[(("otel.metric.overflow", True),)].count == 3 and h.overflows == 1
    text = render(histogram_families([snap]))
    assert ('beyla_network_tcp_rtt_seconds_bucket{service_name="shop",k8s_namespace_name="prod",dst_name="a.test",'
            'le="0.01"} 3') in text
    data = to_metrics_data([snap])
    [metric] = data.resource_metrics[0].scope_metrics[0].metrics
    assert metric.name == "beyla.network.tcp.rtt" and metric.unit == "s"
