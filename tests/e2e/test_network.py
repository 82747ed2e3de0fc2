"""Network metrics end to end (issue 10): a pod with its own network namespace, a veth to a peer
namespace running an HTTP server, UDP echo servers and dnsmasq; the pod's clients resolve names
through the pod's own /etc/resolv.conf. The sidecar's Prometheus endpoint is scraped from inside
the pod (over lo, which the filter does not count).

Tolerances: UDP byte counts are exact (IP + UDP headers are fixed: 28 bytes per IPv4 datagram,
48 per IPv6 one). TCP counts are payload plus 40 to 60 bytes of IP + TCP header per packet (20 +
20, plus 12 for timestamps, up to 20 of options on a SYN): exact payload, header range per
packet. Traffic between two other namespaces and on the host must not appear at all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.privileges import DOCUMENTED, setpriv

from .netpod import DNS_V4, PEER_V4, PEER_V6, POD_V4, POD_V6, SVC_V4, UNNAMED_V4, Netns, NetPod, veth
from .pod import APPS, Sidecar

pytestmark = pytest.mark.bpf

PROM_PORT = 9464
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Series = list[tuple[str, dict[str, str], float]]


def parse(text: str) -> Series:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.append((m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def scrape(pod: NetPod) -> Series:
    return parse(pod.run(["curl", "-sS", f"http://127.0.0.1:{PROM_PORT}/metrics"]).stdout.decode())


def flows(series: Series, metric: str, **match: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, v) for name, labels, v in series if name == metric
            and all(labels.get(k) == want for k, want in match.items())]


def one(series: Series, metric: str, **match: str) -> float:
    found = flows(series, metric, **match)
    assert len(found) == 1, (metric, match, found)
    return found[0][1]


def counter(series: Series, name: str) -> float:
    return next(v for n, _, v in series if n == name)


def client(pod: NetPod, *args: str) -> dict:
    return json.loads(pod.run([sys.executable, str(APPS / "net_client.py"), *args]).stdout)


@pytest.fixture
def peer() -> Iterator[Netns]:
    ns = Netns(f"bspeer{os.getpid() % 100000}")
    yield ns
    ns.close()


@pytest.fixture
def netpod(tmp_path: Path, peer: Netns) -> Iterator[NetPod]:
    pod = NetPod(tmp_path, peer)
    yield pod
    pod.close()


@pytest.fixture
def servers(tmp_path: Path, peer: Netns) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "blob").write_bytes(b"b" * 100_000)
    peer.spawn([sys.executable, "-m", "http.server", "8080", "--bind", PEER_V4, "--directory", str(www)],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for address in (PEER_V4, SVC_V4, PEER_V6, UNNAMED_V4):
        peer.spawn([sys.executable, str(APPS / "udp_echo.py"), address, "9053"])
    peer.spawn(["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--user=root",
                "--pid-file=", f"--listen-address={DNS_V4}", "--bind-interfaces", "--local-ttl=30",
                f"--host-record=backend.test,{PEER_V4},{PEER_V6}",
                f"--host-record=orders.shop.svc.cluster.local,{SVC_V4}",
                # names only reverse DNS finds (a host-record also makes its PTR record)
                *(f"--ptr-record={ipaddress.ip_address(a).reverse_pointer},{n}"
                  for a, n in ((UNNAMED_V4, "reverse.test"), (DNS_V4, "dns.test")))],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_tcp(peer, PEER_V4, 8080)
    return www


def wait_tcp(ns: Netns, address: str, port: int) -> None:
    probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1).close()"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            ns.run([sys.executable, "-c", probe])
            return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError(f"nothing on {address}:{port}")


def start(pod: NetPod, **env: str) -> Sidecar:
    return Sidecar(pod, {"BEYLA_NETWORK_METRICS": "true", "BEYLA_NETWORK_FLUSH_INTERVAL": "300ms",
                         "BEYLA_PROMETHEUS_PORT": str(PROM_PORT), "BEYLA_TRACE_PRINTER": "disabled", **env})


def settle(pod: NetPod, metric: str, done: Callable[[Series], bool], timeout: float = 10) -> Series:
    """Scrape until `done(series)` (flushes are periodic), then return the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        series = scrape(pod)
        if done(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.3)


def noise() -> None:
    """Traffic the pod's sidecar must not see: between two other namespaces, and on the host."""
    a, b = Netns(f"bsnoa{os.getpid() % 100000}"), Netns(f"bsnob{os.getpid() % 100000}")
    try:
        veth("bsna", a.name, "bsnb", b.name)
        for ns, dev, addr in ((a, "bsna", "10.232.0.1/24"), (b, "bsnb", "10.232.0.2/24")):
            ns.run(["ip", "addr", "add", addr, "dev", dev])
            ns.run(["ip", "link", "set", dev, "up"])
        send = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'n'*100, ({!r}, 9053)) for _ in range(50)]"
        a.run([sys.executable, "-c", send.format("10.232.0.2")])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # the host
            for _ in range(50):
                s.sendto(b"h" * 100, ("127.0.0.1", 9))
    finally:
        a.close()
        b.close()


