"""TCP health attributes: client to server, the pod's side, names, the server's port."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

from beyla_sidecar.bpf.tcphealth import RTT_BOUNDS, TcpDestination
from beyla_sidecar.tracker.names import NameCache
from beyla_sidecar.tracker.tcphealth import TCP_ATTRIBUTES, TcpAttributes

POD, PEER = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.9")
POD_SIDE = {"namespace": "shop", "name": "web-1", "type": "Pod"}


def dest(role: str, local_port: int, remote_port: int, remote: IPv4Address | IPv6Address = PEER) -> TcpDestination:
    return TcpDestination(POD, remote, local_port, remote_port, role, 1, 0, 0, 0, 0, 0,
                          (0,) * (RTT_BOUNDS + 1), 0, 0, 0)


def attrs(d: TcpDestination, names: NameCache | None = None, listening: set[int] | None = None) -> dict:
    ta = TcpAttributes(names or NameCache(10), POD_SIDE, lambda: listening or set())
    return {k: v for k, v in zip(TCP_ATTRIBUTES, ta.keys([d], now=0.0)[0]) if v is not None}


def test_a_connection_the_pod_opened_goes_from_the_pod_to_its_named_destination() -> None:
    names = NameCache(10)
    names.learn("orders.shop.svc.cluster.local", PEER, 30, now=0.0)
    assert attrs(dest("client", 0, 8080), names) == {
        "src.address": "10.0.0.2", "dst.address": "10.0.0.9", "dst.name": "orders.shop.svc.cluster.local",
        "server.port": 8080, "k8s.src.namespace": "shop", "k8s.src.name": "web-1", "k8s.src.type": "Pod",
        "k8s.dst.name": "orders", "k8s.dst.namespace": "shop", "k8s.dst.type": "Service"}


def test_a_connection_the_pod_accepted_goes_from_its_client_to_the_pod() -> None:
    names = NameCache(10)
    names.learn("client.test", PEER, 30, now=0.0)
    assert attrs(dest("server", 8443, 0), names) == {
        "src.address": "10.0.0.9", "dst.address": "10.0.0.2", "src.name": "client.test", "server.port": 8443,
        "k8s.dst.namespace": "shop", "k8s.dst.name": "web-1", "k8s.dst.type": "Pod"}


def test_an_unknown_role_is_decided_as_for_flows() -> None:
    # a listening port is the pod's own server port
    got = attrs(dest("unknown", 9000, 51000), listening={9000})
    assert (got["src.address"], got["dst.address"], got["server.port"]) == ("10.0.0.9", "10.0.0.2", 9000)
    # else the port outside the ephemeral range is the server's
    got = attrs(dest("unknown", 45000, 5432))
    assert (got["src.address"], got["dst.address"], got["server.port"]) == ("10.0.0.2", "10.0.0.9", 5432)


def test_listening_ports_are_read_only_when_a_role_is_unknown() -> None:
    reads = []
    ta = TcpAttributes(NameCache(10), POD_SIDE, lambda: reads.append(1) or set())
    ta.keys([dest("client", 0, 80), dest("server", 80, 0)], now=0.0)
    assert not reads
    ta.keys([dest("unknown", 45000, 80)], now=0.0)
    assert reads == [1]


def test_ipv6_addresses() -> None:
    got = attrs(dest("client", 0, 443, remote=IPv6Address("fd00::9")))
    assert got["dst.address"] == "fd00::9"
