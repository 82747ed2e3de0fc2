"""The network half of the sidecar (BEYLA_NETWORK_METRICS=true), on its own thread:

    packet socket + filter (bpf/netflow.py)
      -> DNS answers -> protocols/dns.py -> tracker/names.py (address -> name)
      -> flows, drained every BEYLA_NETWORK_FLUSH_INTERVAL -> tracker/flows.py (attributes)
      -> export/counters.py (beyla.network.flow.bytes / .packets), read by both exporters

Losses are counted, never silent: packets of new flows the full kernel map refused, DNS answers
the socket's queue dropped or that could not be parsed, attribute sets past BEYLA_NETWORK_MAX_FLOWS,
names pushed out of the cache before their time.
"""

from __future__ import annotations

import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from opentelemetry.sdk.resources import Resource

from .bpf.netflow import Packet, PacketFlows
from .config import Config
from .discover.maps import namespace_listening_ports
from .export.counters import Counter, CounterSet, CounterSnapshot
from .export.prometheus import Family
from .protocols.dns import DnsError, parse_packet
from .tracker.flows import ATTRIBUTES, FlowAttributes, pod_side
from .tracker.names import NameCache

FLOW_BYTES = Counter("beyla.network.flow.bytes", "By",
                     "IP bytes of the pod's flows (headers included, link layer excluded), per direction.")
FLOW_PACKETS = Counter("beyla.network.flow.packets", "{packet}", "IP packets of the pod's flows, per direction.")
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


class NetworkMetrics:
    """Owns the packet socket, the name cache and the flow counters."""

    def __init__(self, cfg: Config, resource: Resource) -> None:
        self.cfg = cfg
        self.names = NameCache(cfg.network_dns_cache_size)
        self.counters = CounterSet((FLOW_BYTES, FLOW_PACKETS), ATTRIBUTES, resource, cfg.network_max_flows)
        self.attributes = FlowAttributes(self.names, pod_side(cfg), cfg.network_extra_attributes, listening_ports)
        self.stats = NetworkStats()
        self.kernel: dict[str, int] = {}
        self._flows: PacketFlows | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="network", daemon=True)

    def start(self) -> None:
        """Open the socket and load the filter (NetflowError names the fix), then run."""
        self._flows = PacketFlows(self.cfg.network_flow_map_size)
        self._thread.start()

    def stop(self) -> None:
        """Last flush, then close the socket (the filter goes with it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self._flows is not None:
            self._flows.close()
            self._flows = None

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
        """Answers first (a name must be known before the flows it names), then the flows."""
        pf = self._flows
        if pf is None:
            return
        self.on_packets(pf.read_dns())
        flows = pf.drain()
        now = time.monotonic()
        for flow, key in zip(flows, self.attributes.keys(flows, now)):
            self.counters.add(key, (flow.bytes, flow.packets))
        self.stats.flushes += 1
        self.stats.flows += len(flows)
        self.stats.dns_dropped = pf.socket_stats()
        self.kernel = pf.counters()

    def snapshot(self) -> list[CounterSnapshot]:
        return self.counters.snapshot()

    def families(self) -> list[Family]:
        """The sidecar's own network counters (`beyla_sidecar_network_*`)."""
        k, s = self.kernel, self.stats
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
        )
        return [Family(f"{PREFIX}{name}_total", "counter", help_, [(f"{PREFIX}{name}_total", {}, value)])
                for name, help_, value in rows]
