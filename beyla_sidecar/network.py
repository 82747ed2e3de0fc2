"""The network half of the sidecar (BEYLA_NETWORK_METRICS=true), on its own thread:

    packet socket + filter (bpf/netflow.py)
      -> DNS answers -> protocols/dns.py -> tracker/names.py (address -> name)
         (BEYLA_NETWORK_REVERSE_DNS: unnamed destinations -> tracker/reverse_dns.py, its own thread)
      -> flows, drained every BEYLA_NETWORK_FLUSH_INTERVAL -> tracker/flows.py (attributes)
      -> export/counters.py (beyla.network.flow.bytes / .packets), read by both exporters
    TCP tracepoints (bpf/tcphealth.py), drained with the flows -> tracker/tcphealth.py
      -> export/counters.py (beyla.network.tcp.failed_connections / .resets / .retransmits / .rtt)

Losses are counted, never silent: packets of new flows and TCP events of new destinations the
full kernel maps refused, DNS answers the socket's queue dropped or that could not be parsed,
attribute sets past BEYLA_NETWORK_MAX_FLOWS, names pushed out of the cache before their time,
reverse lookups that found the queue full.
If the TCP tracepoints cannot load, one error says why and the flow metrics run on without them.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from opentelemetry.sdk.resources import Resource

from .bpf.libbpf import BpfError
from .bpf.netflow import Packet, PacketFlows
from .bpf.tcphealth import TcpHealthProbes
from .config import Config
from .discover.maps import namespace_listening_ports
from .export.counters import Counter, CounterSet, CounterSnapshot, HistogramSet
from .export.metrics import ServiceSnapshot
from .export.prometheus import Family
from .protocols.dns import DnsError, parse_packet
from .protocols.instruments import Instrument
from .tracker.flows import ATTRIBUTES, FlowAttributes, pod_side
from .tracker.names import NameCache
from .tracker.reverse_dns import ReverseResolver, ReverseStats
from .tracker.tcphealth import TCP_ATTRIBUTES, TcpAttributes

FLOW_BYTES = Counter("beyla.network.flow.bytes", "By",
                     "IP bytes of the pod's flows (headers included, link layer excluded), per direction.")
FLOW_PACKETS = Counter("beyla.network.flow.packets", "{packet}", "IP packets of the pod's flows, per direction.")
_FAILED = ("beyla.network.tcp.failed_connections", "{connection}",
           "TCP connection attempts of the pod that failed, by reason: refused (a reset or an ICMP port "
           "unreachable answered the SYN), timeout (no answer until the SYN retries ran out or the "
           "application gave up), unreachable (another ICMP error).")
_RESETS = ("beyla.network.tcp.resets", "{reset}", "TCP resets the pod sent and received, per destination.")
# In the order of TcpDestination's counts (bpf/tcphealth.py).
TCP_COUNTERS = (
    *(Counter(*_FAILED, (("reason", r),)) for r in ("refused", "timeout", "unreachable")),
    *(Counter(*_RESETS, (("direction", d),)) for d in ("sent", "received")),
    Counter("beyla.network.tcp.retransmits", "{segment}", "TCP segments the pod retransmitted, per destination."),
)
# Seconds, 100 us (a veth or a node's own network) to 10 s (a saturated or distant link).
RTT_BOUNDS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
TCP_RTT = Instrument("beyla.network.tcp.rtt", "s", "Smoothed round-trip time of the pod's TCP connections, "
                     "sampled once per connection at its close.", RTT_BOUNDS)
PREFIX = "beyla_sidecar_network_"
UDP_UNCONNECTED = "07"

log = structlog.get_logger()


def bound_udp_ports() -> set[int]:
    """UDP ports bound but not connected in this network namespace (servers: DNS, syslog...)."""
    ports: set[int] = set()
    for table in ("udp", "udp6"):
        try:
            rows = Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 3 and cols[3] == UDP_UNCONNECTED and cols[2].endswith(":0000"):
                ports.add(int(cols[1].rpartition(":")[2], 16))
    return ports


def listening_ports() -> set[int]:
    return namespace_listening_ports() | bound_udp_ports()


@dataclass(slots=True)
class NetworkStats:
    flushes: int = 0
    flows: int = 0              # kernel flow entries drained
    dns_answers: int = 0        # answers that named at least one address
    dns_unparsed: int = 0       # packets from port 53 that were not a readable answer
    dns_dropped: int = 0        # answers the socket's queue dropped (PACKET_STATISTICS)


class TcpHealth:
    """The TCP tracepoints' destinations as counters and an RTT histogram."""

    def __init__(self, cfg: Config, resource: Resource, attributes: TcpAttributes) -> None:
        self.cfg = cfg
        self.attributes = attributes
        self.counters = CounterSet(TCP_COUNTERS, TCP_ATTRIBUTES, resource, cfg.network_max_flows)
        self.rtt = HistogramSet(TCP_RTT, TCP_ATTRIBUTES, resource, cfg.network_max_flows)
        self.kernel: dict[str, int] = {}
        self._probes: TcpHealthProbes | None = None

    def start(self, icmp_failures_fd: int) -> None:
        """Load and attach the tracepoint programs (BpfError says why they cannot); they read the
        ICMP errors the packet filter notes in the map at icmp_failures_fd."""
        self._probes = TcpHealthProbes(self.cfg.network_tcp_map_size, RTT_BOUNDS, icmp_failures_fd)

    def stop(self) -> None:
        if self._probes is not None:
            self._probes.close()
            self._probes = None

    @property
    def overflows(self) -> int:
        return self.counters.overflows + self.rtt.overflows

    def flush(self, now: float) -> int:
        """Drain the kernel's destinations into the series; returns how many there were."""
        probes = self._probes
        if probes is None:
            return 0
        dests = probes.drain()
        for d, key in zip(dests, self.attributes.keys(dests, now)):
            self.counters.add(key, (d.refused, d.timeout, d.unreachable, d.resets_sent, d.resets_received,
                                    d.retransmits))
            if d.rtt_count:
                self.rtt.merge(key, d.rtt_buckets, d.rtt_sum_us / 1e6, d.rtt_min_us / 1e6, d.rtt_max_us / 1e6)
        self.kernel = probes.counters()
        return len(dests)


