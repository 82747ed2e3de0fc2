"""The kernel side of TCP health: probes/tcphealth.bpf.c on TCP tracepoints of the whole node,
filtered in the kernel to one network namespace (the sidecar's own, i.e. the pod's).

    with TcpHealthProbes(map_size=4096, rtt_bounds=(0.0001, ...), icmp_failures_fd=...) as th:
        for dest in th.drain():     # each destination's events since the last drain
            ...

`icmp_failures_fd`: the packet filter's map of ICMP errors that answered the pod's SYNs
(bpf/netflow.py, probes/tcpfail.h), which tells an attempt the node itself answered with an
ICMP error (processed within connect(), reported to the application through SO_ERROR only) from
one that timed out. Without it such attempts count as timeouts.

What a destination counts: failed connection attempts by reason, resets sent and received,
retransmitted segments, and an RTT histogram (smoothed RTT of each connection at its close) on
the bounds given. Needs CAP_BPF and CAP_PERFMON (tracing programs), which the sidecar holds for
its other probes already: no capability of its own.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from . import libbpf
from .libbpf import BpfError

OBJECT_NAME = "tcphealth.bpf.o"
DESTS_MAP = "tcp_dests"
ICMP_MAP = "icmp_failures"
# probes/tcphealth.h: RTT_BOUNDS, enum tcp_role, enum tcphealth_counter (index order).
RTT_BOUNDS = 16
ROLES = ("unknown", "client", "server")
COUNTER_NAMES = ("map_full", "unreadable")
# struct tcph_key and struct tcph_dest in probes/tcphealth.h.
_KEY = struct.Struct("<16s16sHHBxxx")
_DEST = struct.Struct(f"<Q8I{RTT_BOUNDS + 1}I4x")  # 112 bytes: padded to 8
_U64 = struct.Struct("<Q")
NO_SAMPLE = 0xFFFFFFFF  # rtt_min_us of an entry without RTT samples

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TcpDestination:
    """One destination's events since the previous drain. A port is 0 where the kernel dropped
    it: the client's ephemeral port, when the role is known."""

    local: Address
    remote: Address
    local_port: int
    remote_port: int
    role: str                       # "client" (the pod connected), "server" (it accepted), "unknown"
    refused: int
    timeout: int
    unreachable: int
    resets_sent: int
    resets_received: int
    retransmits: int
    rtt_buckets: tuple[int, ...]    # counts per bucket of the bounds given, then one above them
    rtt_sum_us: int
    rtt_min_us: int                 # meaningful only when rtt_count
    rtt_max_us: int

    @property
    def rtt_count(self) -> int:
        return sum(self.rtt_buckets)


def _address(raw: bytes) -> Address:
    addr = ipaddress.IPv6Address(raw)
    return addr.ipv4_mapped or addr


def decode_destination(key: bytes, value: bytes) -> TcpDestination:
    """A tcph_key and its tcph_dest."""
    laddr, raddr, lport, rport, role = _KEY.unpack(key)
    rtt_sum, refused, timeout, unreachable, sent, received, retransmits, rtt_min, rtt_max, *buckets = \
        _DEST.unpack(value)
    return TcpDestination(_address(laddr), _address(raddr), lport, rport, ROLES[role] if role < len(ROLES) else
                          "unknown", refused, timeout, unreachable, sent, received, retransmits, tuple(buckets),
                          rtt_sum, rtt_min, rtt_max)


def bounds_us(bounds: tuple[float, ...]) -> bytes:
    """The histogram's bounds (seconds, ascending, RTT_BOUNDS of them) as the kernel's knob."""
    if len(bounds) != RTT_BOUNDS or list(bounds) != sorted(bounds):
        raise ValueError(f"the RTT histogram needs {RTT_BOUNDS} ascending bounds")
    return struct.pack(f"<{RTT_BOUNDS}I", *(round(b * 1e6) for b in bounds))


def packaged_object() -> Path:
    return Path(str(resources.files("beyla_sidecar.bpf").joinpath("objects", OBJECT_NAME)))


def own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


class TcpHealthProbes:
    """The loaded and attached programs and their map. A context manager; close() detaches."""

    def __init__(self, map_size: int, rtt_bounds: tuple[float, ...], icmp_failures_fd: int | None = None,
                 netns: int | None = None) -> None:
        self._stack = ExitStack()
        try:
            self._open(map_size, rtt_bounds, icmp_failures_fd, own_netns() if netns is None else netns)
        except BaseException:
            self._stack.close()
            raise

    def _open(self, map_size: int, rtt_bounds: tuple[float, ...], icmp_failures_fd: int | None,
              netns: int) -> None:
        obj = libbpf.BpfObject(packaged_object())
        self._stack.callback(obj.close)
        obj.set_rodata("netns_ino", struct.pack("<I", netns))
        obj.set_rodata("rtt_bounds_us", bounds_us(rtt_bounds))
        obj.map(DESTS_MAP).set_max_entries(map_size)
        if icmp_failures_fd is not None:
            obj.map(ICMP_MAP).reuse_fd(icmp_failures_fd)
        obj.load()
        self._dests = obj.map(DESTS_MAP)
        self._counters = obj.map("tcphealth_counters")
        self._ncpus = libbpf.num_possible_cpus()
        self.program_fds = {p.name: p.fd for p in obj.programs()}
        for prog in obj.programs():
            self._stack.callback(prog.attach().destroy)

    def __enter__(self) -> TcpHealthProbes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def drain(self) -> list[TcpDestination]:
        """Take every destination out of the kernel map (batch lookup-and-delete)."""
        return [decode_destination(k, v) for k, v in self._dests.lookup_and_delete_batch(_DEST.size)]

    def counters(self) -> dict[str, int]:
        """The programs' loss counters, summed over CPUs (cumulative)."""
        out = {}
        for index, name in enumerate(COUNTER_NAMES):
            raw = self._counters.lookup(struct.pack("<I", index), _U64.size * self._ncpus) or b""
            out[name] = sum(v for (v,) in _U64.iter_unpack(raw))
        return out


def problem(rtt_bounds: tuple[float, ...]) -> str | None:
    """Why TCP health cannot run here, or None: loads and attaches the programs for an instant."""
    try:
        with TcpHealthProbes(16, rtt_bounds):
            return None
    except (BpfError, OSError) as exc:
        return f"TCP health metrics cannot load their tracepoint programs: {exc}"


__all__ = ["TcpDestination", "TcpHealthProbes", "bounds_us", "decode_destination", "problem"]
