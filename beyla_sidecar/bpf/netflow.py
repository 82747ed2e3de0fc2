"""The packet-socket side of network metrics: probes/netflow.bpf.c as a socket filter on an
AF_PACKET socket in the pod's network namespace (which the sidecar shares).

    with PacketFlows(map_size=16384) as pf:
        for answer in pf.read_dns():   # DNS answers the pod received (IP packets)
            ...
        for flow in pf.drain():        # the flows counted since the last drain
            ...

The filter sees every packet of every interface of the namespace, in both directions, and
nothing else; it counts them into the `flows` map and passes only DNS answers to the socket.
Needs CAP_BPF (load) and CAP_NET_RAW (the packet socket).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import libbpf
from .libbpf import BpfError

OBJECT_NAME = "netflow.bpf.o"
PROGRAM = "netflow"
ETH_P_ALL = 0x0003
SO_ATTACH_BPF = 50
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
# Socket receive buffer for DNS answers between two reads (the kernel caps it at net.core.rmem_max).
RCVBUF_BYTES = 1 << 20
MAX_PACKET = 65535
# Indexes of enum netflow_counter in probes/netflow.h.
COUNTER_NAMES = ("map_full_packets", "map_full_bytes", "dns_passed", "malformed")
# struct flow_key / struct flow_value in probes/netflow.h.
_KEY = struct.Struct("<16s16sIHHBBxx")
_VALUE = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_STATS = struct.Struct("<II")  # struct tpacket_stats: tp_packets, tp_drops
DIRECTIONS = ("ingress", "egress")
FIX_NET_RAW = ("BEYLA_NETWORK_METRICS=true needs capability NET_RAW for its packet socket: add NET_RAW "
               "to the sidecar's securityContext.capabilities.add (the webhook does when "
               "BEYLA_WEBHOOK_SIDECAR_NETWORK_METRICS=true), or set BEYLA_NETWORK_METRICS=false")


class NetflowError(BpfError):
    """Network metrics cannot run here; the message names the fix."""

    def __init__(self, message: str, err: int) -> None:
        Exception.__init__(self, message)
        self.errno = err
        self.log = ""


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow's traffic since the previous drain. Addresses are the packets' own."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    proto: int
    direction: str  # "ingress" | "egress"
    ifindex: int
    bytes: int
    packets: int


@dataclass(frozen=True, slots=True)
class Packet:
    """A packet the filter passed (a DNS answer): its IP packet, from the network header on."""

    ethertype: int
    ifindex: int
    data: bytes


def _address(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.IPv6Address(raw)
    return addr.ipv4_mapped or addr


def decode_flow(key: bytes, values: list[tuple[int, int]]) -> Flow:
    """A flow_key and the per-CPU flow_values of one entry."""
    saddr, daddr, ifindex, sport, dport, proto, direction, = _KEY.unpack(key)
    return Flow(_address(saddr), _address(daddr), sport, dport, proto, DIRECTIONS[direction & 1], ifindex,
                sum(v[0] for v in values), sum(v[1] for v in values))


def packaged_object() -> Path:
    return Path(str(resources.files("beyla_sidecar.bpf").joinpath("objects", OBJECT_NAME)))


def open_packet_socket() -> socket.socket:
    """A SOCK_DGRAM packet socket (the link-layer header stripped: data starts at the IP header)."""
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise NetflowError(FIX_NET_RAW, errno.EPERM) from None


class PacketFlows:
    """The loaded filter, its socket and its maps. A context manager; close() detaches."""

    def __init__(self, map_size: int = 16384, count_loopback: bool = False, pass_dns: bool = True) -> None:
        self._stack = ExitStack()
        self.socket_drops = 0  # DNS answers the socket's full queue dropped (PACKET_STATISTICS)
        try:
            self._open(map_size, count_loopback, pass_dns)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, map_size: int, count_loopback: bool, pass_dns: bool) -> None:
        # The socket first: without NET_RAW there is nothing to load the filter for.
        self.sock = open_packet_socket()
        self._stack.callback(self.sock.close)
        obj = libbpf.BpfObject(packaged_object())
        self._stack.callback(obj.close)
        obj.set_rodata("count_loopback", struct.pack("<I", int(count_loopback)))
        obj.set_rodata("pass_dns", struct.pack("<I", int(pass_dns)))
        obj.map("flows").set_max_entries(map_size)
        obj.load()
        self._flows = obj.map("flows")
        self._counters = obj.map("netflow_counters")
        self.icmp_failures_fd = obj.map("icmp_failures").fd  # for bpf/tcphealth.py (probes/tcpfail.h)
        self._ncpus = libbpf.num_possible_cpus()
        prog = next(p for p in obj.programs() if p.name == PROGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog.fd)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        self.sock.setblocking(False)
        # Packets queued between socket() and the attach went through no filter: not ours to read.
        for _ in self._receive():
            pass
        self.socket_stats()

    def __enter__(self) -> PacketFlows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def fileno(self) -> int:
        """Readable when DNS answers wait (for select/poll)."""
        return self.sock.fileno()

    def _receive(self) -> Iterator[Packet]:
        while True:
            try:
                data, addr = self.sock.recvfrom(MAX_PACKET)
            except BlockingIOError:
                return
            ifname, ethertype = addr[0], addr[1]
            try:
                ifindex = socket.if_nametoindex(ifname)
            except OSError:  # the interface went away meanwhile
                ifindex = 0
            yield Packet(ethertype, ifindex, data)

    def read_dns(self) -> list[Packet]:
        """Every DNS answer waiting in the socket (IP packets, network header first)."""
        return list(self._receive())

    def drain(self) -> list[Flow]:
        """Take every flow out of the kernel map (batch lookup-and-delete)."""
        per_cpu = _VALUE.size * self._ncpus
        out = []
        for key, value in self._flows.lookup_and_delete_batch(per_cpu):
            values = [_VALUE.unpack_from(value, i * _VALUE.size) for i in range(self._ncpus)]
            out.append(decode_flow(key, values))
        return out

    def counters(self) -> dict[str, int]:
        """The filter's loss and activity counters, summed over CPUs (cumulative)."""
        out = {}
        for index, name in enumerate(COUNTER_NAMES):
            raw = self._counters.lookup(struct.pack("<I", index), _U64.size * self._ncpus) or b""
            out[name] = sum(v for (v,) in _U64.iter_unpack(raw))
        return out

    def socket_stats(self) -> int:
        """Cumulative DNS answers dropped because the socket's queue was full (the kernel resets
        PACKET_STATISTICS on each read: accumulated here)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        _packets, drops = _STATS.unpack(raw)
        self.socket_drops += drops
        return self.socket_drops


def problem() -> str | None:
    """Why network metrics cannot run here (the fix), or None: opens the packet socket and loads
    and attaches the filter for an instant, as `run` does."""
    try:
        with PacketFlows(map_size=16):
            return None
    except NetflowError as exc:
        return str(exc)
    except (BpfError, OSError) as exc:
        return f"network metrics cannot load their socket filter: {exc}"


__all__ = ["problem", "Flow", "NetflowError", "Packet", "PacketFlows", "decode_flow", "FIX_NET_RAW"]
