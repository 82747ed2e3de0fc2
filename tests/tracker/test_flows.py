"""Flow attributes: which side is the pod, the well-known port, names, opted-in ports."""

from __future__ import annotations

from ipaddress import IPv4Address

from beyla_sidecar.bpf.netflow import Flow
from beyla_sidecar.config import Config, load
from beyla_sidecar.tracker.flows import ATTRIBUTES, FlowAttributes, pod_side, server_port
from beyla_sidecar.tracker.names import NameCache

EPHEMERAL = (32768, 60999)
POD, PEER = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.9")


def test_server_port() -> None:
    assert server_port(8080, 45000, local=8080, listening={8080}, ephemeral=EPHEMERAL) == 8080
    assert server_port(45000, 443, local=45000, listening=set(), ephemeral=EPHEMERAL) == 443
    assert server_port(40000, 50000, local=50000, listening={50000}, ephemeral=EPHEMERAL) == 50000
    assert server_port(2000, 3000, local=2000, listening=set(), ephemeral=EPHEMERAL) == 2000  # lower
    assert server_port(0, 0, local=0, listening=set(), ephemeral=EPHEMERAL) is None  # ICMP


def attrs(cfg: Config, flow: Flow, names: NameCache) -> dict:
    fa = FlowAttributes(names, pod_side(cfg), cfg.network_extra_attributes, lambda: set())
    return {k: v for k, v in zip(ATTRIBUTES, fa.keys([flow], now=0.0)[0]) if v is not None}


def test_the_pods_k8s_attributes_go_on_its_side() -> None:
    cfg = load(Config, {"BEYLA_K8S_NAMESPACE": "shop", "BEYLA_K8S_POD_NAME": "web-1",
                        "BEYLA_K8S_STATEFULSET_NAME": "web", "BEYLA_NETWORK_EXTRA_ATTRIBUTES": "dst.port"})
    names = NameCache(10)
    names.learn("db.data.svc.cluster.local", PEER, 30, now=0.0)
    out = Flow(POD, PEER, 45000, 5432, 6, "egress", 1, 100, 2)
    got = attrs(cfg, out, names)
    assert got == {"direction": "egress", "transport": "tcp", "src.address": "10.0.0.2", "dst.address": "10.0.0.9",
                   "dst.port": 5432, "dst.name": "db.data.svc.cluster.local", "server.port": 5432, "iface": "lo",
                   "k8s.src.namespace": "shop", "k8s.src.name": "web-1", "k8s.src.type": "Pod",
                   "k8s.src.owner.name": "web", "k8s.src.owner.type": "StatefulSet",
                   "k8s.dst.name": "db", "k8s.dst.namespace": "data", "k8s.dst.type": "Service"}
    back = attrs(cfg, Flow(PEER, POD, 5432, 45000, 6, "ingress", 1, 100, 2), names)
    assert (back["src.name"], back["k8s.src.name"], back["k8s.dst.name"], back["dst.port"]) == \
        ("db.data.svc.cluster.local", "db", "web-1", 45000)
