"""Exchange -> encoded OTLP span, with kernel time turned into wall time."""

from __future__ import annotations

import time
from typing import NamedTuple

from ..bpf.events import ConnTuple
from ..protocols.base import SpanDescription, SpanKind
from ..tracker.exchange import Exchange
from .otlp_encode import (
    CACHE_LIMIT, FLAGS_LOCAL_PARENT, FLAGS_REMOTE_PARENT, KIND_CLIENT, KIND_SERVER, AttributeCache, encode_span,
    span_name,
)

class Clock:
    """CLOCK_MONOTONIC (bpf_ktime_get_ns) to Unix-epoch nanoseconds; re-synced to follow NTP."""

    def __init__(self) -> None:
        self.offset = 0
        self.sync()

    def sync(self) -> None:
        self.offset = time.time_ns() - time.monotonic_ns()  # add it to a monotonic time


def network_attributes(ex: Exchange) -> dict[str, str | int]:
    """Peer and server endpoint attributes; which side is the server depends on the span kind."""
    c = ex.conn
    attrs: dict[str, str | int] = {"network.peer.address": c.remote_addr, "network.peer.port": c.remote_port,
                                   "network.transport": "tcp"}
    if ex.kind is SpanKind.SERVER:
        attrs.update({"server.address": c.local_addr, "server.port": c.local_port,
                      "client.address": c.remote_addr, "client.port": c.remote_port})
    else:
        attrs.update({"server.address": c.remote_addr, "server.port": c.remote_port})
    return attrs


class _Network(NamedTuple):
    """A connection's network attributes for one span kind, encoded."""

    keys: frozenset[str]
    block: bytes  # all of them
    each: tuple[tuple[str, bytes], ...]  # to leave out those the protocol sets itself


class SpanEncoder:
    """Encodes exchanges as OTLP Span messages, caching what repeats across spans."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._attributes = AttributeCache()
        self._names: dict[str, bytes] = {}
        # A connection's network attributes, encoded once per connection and side (server or not).
        self._network: dict[tuple[ConnTuple, bool], _Network] = {}

    def encode(self, ex: Exchange, desc: SpanDescription) -> bytes:
        """The Span message of `ex`; `desc` is its protocol description, shared with the metrics."""
        ctx = ex.context
        offset = self._clock.offset
        server = ex.kind is SpanKind.SERVER  # not a dict of kinds: hashing an Enum runs Python code
        return encode_span(ctx.trace_id, ctx.span_id, ctx.parent_span_id,
                           FLAGS_REMOTE_PARENT if ctx.parent_remote else FLAGS_LOCAL_PARENT,
                           self._name(desc.name), KIND_SERVER if server else KIND_CLIENT,
                           ex.start_ns + offset, ex.end_ns + offset, self._span_attributes(ex, desc, server),
                           desc.error_type is not None)

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) >= CACHE_LIMIT:
                self._names.clear()
            encoded = self._names[name] = span_name(name)
        return encoded

    def _span_attributes(self, ex: Exchange, desc: SpanDescription, server: bool) -> bytes:
        attrs = desc.attributes
        keys, block, each = self._network_attributes(ex, server)
        # The protocol's own value wins (a client's server.address is its Host header).
        network = block if keys.isdisjoint(attrs) else b"".join([kv for key, kv in each if key not in attrs])
        error = self._attributes.get("error.type", desc.error_type) if desc.error_type is not None else b""
        return self._attributes.encode(attrs) + network + error

    def _network_attributes(self, ex: Exchange, server: bool) -> _Network:
        cache_key = (ex.conn, server)
        network = self._network.get(cache_key)
        if network is None:
            if len(self._network) >= CACHE_LIMIT:
                self._network.clear()
            get = self._attributes.get
            each = tuple((k, get(k, v)) for k, v in network_attributes(ex).items())
            network = self._network[cache_key] = _Network(frozenset(k for k, _ in each),
                                                          b"".join(kv for _, kv in each), each)
        return network
