"""Reverse DNS (PTR) names for destinations no DNS answer of the pod named
(BEYLA_NETWORK_REVERSE_DNS=true), looked up off the network thread's path.

At each flush the network thread asks (`want`) for the destinations its flows have no name for;
one background thread looks them up one at a time, paced at BEYLA_NETWORK_REVERSE_DNS_RATE
lookups per second, from a bounded queue (QUEUE_SECONDS of lookups at that rate). An address
asked for while the queue is full is dropped, counted, and asked for again at a later flush if
the pod still talks to it. Answers come back through a deque and go into the name cache at the
next flush (`collect`): the cache stays the network thread's alone, and a flush never waits
for a lookup (a flow whose name is pending goes out without one). A name is kept
NAME_KEEP_SECONDS, a failure (no PTR record, a timeout) FAILURE_KEEP_SECONDS; a name from a
DNS answer of the pod always wins (tracker/names.py).

The lookup is socket.gethostbyaddr: glibc's resolver, configured by /etc/resolv.conf (and
/etc/hosts, /etc/nsswitch.conf) of the sidecar's mount namespace. In Kubernetes the kubelet gives
every container of a pod the same resolv.conf (the pod's dnsPolicy and dnsConfig), so the
lookups go to the pod's own resolver, from the pod's network namespace: they show in the flow
metrics as the pod's traffic to its DNS server.

Not looked up: addresses with a live cache entry (named, or failed recently), addresses already
queued, and addresses no PTR record is expected for (loopback, link-local, multicast,
unspecified, reserved).
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .names import Address, NameCache

QUEUE_SECONDS = 10.0         # lookups waiting at most: this many seconds' worth at the rate
NAME_KEEP_SECONDS = 300.0    # PTR answers carry no TTL through gethostbyaddr: look again after this
FAILURE_KEEP_SECONDS = 120.0
STOP_WAIT_SECONDS = 1.0      # a lookup in flight cannot be interrupted; the thread is a daemon

Lookup = Callable[[str], str]


def gethostbyaddr(address: str) -> str:
    return socket.gethostbyaddr(address)[0]


def worth_looking_up(address: Address) -> bool:
    return not (address.is_loopback or address.is_link_local or address.is_multicast
                or address.is_unspecified or address.is_reserved)


@dataclass(slots=True)
class ReverseStats:
    lookups: int = 0    # lookups done (by the lookup thread)
    failures: int = 0   # of which gave no name
    dropped: int = 0    # addresses not queued: the queue was full (by the network thread)


class ReverseResolver:
    """Looks up the addresses `want` is given, at most `rate` per second, into `names`."""

    def __init__(self, names: NameCache, rate: float, lookup: Lookup = gethostbyaddr) -> None:
        self.names = names
        self.interval = 1.0 / rate
        self.stats = ReverseStats()
        self._lookup = lookup
        self._queue: queue.Queue[Address | None] = queue.Queue(max(1, int(rate * QUEUE_SECONDS)))
        self._done: deque[tuple[Address, str | None]] = deque()
        self._pending: set[Address] = set()  # queued or in flight
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="reverse-dns", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)  # wakes a thread waiting on an empty queue
        except queue.Full:
            pass  # then it is not waiting on the queue: it sees the event
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_SECONDS)

    def want(self, address: Address, now: float) -> None:
        """Queue a lookup for an address the flows found no name for (network thread)."""
        if address in self._pending or self.names.known(address, now) or not worth_looking_up(address):
            return
        try:
            self._queue.put_nowait(address)
        except queue.Full:
            self.stats.dropped += 1
            return
        self._pending.add(address)

    def collect(self, now: float) -> int:
        """Put the lookups done since the last call into the cache (network thread)."""
        count = 0
        while self._done:
            address, name = self._done.popleft()
            self._pending.discard(address)
            self.names.learn_reverse(address, name, NAME_KEEP_SECONDS if name else FAILURE_KEEP_SECONDS, now)
            count += 1
        return count

    def _serve(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            address = self._queue.get()
            if address is None:
                return
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at = max(next_at, time.monotonic()) + self.interval
            self._done.append((address, self.resolve(address)))

    def resolve(self, address: Address) -> str | None:
        """The address's name, or None (counted) if the resolver has none or fails."""
        self.stats.lookups += 1
        try:
            name = self._lookup(str(address)).rstrip(".").lower()
        except (OSError, UnicodeError):  # herror (no record), gaierror, timeouts
            name = ""
        if not name or name == str(address):
            self.stats.failures += 1
            return None
        return name
