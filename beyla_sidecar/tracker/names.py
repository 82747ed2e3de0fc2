"""Address -> name, learnt from the DNS answers the pod's own processes received.

Bounded (least recently answered goes first) and timed: a name is kept for its answer's TTL,
but at least MIN_KEEP_SECONDS, because connections outlive TTLs (a client resolves once and
keeps its connection for minutes; Kubernetes answers with TTL 30 s, many local resolvers 0).
An address seen in answers for two names keeps the latest.
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
        self._names: OrderedDict[Address, tuple[str, float]] = OrderedDict()  # addr -> (name, expiry)
        self.evictions = 0  # names pushed out by the size bound before they expired

    def __len__(self) -> int:
        return len(self._names)

    def learn(self, name: str, address: Address, ttl: int, now: float) -> None:
        self._names[address] = (name, now + max(float(ttl), MIN_KEEP_SECONDS))
        self._names.move_to_end(address)
        while len(self._names) > self.max_size:
            _, (_, expiry) = self._names.popitem(last=False)
            if expiry > now:
                self.evictions += 1

    def name(self, address: Address, now: float) -> str | None:
        entry = self._names.get(address)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._names[address]
            return None
        return entry[0]


def kubernetes_service(name: str) -> tuple[str, str] | None:
    """(service, namespace) of `<svc>.<ns>.svc.cluster.local` (also `<pod>.<svc>.<ns>...`)."""
    if not name.endswith(CLUSTER_SUFFIX):
        return None
    parts = name[:-len(CLUSTER_SUFFIX)].split(".")
    if len(parts) < 2 or not all(parts):
        return None
    return parts[-2], parts[-1]
