"""Address -> name, learnt from the DNS answers the pod's own processes received and, with
BEYLA_NETWORK_REVERSE_DNS, from reverse (PTR) lookups (tracker/reverse_dns.py).

Bounded (least recently learnt goes first) and timed: a name is kept for its answer's TTL,
but at least MIN_KEEP_SECONDS, because connections outlive TTLs (a client resolves once and
keeps its connection for minutes; Kubernetes answers with TTL 30 s, many local resolvers 0).
An address seen in answers for two names keeps the latest. A name from an answer always wins
over a reverse one (it is the name the pod itself asked for): it replaces a reverse name, and a
reverse lookup never replaces it while it lives. A failed reverse lookup is kept too, without a
name, so that the address is not looked up again until it expires.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

MIN_KEEP_SECONDS = 300.0
CLUSTER_SUFFIX = ".svc.cluster.local"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class NameCache:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        # addr -> (name or None for a failed reverse lookup, expiry, from a DNS answer)
        self._names: OrderedDict[Address, tuple[str | None, float, bool]] = OrderedDict()
        self.evictions = 0  # entries pushed out by the size bound before they expired

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, name: str, address: Address, ttl: int, now: float) -> None:
        """A name from a DNS answer the pod received."""
        self._put(address, (name, now + max(float(ttl), MIN_KEEP_SECONDS), True), now)

    def learn_reverse(self, address: Address, name: str | None, keep: float, now: float) -> None:
        """A reverse lookup's name (None: it failed), kept `keep` seconds, unless a DNS answer
        named the address meanwhile."""
        entry = self._live(address, now)
        if entry is None or not entry[2]:
            self._put(address, (name, now + keep, False), now)

    def _put(self, address: Address, entry: tuple[str | None, float, bool], now: float) -> None:
        self._names[address] = entry
        self._names.move_to_end(address)
        while len(self._names) > self.max_size:
            _, (_, expiry, _) = self._names.popitem(last=False)
            if expiry > now:
                self.evictions += 1

    def _live(self, address: Address, now: float) -> tuple[str | None, float, bool] | None:
        entry = self._names.get(address)
        if entry is not None and entry[1] <= now:
            del self._names[address]
            return None
        return entry

    def name(self, address: Address, now: float) -> str | None:
        entry = self._live(address, now)
        return None if entry is None else entry[0]

    def known(self, address: Address, now: float) -> bool:
        """Whether the address has a live entry: a name, or a failed reverse lookup."""
        return self._live(address, now) is not None


def kubernetes_service(name: str) -> tuple[str, str] | None:
    """(service, namespace) of `<svc>.<ns>.svc.cluster.local` (also `<pod>.<svc>.<ns>...`)."""
    if not name.endswith(CLUSTER_SUFFIX):
        return None
    parts = name[:-len(CLUSTER_SUFFIX)].split(".")
    if len(parts) < 2 or not all(parts):
        return None
    return parts[-2], parts[-1]
