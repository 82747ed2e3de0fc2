"""TCP health end to end (issue 10 item 4): the pod of test_network.py (its own network namespace,
a veth to a peer namespace), real TCP servers and clients on both sides, and the real kernel's
behaviour: refusals, SYNs into a black hole, ICMP errors, resets both ways, a loss window.

Exact: every count is what the clients did, and the kernel's own counters of the pod's network
namespace (/proc/net/snmp: RetransSegs, OutRsts) agree with the metrics' totals. RTT: the RTT the
kernel reported to the client (TCP_INFO) just before an abort is exactly the sample; after a FIN
close the sample includes the FIN's acknowledgement, so it is only bounded (veth: well under
10 ms; this kernel has no netem to add a known delay). Meanwhile two other namespaces do the same
kinds of things; none of it may show.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.privileges import DOCUMENTED, setpriv

from .netpod import PEER_V4, PEER_V6, POD_V4, Netns, NetPod, veth
from .pod import APPS, Sidecar
from .test_network import PROM_PORT, Series, flows, netpod, one, peer, settle, start, wait_tcp  # noqa: F401 (fixtures)

pytestmark = pytest.mark.bpf

FAILED = "beyla_network_tcp_failed_connections_total"
RESETS = "beyla_network_tcp_resets_total"
RETRANSMITS = "beyla_network_tcp_retransmits_total"
RTT = "beyla_network_tcp_rtt_seconds"
BLACK_HOLE = "10.231.0.77"     # a neighbour entry to a MAC nobody has: SYNs vanish
UNREACHABLE = "10.231.6.6"     # routed through the peer, which answers ICMP host unreachable
NOISE_NET = "10.232.0."
CLIENT = [sys.executable, str(APPS / "tcp_client.py")]
SERVER = [sys.executable, str(APPS / "tcp_server.py")]


def tcp(where: NetPod | Netns, *args: str) -> dict:
    return json.loads(where.run([*CLIENT, *args], timeout=60).stdout)


def snmp(pod: NetPod) -> dict[str, int]:
    """The Tcp: counters of the pod's network namespace."""
    lines = [line.split() for line in pod.run(["cat", "/proc/net/snmp"]).stdout.decode().splitlines()
             if line.startswith("Tcp:")]
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:])}


def total(series: Series, metric: str, **match: str) -> float:
    return sum(v for _, v in flows(series, metric, **match))


def gauge(series: Series, name: str) -> float:
    return next(v for n, _, v in series if n == name)