def test_flows_named_from_the_pods_dns_answers(netpod: NetPod, servers: Path) -> None:
    start(netpod, BEYLA_K8S_NAMESPACE="shop-ns", BEYLA_K8S_POD_NAME="client-7f9", BEYLA_K8S_DEPLOYMENT_NAME="client")
    noise()
    got = client(netpod, "http", "backend.test", "8080", "/blob")
    assert got["address"] == PEER_V4 and got["received"] > 100_000
    udp4 = client(netpod, "udp", "backend.test", "9053", "200", "20")
    udp6 = client(netpod, "udp", "backend.test", "9053", "300", "10", "inet6")
    svc = client(netpod, "udp", "orders.shop.svc.cluster.local", "9053", "50", "5")
    assert (udp4["address"], udp6["address"], svc["address"]) == (PEER_V4, PEER_V6, SVC_V4)

    bytes_ = "beyla_network_flow_bytes_total"
    packets = "beyla_network_flow_packets_total"
    series = settle(netpod, bytes_, lambda s: len(flows(s, bytes_, transport="udp", src_address=SVC_V4)) == 1)

    # TCP: the HTTP exchange, both directions, named from the A answer the client got
    egress = dict(direction="egress", transport="tcp", src_address=POD_V4, dst_address=PEER_V4,
                  dst_name="backend.test", server_port="8080", iface="eth0")
    ingress = dict(direction="ingress", transport="tcp", src_address=PEER_V4, dst_address=POD_V4,
                   src_name="backend.test", server_port="8080", iface="eth0")
    for match, payload in ((egress, got["sent"]), (ingress, got["received"])):
        n = one(series, packets, **match)
        assert n > 0
        assert payload + 40 * n <= one(series, bytes_, **match) <= payload + 60 * n, match

    # UDP, IPv4 and IPv6 (AAAA): exact
    for src, dst, size, count, header in ((POD_V4, PEER_V4, 200, 20, 28), (POD_V6, PEER_V6, 300, 10, 48)):
        for direction, (s, d) in (("egress", (src, dst)), ("ingress", (dst, src))):
            match = dict(direction=direction, transport="udp", src_address=s, dst_address=d, server_port="9053")
            assert one(series, packets, **match) == count
            assert one(series, bytes_, **match) == count * (size + header)
            assert flows(series, bytes_, **match)[0][0].get("dst_name" if direction == "egress" else "src_name") \
                == "backend.test"

    # A Kubernetes service name gives the remote side's k8s attributes; the pod's own are its side
    labels, value = flows(series, bytes_, direction="egress", transport="udp", dst_address=SVC_V4)[0]
    assert value == 5 * (50 + 28)
    assert labels["dst_name"] == "orders.shop.svc.cluster.local"
    assert (labels["k8s_dst_name"], labels["k8s_dst_namespace"], labels["k8s_dst_type"]) == ("orders", "shop", "Service")
    assert (labels["k8s_src_namespace"], labels["k8s_src_name"], labels["k8s_src_owner_name"],
            labels["k8s_src_owner_type"]) == ("shop-ns", "client-7f9", "client", "Deployment")
    assert "src_port" not in labels and "dst_port" not in labels  # not opted in

    # DNS itself is a flow to the server's port 53
    assert one(series, packets, direction="egress", transport="udp", dst_address=DNS_V4, server_port="53") >= 4

    # Nothing but the pod's veth: no other namespace's, the host's or loopback traffic
    addresses = {labels[k] for name, labels, _ in series if name == bytes_ for k in ("src_address", "dst_address")}
    allowed = {POD_V4, PEER_V4, DNS_V4, SVC_V4, POD_V6, PEER_V6}
    # (IPv6 neighbour discovery and MLD on eth0 are the pod's too: link-local, multicast, `::`)
    assert {a for a in addresses if a != "::" and not a.startswith(("fe80:", "ff02:"))} <= allowed, addresses
    assert {labels["iface"] for name, labels, _ in series if name == bytes_} == {"eth0"}
    assert counter(series, "beyla_sidecar_network_dns_answers_total") >= 4
    assert counter(series, "beyla_sidecar_network_flow_map_full_packets_total") == 0
    assert counter(series, "beyla_sidecar_network_flow_overflows_total") == 0


