"""Exchange -> encoded OTLP span, with kernel time turned into wall time."""

from __future__ import annotations

import time
from typing import NamedTuple

from ..bpf.events import ConnTuple
from ..protocols.base import SpanDescription, SpanKind
from ..tracker.context import TraceContext
from ..tracker.exchange import Exchange
from .otlp_encode import CACHE_LIMIT, KIND_CLIENT, KIND_SERVER, AttributeCache, SpanFrame, key_value, span_name

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


class SpanWriter:
    """The spans of one template on one connection and side: everything but their ids, times
    and sizes encoded once (SpanFrame)."""

    __slots__ = ("_clock", "_get", "_sizes", "_frame")

    def __init__(self, clock: Clock, attributes: AttributeCache, t: SpanTemplate, server: bool,
                 network: bytes) -> None:
        self._clock = clock
        self._get = attributes.get
        self._sizes = t.sizes
        self._frame = SpanFrame(t.name, KIND_SERVER if server else KIND_CLIENT, t.attributes, network + t.error,
                                bool(t.error))

    def encode(self, ctx: TraceContext, start_ns: int, end_ns: int, request_size: int | None,
               response_size: int | None) -> bytes:
        """A span (framed, SpanFrame) from what differs between the exchanges of its template."""
        req_size, resp_size = self._sizes
        sizes = b""
        if req_size is not None and request_size:
            sizes = self._get(req_size, request_size)
        if resp_size is not None and response_size:
            sizes += self._get(resp_size, response_size)
        offset = self._clock.offset
        return self._frame.encode(ctx.trace_id, ctx.span_id, ctx.parent_span_id, ctx.parent_remote,
                                  start_ns + offset, end_ns + offset, sizes)


class SpanEncoder:
    """Encodes exchanges as OTLP spans, with a writer per connection, side and template."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._attributes = AttributeCache()  # body sizes and network attributes
        self._writers: dict[tuple[ConnTuple, bool, SpanTemplate], SpanWriter] = {}

    @staticmethod
    def template(desc: SpanDescription, sizes: tuple[str | None, str | None]) -> SpanTemplate:
        """The encoded part of a description, for every span of its shape."""
        attrs = desc.attributes
        error = key_value(9, "error.type", desc.error_type) if desc.error_type is not None else b""
        return SpanTemplate(span_name(desc.name), b"".join(key_value(9, k, v) for k, v in attrs.items()), sizes,
                            NETWORK_KEYS.intersection(attrs), error)

    def encode(self, ex: Exchange, t: SpanTemplate) -> bytes:
        """The span of `ex` (framed, SpanFrame), whose shape's template is `t`."""
        ctx = ex.context
        assert ctx is not None
        server = ex.kind is _SERVER  # not a dict of kinds: hashing an Enum runs Python code
        request, response = ex.request, ex.response
        writer = self.writer(ex.conn, server, t)
        if response is None:
            return writer.encode(ctx, request.start_ns, request.end_ns, request.size, None)
        return writer.encode(ctx, request.start_ns, response.end_ns, request.size, response.size)

    def writer(self, conn: ConnTuple, server: bool, t: SpanTemplate) -> SpanWriter:
        """The writer of a connection's spans of one side and template: its network attributes
        are the connection's, bar those the protocol sets itself."""
        key = (conn, server, t)
        writer = self._writers.get(key)
        if writer is None:
            if len(self._writers) >= CACHE_LIMIT:
                self._writers.clear()
            get = self._attributes.get
            network = b"".join(get(k, v) for k, v in network_attributes(conn, server).items()
                               if k not in t.own_network)
            writer = self._writers[key] = SpanWriter(self._clock, self._attributes, t, server, network)
        return writer
