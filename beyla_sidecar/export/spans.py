"""Exchange -> encoded OTLP span, with kernel time turned into wall time."""

from __future__ import annotations

import time
from typing import NamedTuple

from ..bpf.events import ConnTuple
from ..protocols.base import SpanDescription, SpanKind
from ..tracker.context import TraceContext
from ..tracker.exchange import Exchange
from .otlp_encode import (
    CACHE_LIMIT, FLAGS_LOCAL_PARENT, FLAGS_REMOTE_PARENT, KIND_CLIENT, KIND_SERVER, AttributeCache, encode_span,
    key_value, span_name,
)

_SERVER = SpanKind.SERVER  # an Enum member looked up on its class runs Python code (3.11): once here


class Clock:
    """CLOCK_MONOTONIC (bpf_ktime_get_ns) to Unix-epoch nanoseconds; re-synced to follow NTP."""

    def __init__(self) -> None:
        self.offset = 0
        self.sync()

    def sync(self) -> None:
        self.offset = time.time_ns() - time.monotonic_ns()  # add it to a monotonic time


def network_attributes(c: ConnTuple, server: bool) -> dict[str, str | int]:
    """Peer and server endpoint attributes; which side is the server depends on the span kind.
    Unknown ones are left out (a TLS library's memory BIO has no socket; an event was lost)."""
    attrs: dict[str, str | int] = {"network.peer.address": c.remote_addr, "network.peer.port": c.remote_port,
                                   "network.transport": "tcp"}
    if server:
        attrs.update({"server.address": c.local_addr, "server.port": c.local_port,
                      "client.address": c.remote_addr, "client.port": c.remote_port})
    else:
        attrs.update({"server.address": c.remote_addr, "server.port": c.remote_port})
    return {k: v for k, v in attrs.items() if v != "" and v != 0}


# The network attributes' keys, both kinds.
NETWORK_KEYS = frozenset(("network.peer.address", "network.peer.port", "network.transport", "server.address",
                          "server.port", "client.address", "client.port"))


class SpanTemplate(NamedTuple):
    """What the spans of one exchange shape share (export/shapes.py), encoded once."""

    name: bytes  # the Span's name field
    attributes: bytes  # the protocol's attributes
    sizes: tuple[str | None, str | None]  # the protocol's size_attributes
    own_network: frozenset[str]  # network attributes the protocol sets itself (its value wins)
    error: bytes  # the error.type attribute, b"" for none


class SpanEncoder:
    """Encodes exchanges as OTLP Span messages, caching what repeats across spans."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._attributes = AttributeCache()  # body sizes and network attributes
        # A connection's network attributes, encoded per connection, side and what the protocol overrides.
        self._network: dict[tuple[ConnTuple, bool, frozenset[str]], bytes] = {}

    @staticmethod
    def template(desc: SpanDescription, sizes: tuple[str | None, str | None]) -> SpanTemplate:
        """The encoded part of a description, for every span of its shape."""
        attrs = desc.attributes
        error = key_value(9, "error.type", desc.error_type) if desc.error_type is not None else b""
        return SpanTemplate(span_name(desc.name), b"".join(key_value(9, k, v) for k, v in attrs.items()), sizes,
                            NETWORK_KEYS.intersection(attrs), error)

    def encode(self, ex: Exchange, t: SpanTemplate) -> bytes:
        """The Span message of `ex`, whose shape's template is `t`."""
        ctx = ex.context
        assert ctx is not None
        server = ex.kind is _SERVER  # not a dict of kinds: hashing an Enum runs Python code
        request, response = ex.request, ex.response
        if response is None:
            return self.encode_values(ctx, server, request.start_ns, request.end_ns, request.size, None, t,
                                      self.network(ex.conn, server, t.own_network))
        return self.encode_values(ctx, server, request.start_ns, response.end_ns, request.size, response.size, t,
                                  self.network(ex.conn, server, t.own_network))

    def encode_values(self, ctx: TraceContext, server: bool, start_ns: int, end_ns: int, request_size: int | None,
                      response_size: int | None, t: SpanTemplate, network: bytes) -> bytes:
        """The Span message of an exchange of template `t`, from what differs between its exchanges;
        `network`: the encoded network attributes of its connection (network())."""
        offset = self._clock.offset
        attrs = t.attributes
        req_size, resp_size = t.sizes
        if req_size is not None and request_size:
            attrs += self._attributes.get(req_size, request_size)
        if resp_size is not None and response_size:
            attrs += self._attributes.get(resp_size, response_size)
        return encode_span(ctx.trace_id, ctx.span_id, ctx.parent_span_id,
                           FLAGS_REMOTE_PARENT if ctx.parent_remote else FLAGS_LOCAL_PARENT,
                           t.name, KIND_SERVER if server else KIND_CLIENT,
                           start_ns + offset, end_ns + offset, attrs + network + t.error, bool(t.error))

    def network(self, conn: ConnTuple, server: bool, own: frozenset[str]) -> bytes:
        """The encoded network attributes of a connection's spans of one side, bar those the
        protocol sets itself (`own`)."""
        block = self._network.get((conn, server, own))
        if block is None:
            if len(self._network) >= CACHE_LIMIT:
                self._network.clear()
            get = self._attributes.get
            block = self._network[(conn, server, own)] = b"".join(
                get(k, v) for k, v in network_attributes(conn, server).items() if k not in own)
        return block
