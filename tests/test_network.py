"""The network half's aggregation (network.py), with the kernel's drains replaced by recorded
destinations and flows: TCP health counts per reason and direction, RTT buckets, bounds, loss
counters; reverse DNS names arriving between flushes."""

from __future__ import annotations

import time
from ipaddress import IPv4Address

from opentelemetry.sdk.resources import Resource

from beyla_sidecar.bpf.netflow import Flow
from beyla_sidecar.bpf.tcphealth import RTT_BOUNDS as BUCKET_BOUNDS
from beyla_sidecar.bpf.tcphealth import TcpDestination
from beyla_sidecar.config import Config, load
from beyla_sidecar.export.counters import counter_families
from beyla_sidecar.export.prometheus import histogram_families, render
from beyla_sidecar.network import RTT_BOUNDS, NetworkMetrics

POD, PEER = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.9")


class RecordedProbes:
    """Stands for TcpHealthProbes: each drain hands out the next batch."""

    def __init__(self, *batches: list[TcpDestination]) -> None:
        self.batches = list(batches)

    def drain(self) -> list[TcpDestination]:
        return self.batches.pop(0) if self.batches else []

    def counters(self) -> dict[str, int]:
        return {"map_full": 3, "unreadable": 0}

    def close(self) -> None:
        pass


def dest(port: int, *, refused: int = 0, sent: int = 0, retransmits: int = 0, rtt: tuple[int, ...] = (),
         peer: IPv4Address = PEER) -> TcpDestination:
    buckets = [0] * (BUCKET_BOUNDS + 1)
    for us in rtt:
        buckets[next((i for i, b in enumerate(RTT_BOUNDS) if us <= b * 1e6), BUCKET_BOUNDS)] += 1
    return TcpDestination(POD, peer, 0, port, "client", refused, 0, 0, sent, 0, retransmits, tuple(buckets),
                          sum(rtt), min(rtt, default=0xFFFFFFFF), max(rtt, default=0))


def network(**env: str) -> NetworkMetrics:
    cfg = load(Config, {"BEYLA_NETWORK_METRICS": "true", "BEYLA_K8S_POD_NAME": "web-1", **env})
    return NetworkMetrics(cfg, Resource({"service.name": "web"}))


def test_destinations_accumulate_into_counters_and_the_rtt_histogram() -> None:
    net = network()
    net.tcp._probes = RecordedProbes([dest(443, refused=2, rtt=(150, 900))],
                                     [dest(443, sent=1, retransmits=4, rtt=(20_000,))])
    assert net.tcp.flush(0.0) == 1 and net.tcp.flush(0.0) == 1
    text = render(counter_families(net.snapshot()))
    labels = 'service_name="web",src_address="10.0.0.2",dst_address="10.0.0.9",server_port="443",' \
             'k8s_src_name="web-1",k8s_src_type="Pod"'
    assert f'beyla_network_tcp_failed_connections_total{{{labels},reason="refused"}} 2' in text
    assert f'beyla_network_tcp_resets_total{{{labels},direction="sent"}} 1' in text
    assert f'beyla_network_tcp_retransmits_total{{{labels}}} 4' in text
    assert 'reason="timeout"' not in text and 'direction="received"' not in text  # nothing counted: no series
    [point] = net.histograms()[0].instruments[0].points
    b = point.buckets
    assert (b.count, b.min, b.max) == (3, 0.00015, 0.02) and abs(b.sum - 0.02105) < 1e-12
    assert b.counts[1] == 1 and b.counts[3] == 1 and b.counts[7] == 1  # <= 200 us, <= 1 ms, <= 20 ms
    hist = render(histogram_families(net.histograms()))
    assert f'beyla_network_tcp_rtt_seconds_bucket{{{labels},le="0.001"}} 2' in hist


def test_attribute_sets_past_the_bound_overflow_counted_and_kernel_losses_show() -> None:
    net = network(BEYLA_NETWORK_MAX_FLOWS="1")
    net.tcp._probes = RecordedProbes([dest(1, refused=1, rtt=(100,)), dest(2, refused=1, rtt=(100,)),
                                      dest(3, refused=1)])
    net.tcp.flush(0.0)
    assert net.tcp.overflows == 2 + 1  # two counter additions, one histogram merge
    own = {f.name: f.samples[0][2] for f in net.families()}
    assert own["beyla_sidecar_network_tcp_overflows_total"] == 3
    assert own["beyla_sidecar_network_tcp_map_full_total"] == 3
    assert own["beyla_sidecar_network_tcp_unreadable_total"] == 0


def test_without_the_tracepoints_nothing_is_drained() -> None:
    net = network()
    assert net.tcp.flush(0.0) == 0 and net.histograms()[0].instruments == []


class RecordedFlows:
    """Stands for PacketFlows: each drain hands out the next batch of flows; no DNS answers."""

    def __init__(self, *batches: list[Flow]) -> None:
        self.batches = list(batches)

    def read_dns(self) -> list:
        return []

    def drain(self) -> list[Flow]:
        return self.batches.pop(0) if self.batches else []

    def socket_stats(self) -> int:
        return 0

    def counters(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass


def test_reverse_dns_names_a_destination_from_a_later_flush_on() -> None:
    net = network(BEYLA_NETWORK_REVERSE_DNS="true")
    assert net.reverse is not None
    net.reverse._lookup = lambda address: {"10.0.0.9": "db.example"}[address]
    flow = Flow(POD, PEER, 45000, 5432, 6, "egress", 1, 100, 2)
    net._flows = RecordedFlows([flow], [flow])  # type: ignore[assignment]
    net.reverse.start()
    try:
        net.flush()  # queues the lookup; the flow goes out unnamed
        deadline = time.monotonic() + 5
        while not net.reverse._done and time.monotonic() < deadline:
            time.sleep(0.01)
        net.flush()  # the answer is in before this flush's flows are named
    finally:
        net.reverse.stop()
    text = render(counter_families(net.snapshot()))
    assert text.count("beyla_network_flow_packets_total{") == 2
    assert 'dst_address="10.0.0.9",dst_name="db.example"' in text
    own = {f.name: f.samples[0][2] for f in net.families()}
    prefix = "beyla_sidecar_network_reverse_dns"
    assert [own[f"{prefix}_{n}_total"] for n in ("lookups", "failures", "dropped")] == [1, 0, 0]


def test_reverse_dns_is_off_by_default() -> None:
    net = network()
    assert net.reverse is None
    own = {f.name: f.samples[0][2] for f in net.families()}
    assert own["beyla_sidecar_network_reverse_dns_lookups_total"] == 0
