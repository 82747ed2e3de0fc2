"""A kernel flow (bpf/netflow.py) as the attribute set of the flow metrics.

Attributes follow the packets: `src.*` is where the packets came from, `dst.*` where they went;
`direction` says which side is the pod (egress: the source, ingress: the destination). The pod's
own Kubernetes attributes go on its side (`k8s.src.*` on egress, `k8s.dst.*` on ingress); the
other side's name comes from the pod's DNS answers, and a Kubernetes service name
(`<svc>.<ns>.svc.cluster.local`) also gives that side's `k8s.*.name` and `k8s.*.namespace`.
Ports are left out unless opted in (BEYLA_NETWORK_EXTRA_ATTRIBUTES): an ephemeral client port
per connection would make a series per connection. `server.port` is the well-known side: a port
the pod listens on (TCP) or is bound to (UDP), else the one outside the ephemeral port range,
else the lower one. A destination the pod talks to as a client (the egress side holding the
server port, or a flow without ports) that has no name is handed to `unnamed` (reverse DNS,
tracker/reverse_dns.py), which must not block.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from ..bpf.netflow import Flow
from ..config import Config
from ..kube.metadata import owner_name
from .names import Address, NameCache, kubernetes_service

TRANSPORTS = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 132: "sctp"}
SIDE_ATTRIBUTES = ("namespace", "name", "type", "owner.name", "owner.type", "node.name")
ATTRIBUTES = ("direction", "transport", "src.address", "dst.address", "src.port", "dst.port", "src.name",
              "dst.name", "server.port", "iface",
              *(f"k8s.src.{a}" for a in SIDE_ATTRIBUTES), *(f"k8s.dst.{a}" for a in SIDE_ATTRIBUTES))
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_OWNER_KINDS = (("deployment", "Deployment"), ("replicaset", "ReplicaSet"), ("statefulset", "StatefulSet"),
                ("daemonset", "DaemonSet"), ("cronjob", "CronJob"), ("job", "Job"))

Key = tuple[str | int | None, ...]


def pod_side(cfg: Config) -> dict[str, str]:
    """The pod's own k8s.<side>.* values (side-less names), from the downward API."""
    owner = owner_name(cfg)
    owner_type = next((kind for attr, kind in _OWNER_KINDS if getattr(cfg, f"k8s_{attr}_name") == owner and owner), "")
    values = {"namespace": cfg.k8s_namespace, "name": cfg.k8s_pod_name, "type": "Pod" if cfg.k8s_pod_name else "",
              "owner.name": owner, "owner.type": owner_type, "node.name": cfg.k8s_node_name}
    return {k: v for k, v in values.items() if v}


def remote_side(name: str | None) -> dict[str, str]:
    """k8s.<side>.* values (side-less names) of the other side: a Kubernetes service's, when the
    pod resolved it by its cluster name."""
    svc = kubernetes_service(name) if name else None
    return {"name": svc[0], "namespace": svc[1], "type": "Service"} if svc is not None else {}


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = EPHEMERAL_RANGE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def server_port(sport: int, dport: int, local: int, listening: set[int], ephemeral: tuple[int, int]) -> int | None:
    """The well-known port of a flow whose local port is `local`."""
    if not sport and not dport:
        return None
    if local in listening:
        return local
    in_range = [ephemeral[0] <= p <= ephemeral[1] for p in (sport, dport)]
    if in_range[0] != in_range[1]:
        return dport if in_range[0] else sport
    return min(sport, dport)


class FlowAttributes:
    """Builds the attribute tuple (in ATTRIBUTES order) of each flow."""

    def __init__(self, names: NameCache, pod: dict[str, str], extra: tuple[str, ...],
                 listening: Callable[[], set[int]], unnamed: Callable[[Address, float], None] | None = None) -> None:
        self._names = names
        self._unnamed = unnamed
        self._pod = pod
        self._ports = "src.port" in extra, "dst.port" in extra
        self._listening = listening
        self._ephemeral = ephemeral_range()
        self._ifnames: dict[int, str] = {}

    def iface(self, ifindex: int) -> str:
        name = self._ifnames.get(ifindex)
        if name is None:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:  # gone meanwhile
                return str(ifindex)
            self._ifnames[ifindex] = name
        return name

    def keys(self, flows: list[Flow], now: float) -> list[Key]:
        listening = self._listening()  # once per flush
        return [self.key(f, now, listening) for f in flows]

    def key(self, f: Flow, now: float, listening: set[int]) -> Key:
        egress = f.direction == "egress"
        src_name = self._names.name(f.src, now)
        dst_name = self._names.name(f.dst, now)
        local = f.sport if egress else f.dport
        side = {"src": self._pod, "dst": remote_side(dst_name)} if egress else \
            {"src": remote_side(src_name), "dst": self._pod}
        has_ports = bool(f.sport or f.dport)
        port = server_port(f.sport, f.dport, local, listening, self._ephemeral)
        if egress and dst_name is None and self._unnamed is not None and (port is None or port == f.dport):
            self._unnamed(f.dst, now)
        return (
            f.direction, TRANSPORTS.get(f.proto, str(f.proto)), str(f.src), str(f.dst),
            f.sport if self._ports[0] and has_ports else None,
            f.dport if self._ports[1] and has_ports else None,
            src_name, dst_name,
            port, self.iface(f.ifindex),
            *(side["src"].get(a) for a in SIDE_ATTRIBUTES), *(side["dst"].get(a) for a in SIDE_ATTRIBUTES),
        )