@contextmanager
def noise() -> Iterator[None]:
    """Two other namespaces doing all of it meanwhile: refused attempts, aborts, resets."""
    a, b = Netns(f"bstna{os.getpid() % 100000}"), Netns(f"bstnb{os.getpid() % 100000}")
    try:
        veth("bsta", a.name, "bstb", b.name)
        for ns, dev, addr in ((a, "bsta", f"{NOISE_NET}1/24"), (b, "bstb", f"{NOISE_NET}2/24")):
            ns.run(["ip", "addr", "add", addr, "dev", dev])
            ns.run(["ip", "link", "set", dev, "up"])
        a.spawn([*SERVER, f"{NOISE_NET}1", "7001", "reset"])
        wait_tcp(a, f"{NOISE_NET}1", 7001)
        client = " ".join(CLIENT)
        loop = (f"while true; do {client} connect {NOISE_NET}1 7009 5; {client} exchange {NOISE_NET}1 7001 3 wait;"
                f" {client} exchange {NOISE_NET}1 7001 2 abort; done")
        b.spawn(["sh", "-c", loop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield
    finally:
        a.close()
        b.close()


def nothing_of_others(series: Series) -> None:
    tcp_metrics = {FAILED, RESETS, RETRANSMITS, f"{RTT}_count"}
    addresses = {labels[k] for name, labels, _ in series if name in tcp_metrics
                 for k in ("src_address", "dst_address") if k in labels}
    assert not {a for a in addresses if a.startswith((NOISE_NET, "127.")) or a == "::1"}, addresses


def test_failed_connections_by_reason(netpod: NetPod, peer: Netns) -> None:
    # the peer routes 10.231.6.0/24 to `unreachable` and answers every attempt with ICMP at once
    for sysctl in ("net.ipv4.ip_forward=1", "net.ipv4.icmp_ratelimit=0"):
        peer.run(["sysctl", "-qw", sysctl])
    peer.run(["ip", "route", "add", "unreachable", "10.231.6.0/24"])
    netpod.run(["ip", "route", "add", "10.231.6.0/24", "via", PEER_V4])
    netpod.run(["ip", "neigh", "add", BLACK_HOLE, "lladdr", "02:00:00:00:00:77", "dev", "eth0", "nud", "permanent"])
    sidecar = start(netpod, BEYLA_K8S_NAMESPACE="shop", BEYLA_K8S_POD_NAME="client-1")
    with noise():
        refused = tcp(netpod, "connect", PEER_V4, "7009", "5")
        refused6 = tcp(netpod, "connect", PEER_V6, "7009", "2")
        gave_up = tcp(netpod, "connect", BLACK_HOLE, "7000", "3", "0.3")          # the app's own timeout
        retried = tcp(netpod, "connect", BLACK_HOLE, "7001", "1", "10", "1")      # TCP_SYNCNT 1: ETIMEDOUT
        unreachable = tcp(netpod, "connect", UNREACHABLE, "7000", "2", "5")
    assert refused["outcomes"] == {"ECONNREFUSED": 5} and refused6["outcomes"] == {"ECONNREFUSED": 2}
    assert gave_up["outcomes"] == {"timeout": 3} and retried["outcomes"] == {"ETIMEDOUT": 1}
    assert unreachable["outcomes"] == {"EHOSTUNREACH": 2}

    series = settle(netpod, FAILED, lambda s: total(s, FAILED) >= 13)
    for reason, address, port, n in (("refused", PEER_V4, "7009", 5), ("refused", PEER_V6, "7009", 2),
                                     ("timeout", BLACK_HOLE, "7000", 3), ("timeout", BLACK_HOLE, "7001", 1),
                                     ("unreachable", UNREACHABLE, "7000", 2)):
        assert one(series, FAILED, reason=reason, dst_address=address, server_port=port) == n, (reason, address)
    assert total(series, FAILED) == 13
    labels = flows(series, FAILED, reason="refused", dst_address=PEER_V4)[0][0]
    assert (labels["src_address"], labels["k8s_src_namespace"], labels["k8s_src_name"]) == (POD_V4, "shop", "client-1")
    # the refusals are resets received too; none was sent
    assert one(series, RESETS, direction="received", dst_address=PEER_V4, server_port="7009") == 5
    assert one(series, RESETS, direction="received", dst_address=PEER_V6, server_port="7009") == 2
    assert total(series, RESETS) == 7
    # the SYNs sent again until the kernel gave up (TCP_SYNCNT 1), as it counted them itself
    retransmitted = snmp(netpod)["RetransSegs"]
    assert retransmitted >= 1
    assert one(series, RETRANSMITS, dst_address=BLACK_HOLE, server_port="7001") == retransmitted
    assert total(series, RETRANSMITS) == retransmitted
    assert total(series, f"{RTT}_count") == 0  # no connection was ever established
    nothing_of_others(series)
    assert gauge(series, "beyla_sidecar_network_tcp_map_full_total") == 0
    assert "TCP health metrics disabled" not in sidecar.err.read_text()


def test_resets_both_ways_and_rtt(netpod: NetPod, peer: Netns) -> None:
    for port, mode in (("7001", "echo"), ("7002", "reset"), ("7004", "echo")):
        peer.spawn([*SERVER, PEER_V4, port, mode])
        wait_tcp(peer, PEER_V4, int(port))
    netpod.spawn([*SERVER, POD_V4, "7100", "reset"])
    wait_tcp(peer, POD_V4, 7100)
    time.sleep(0.2)  # the waits' own resets are out before the sidecar starts
    before = snmp(netpod)
    start(netpod)
    with noise():
        aborted = tcp(netpod, "exchange", PEER_V4, "7001", "4", "abort")     # the pod resets, as a client
        closed = tcp(netpod, "exchange", PEER_V4, "7004", "3", "close")
        reset = tcp(netpod, "exchange", PEER_V4, "7002", "3", "wait")        # the peer resets the pod
        served = tcp(peer, "exchange", POD_V4, "7100", "2", "wait")          # the pod resets, as a server
        closed_port = tcp(peer, "connect", POD_V4, "7101", "2")              # no socket: the kernel resets
    assert aborted["ends"] == {"abort": 4} and closed["ends"] == {"close": 3}
    assert reset["ends"] == {"reset": 3} and served["ends"] == {"reset": 2}
    assert closed_port["outcomes"] == {"ECONNREFUSED": 2}

    samples = 4 + 3 + 3 + 2  # every connection that was established, once, at its close
    series = settle(netpod, RTT, lambda s: total(s, f"{RTT}_count") >= samples and total(s, RESETS) >= 11)
    pod_client = dict(src_address=POD_V4, dst_address=PEER_V4)
    pod_server = dict(src_address=PEER_V4, dst_address=POD_V4)  # src is the client: the peer
    assert one(series, RESETS, direction="sent", server_port="7001", **pod_client) == 4
    assert one(series, RESETS, direction="received", server_port="7002", **pod_client) == 3
    assert one(series, RESETS, direction="sent", server_port="7100", **pod_server) == 2
    assert one(series, RESETS, direction="sent", server_port="7101", **pod_server) == 2
    assert total(series, RESETS, direction="sent") == snmp(netpod)["OutRsts"] - before["OutRsts"] == 8
    assert total(series, RESETS, direction="received") == 3

    # RTT: one sample per connection; an abort's is exactly what TCP_INFO said just before
    assert one(series, f"{RTT}_count", server_port="7001", **pod_client) == 4
    assert one(series, f"{RTT}_sum", server_port="7001", **pod_client) == pytest.approx(
        sum(aborted["rtt_us"]) / 1e6, abs=1e-9)
    for port, n, match in (("7004", 3, pod_client), ("7002", 3, pod_client), ("7100", 2, pod_server)):
        assert one(series, f"{RTT}_count", server_port=port, **match) == n, port
        assert one(series, f"{RTT}_bucket", server_port=port, le="0.01", **match) == n, port  # veth: < 10 ms
        assert one(series, f"{RTT}_sum", server_port=port, **match) > 0, port
    assert total(series, f"{RTT}_count") == samples
    assert total(series, FAILED) == 0  # the refusals of 7101 were the peer's attempts
    assert total(series, RETRANSMITS) == snmp(netpod)["RetransSegs"] - before["RetransSegs"]
    nothing_of_others(series)


def test_retransmits_in_a_loss_window(netpod: NetPod, peer: Netns) -> None:
    peer.spawn([*SERVER, PEER_V4, "7003", "sink"])
    wait_tcp(peer, PEER_V4, 7003)
    before = snmp(netpod)["RetransSegs"]
    start(netpod)
    stream = netpod.spawn([*CLIENT, "stream", PEER_V4, "7003", "4"], stdout=subprocess.PIPE)
    time.sleep(1)
    # for 1.5 s the peer's answers to the pod go nowhere: the pod hears no acknowledgement of
    # what it sends meanwhile, and sends it again
    peer.run(["ip", "route", "add", "blackhole", f"{POD_V4}/32"])
    time.sleep(1.5)
    peer.run(["ip", "route", "del", "blackhole", f"{POD_V4}/32"])
    out, _ = stream.communicate(timeout=60)
    got = json.loads(out)
    assert got["received_by_server"] == got["sent"]

    retransmitted = snmp(netpod)["RetransSegs"] - before
    assert retransmitted > 0
    series = settle(netpod, RETRANSMITS, lambda s: total(s, RETRANSMITS) >= retransmitted
                    and total(s, f"{RTT}_count") >= 1)
    every = flows(series, RETRANSMITS)  # in the messages: which series took what
    assert total(series, RETRANSMITS) == retransmitted, every
    assert one(series, RETRANSMITS, src_address=POD_V4, dst_address=PEER_V4, server_port="7003") == retransmitted, every
    assert one(series, f"{RTT}_count", server_port="7003") == 1


def test_full_map_and_label_overflow_are_counted(netpod: NetPod, peer: Netns) -> None:
    start(netpod, BEYLA_NETWORK_TCP_MAP_SIZE="4", BEYLA_NETWORK_MAX_FLOWS="3", BEYLA_NETWORK_FLUSH_INTERVAL="2s")
    got = tcp(netpod, "ports", PEER_V4, "7010", "10")  # 10 destinations within one flush interval
    assert got["outcomes"] == {"ECONNREFUSED": 10}
    full = "beyla_sidecar_network_tcp_map_full_total"

    def accounted(series: Series) -> float:
        """Each attempt is 2 events (failed, reset received): in a series, or refused by the map."""
        return total(series, FAILED) + total(series, RESETS) + gauge(series, full)

    series = settle(netpod, FAILED, lambda s: accounted(s) >= 20)
    assert accounted(series) == 20  # none lost silently, none twice
    assert gauge(series, full) > 0
    overflow = flows(series, FAILED, otel_metric_overflow="true")
    assert len(overflow) == 1 and overflow[0][0]["reason"] == "refused" and overflow[0][1] > 0
    assert gauge(series, "beyla_sidecar_network_tcp_overflows_total") > 0


def test_no_capability_of_its_own(netpod: NetPod, peer: Netns) -> None:
    """The documented capabilities and the flows' NET_RAW are all it needs."""
    env = {"BEYLA_NETWORK_METRICS": "true", "BEYLA_NETWORK_FLUSH_INTERVAL": "300ms",
           "BEYLA_PROMETHEUS_PORT": str(PROM_PORT), "BEYLA_TRACE_PRINTER": "disabled"}
    sidecar = Sidecar(netpod, env, wrapper=setpriv((*DOCUMENTED, "NET_RAW")))
    assert tcp(netpod, "connect", PEER_V4, "7009", "3")["outcomes"] == {"ECONNREFUSED": 3}
    series = settle(netpod, FAILED, lambda s: total(s, FAILED) >= 3)
    assert one(series, FAILED, reason="refused", dst_address=PEER_V4, server_port="7009") == 3
    log = sidecar.err.read_text()
    assert "TCP health metrics disabled" not in log and "network metrics disabled" not in log