class NetworkMetrics:
    """Owns the packet socket, the name cache and the flow counters."""

    def __init__(self, cfg: Config, resource: Resource) -> None:
        self.cfg = cfg
        self.names = NameCache(cfg.network_dns_cache_size)
        self.reverse = ReverseResolver(self.names, cfg.network_reverse_dns_rate) if cfg.network_reverse_dns else None
        self.counters = CounterSet((FLOW_BYTES, FLOW_PACKETS), ATTRIBUTES, resource, cfg.network_max_flows)
        self.attributes = FlowAttributes(self.names, pod_side(cfg), cfg.network_extra_attributes, listening_ports,
                                         self.reverse.want if self.reverse else None)
        self.tcp = TcpHealth(cfg, resource, TcpAttributes(self.names, pod_side(cfg), namespace_listening_ports))
        self.stats = NetworkStats()
        self.kernel: dict[str, int] = {}
        self._flows: PacketFlows | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="network", daemon=True)

    def start(self) -> None:
        """Open the socket and load the filter (NetflowError names the fix), then the TCP
        tracepoints (without them the flows run on), then run."""
        self._flows = PacketFlows(self.cfg.network_flow_map_size)
        try:
            self.tcp.start(self._flows.icmp_failures_fd)
        except BpfError as exc:
            log.error("TCP health metrics disabled", reason=str(exc))
        if self.reverse is not None:
            self.reverse.start()
        self._thread.start()

    def stop(self) -> None:
        """Last flush, then close the socket (the filter goes with it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._flows is not None:
            self._flows.close()
            self._flows = None
        self.tcp.stop()
        if self.reverse is not None:
            self.reverse.stop()

    def _loop(self) -> None:
        assert self._flows is not None
        interval = self.cfg.network_flush_interval
        next_flush = time.monotonic() + interval
        while not self._stop.is_set():
            timeout = max(0.0, min(next_flush - time.monotonic(), 0.25))  # 0.25: see a stop soon
            readable, _, _ = select.select([self._flows], [], [], timeout)
            if readable:
                self.on_packets(self._flows.read_dns())
            if time.monotonic() >= next_flush:
                self.flush()
                next_flush += interval
        self.flush()

    def on_packets(self, packets: list[Packet]) -> None:
        now = time.monotonic()
        for packet in packets:
            try:
                answer = parse_packet(packet.data, packet.ethertype)
            except (DnsError, IndexError, UnicodeError, ValueError):
                self.stats.dns_unparsed += 1
                continue
            if answer is None:
                continue
            self.stats.dns_answers += 1
            for address, ttl in answer.addresses:
                self.names.learn(answer.question, address, ttl, now)

    def flush(self) -> None:
        """Answers and reverse lookups first (a name must be known before the flows it names),
        then the flows."""
        pf = self._flows
        if pf is None:
            return
        self.on_packets(pf.read_dns())
        flows = pf.drain()
        now = time.monotonic()
        if self.reverse is not None:
            self.reverse.collect(now)
        for flow, key in zip(flows, self.attributes.keys(flows, now)):
            self.counters.add(key, (flow.bytes, flow.packets))
        self.tcp.flush(now)
        self.stats.flushes += 1
        self.stats.flows += len(flows)
        self.stats.dns_dropped = pf.socket_stats()
        self.kernel = pf.counters()

    def snapshot(self) -> list[CounterSnapshot]:
        return [*self.counters.snapshot(), *self.tcp.counters.snapshot()]

    def histograms(self) -> list[ServiceSnapshot]:
        return [self.tcp.rtt.snapshot()]

    def families(self) -> list[Family]:
        """The sidecar's own network counters (`beyla_sidecar_network_*`)."""
        k, s, tcp = self.kernel, self.stats, self.tcp.kernel
        rev = self.reverse.stats if self.reverse is not None else ReverseStats()
        rows = (
            ("flow_map_full_packets", "Packets of new flows the full kernel flow map refused "
             "(BEYLA_NETWORK_FLOW_MAP_SIZE): not in the flow metrics.", k.get("map_full_packets", 0)),
            ("flow_map_full_bytes", "Bytes of those packets.", k.get("map_full_bytes", 0)),
            ("flow_overflows", "Flow additions that went to the otel.metric.overflow series "
             "(BEYLA_NETWORK_MAX_FLOWS reached).", self.counters.overflows),
            ("malformed_packets", "IP packets whose headers the filter could not read.", k.get("malformed", 0)),
            ("dns_answers", "DNS answers that named addresses.", s.dns_answers),
            ("dns_unparsed", "Packets from port 53 that were not a readable DNS answer (e.g. a TCP "
             "answer split over segments).", s.dns_unparsed),
            ("dns_dropped", "DNS answers dropped because the packet socket's queue was full.", s.dns_dropped),
            ("dns_names_evicted", "Names pushed out of the cache before their time "
             "(BEYLA_NETWORK_DNS_CACHE_SIZE).", self.names.evictions),
            ("reverse_dns_lookups", "Reverse DNS lookups done (BEYLA_NETWORK_REVERSE_DNS).", rev.lookups),
            ("reverse_dns_failures", "Reverse DNS lookups that gave no name (no PTR record, resolver "
             "error or timeout); not looked up again for 2 minutes.", rev.failures),
            ("reverse_dns_dropped", "Destinations not queued for a reverse lookup because the queue was "
             "full (BEYLA_NETWORK_REVERSE_DNS_RATE); asked for again at a later flush.", rev.dropped),
            ("tcp_map_full", "TCP health events of new destinations the full kernel map refused "
             "(BEYLA_NETWORK_TCP_MAP_SIZE): not in the TCP metrics.", tcp.get("map_full", 0)),
            ("tcp_unreadable", "TCP resets sent whose segment's headers the kernel could not read: not in "
             "the TCP metrics.", tcp.get("unreadable", 0)),
            ("tcp_overflows", "TCP destination additions that went to the otel.metric.overflow series "
             "(BEYLA_NETWORK_MAX_FLOWS reached).", self.tcp.overflows),
        )
        return [Family(f"{PREFIX}{name}_total", "counter", help_, [(f"{PREFIX}{name}_total", {}, value)])
                for name, help_, value in rows]
