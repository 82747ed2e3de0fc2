"""A kernel TCP destination (bpf/tcphealth.py) as the attribute set of the TCP health metrics.

Attributes follow the connection, client to server: for a connection the pod opened, `src.*` is
the pod and `dst.*` the peer it connected to (the flow metrics' egress side); for one the pod
accepted, `src.*` is the peer (its client) and `dst.*` the pod. The pod's own Kubernetes
attributes go on its side, the peer's name (and Kubernetes service) come from the pod's DNS
answers, as for flows (tracker/flows.py). `server.port` is the server's port; no other port is
an attribute (the kernel keeps only the server's, so a destination is one entry however many
connections go to it). When the kernel could not tell the socket's role (a reset sent from a
TIME_WAIT socket, or for a stray segment without socket), the flows' rule decides which port
is the server's.
"""

from __future__ import annotations

from collections.abc import Callable

from ..bpf.tcphealth import TcpDestination
from .flows import SIDE_ATTRIBUTES, Key, ephemeral_range, remote_side, server_port
from .names import NameCache

TCP_ATTRIBUTES = ("src.address", "dst.address", "src.name", "dst.name", "server.port",
                  *(f"k8s.src.{a}" for a in SIDE_ATTRIBUTES), *(f"k8s.dst.{a}" for a in SIDE_ATTRIBUTES))


class TcpAttributes:
    """Builds the attribute tuple (in TCP_ATTRIBUTES order) of each destination."""

    def __init__(self, names: NameCache, pod: dict[str, str], listening: Callable[[], set[int]]) -> None:
        self._names = names
        self._pod = pod
        self._listening = listening
        self._ephemeral = ephemeral_range()

    def keys(self, dests: list[TcpDestination], now: float) -> list[Key]:
        # the listening ports only matter to a socket of unknown role: read them only then
        listening = self._listening() if any(d.role == "unknown" for d in dests) else set()
        return [self.key(d, now, listening) for d in dests]

    def pod_is_client(self, d: TcpDestination, listening: set[int]) -> tuple[bool, int | None]:
        """Whether the pod opened the connection, and the server's port."""
        if d.role == "client":
            return True, d.remote_port
        if d.role == "server":
            return False, d.local_port
        port = server_port(d.local_port, d.remote_port, d.local_port, listening, self._ephemeral)
        return port != d.local_port, port

    def key(self, d: TcpDestination, now: float, listening: set[int]) -> Key:
        client, port = self.pod_is_client(d, listening)
        peer_name = self._names.name(d.remote, now)
        peer_side = remote_side(peer_name)
        src, dst = (d.local, d.remote) if client else (d.remote, d.local)
        src_name, dst_name = (None, peer_name) if client else (peer_name, None)
        src_side, dst_side = (self._pod, peer_side) if client else (peer_side, self._pod)
        return (str(src), str(dst), src_name, dst_name, port or None,
                *(src_side.get(a) for a in SIDE_ATTRIBUTES), *(dst_side.get(a) for a in SIDE_ATTRIBUTES))
