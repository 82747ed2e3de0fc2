"""Cumulative counters with bounded attribute sets, to Prometheus and to a real OTLP receiver."""

from __future__ import annotations

import time

from opentelemetry.sdk.resources import Resource

from beyla_sidecar.export.counters import Counter, CounterSet, counter_families, to_sums
from beyla_sidecar.export.metrics import to_metrics_data
from beyla_sidecar.export.otlp_metrics import MetricPush
from beyla_sidecar.export.prometheus import render

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