def test_full_flow_map_and_label_overflow_are_counted(netpod: NetPod, servers: Path) -> None:
    start(netpod, BEYLA_NETWORK_FLOW_MAP_SIZE="8", BEYLA_NETWORK_MAX_FLOWS="3",
          BEYLA_NETWORK_EXTRA_ATTRIBUTES="dst.port", BEYLA_NETWORK_FLUSH_INTERVAL="2s")
    client(netpod, "ports", PEER_V4, "20000", "100")  # 100 flows within one flush interval
    name = "beyla_sidecar_network_flow_map_full_packets_total"

    def sent(series: Series) -> float:
        """Egress UDP packets in series: their own, or the overflow series past the label limit
        (which also holds the peer's ICMP answers: an upper bound there)."""
        own = sum(v for labels, v in flows(series, "beyla_network_flow_packets_total", direction="egress",
                                           transport="udp") if labels.get("server_port", "") not in ("53",))
        return own + sum(v for _, v in flows(series, "beyla_network_flow_packets_total", otel_metric_overflow="true"))

    # until the flush after the burst: every packet is then in a series or in the refused count
    series = settle(netpod, name, lambda s: counter(s, "beyla_sidecar_network_flow_overflows_total") > 0
                    and sent(s) + counter(s, name) >= 100)
    refused = counter(series, name)
    # 100 one-packet flows, at most 8 entries per interval: at least 92 refused, counted
    assert refused >= 92 - 8  # (a flush may come in the middle of the burst and free the map once)
    # 29 bytes per datagram; the peer's ICMP port-unreachable answers (56 bytes) are new flows too
    assert counter(series, "beyla_sidecar_network_flow_map_full_bytes_total") >= refused * 29
    overflow = flows(series, "beyla_network_flow_packets_total", otel_metric_overflow="true")
    assert len(overflow) == 1 and overflow[0][1] > 0
    # every packet is in a series or in the refused count: none lost silently
    assert sent(series) + refused >= 100


def test_without_net_raw_one_error_names_the_fix(netpod: NetPod) -> None:
    sidecar = Sidecar(netpod, {"BEYLA_NETWORK_METRICS": "true"}, wrapper=setpriv(DOCUMENTED))
    log = sidecar.err.read_text()
    assert log.count("network metrics disabled") == 1
    assert "NET_RAW" in log and "securityContext.capabilities.add" in log
    assert sidecar.proc.poll() is None  # the rest of the sidecar runs on


@pytest.mark.parametrize("reverse", [True, False], ids=["on", "off"])
def test_reverse_dns_names_a_destination_the_pod_never_resolved(netpod: NetPod, servers: Path, reverse: bool) -> None:
    """The pod sends to an address without resolving it; dnsmasq has a PTR record for it. On, the
    flows are named from the first flush after the lookup: the first datagrams may go out
    unnamed (the lookup happens after the flush that drains them), the ones sent after the
    answer is in are named, all of them. The sidecar's own PTR query is the pod's traffic to its
    DNS server, whose address gets named the same way."""
    start(netpod, BEYLA_NETWORK_REVERSE_DNS=str(reverse).lower())
    packets = "beyla_network_flow_packets_total"
    lookups = "beyla_sidecar_network_reverse_dns_lookups_total"
    egress = dict(direction="egress", transport="udp", dst_address=UNNAMED_V4, server_port="9053")
    ingress = dict(direction="ingress", transport="udp", src_address=UNNAMED_V4, server_port="9053")

    def by_name(series: Series, match: dict[str, str], side: str) -> dict[str | None, float]:
        return {labels.get(f"{side}_name"): v for labels, v in flows(series, packets, **match)}

    client(netpod, "udp", UNNAMED_V4, "9053", "100", "4")  # an address: no DNS query
    settle(netpod, packets, lambda s: sum(by_name(s, egress, "dst").values()) == 4
           and (not reverse or counter(s, lookups) >= 1))
    time.sleep(1.0)  # three flushes: the answer is in the cache
    client(netpod, "udp", UNNAMED_V4, "9053", "100", "6")
    series = settle(netpod, packets, lambda s: sum(by_name(s, egress, "dst").values()) == 10
                    and (not reverse or counter(s, lookups) >= 2))

    out, back = by_name(series, egress, "dst"), by_name(series, ingress, "src")
    if reverse:
        assert set(out) <= {None, "reverse.test"} and out["reverse.test"] >= 6, out
        assert set(back) <= {None, "reverse.test"} and back["reverse.test"] >= 6, back
        assert sum(out.values()) == sum(back.values()) == 10
        dns = by_name(series, dict(direction="egress", transport="udp", dst_address=DNS_V4, server_port="53"), "dst")
        assert set(dns) <= {None, "dns.test"} and sum(dns.values()) >= 2, dns
        assert (counter(series, lookups), counter(series, "beyla_sidecar_network_reverse_dns_failures_total"),
                counter(series, "beyla_sidecar_network_reverse_dns_dropped_total")) == (2, 0, 0)
    else:
        assert out == {None: 10} and back == {None: 10}
        assert not flows(series, packets, dst_address=DNS_V4)  # no query at all
        assert counter(series, lookups) == 0
