"""Exchange -> OpenTelemetry span (SDK ReadableSpan), with kernel time turned into wall time."""

from __future__ import annotations

import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .. import __version__
from ..protocols.base import SpanDescription
from ..protocols.base import SpanKind as ProtoKind
from ..tracker.exchange import Exchange

_KINDS = {ProtoKind.SERVER: SpanKind.SERVER, ProtoKind.CLIENT: SpanKind.CLIENT}
_SCOPE = InstrumentationScope("beyla-sidecar", __version__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


class Clock:
    """CLOCK_MONOTONIC (bpf_ktime_get_ns) to Unix-epoch nanoseconds; re-synced to follow NTP."""

    def __init__(self) -> None:
        self.offset = 0
        self.sync()

    def sync(self) -> None:
        self.offset = time.time_ns() - time.monotonic_ns()

    def wall(self, mono_ns: int) -> int:
        return mono_ns + self.offset


def network_attributes(ex: Exchange) -> dict[str, str | int]:
    """Peer and server endpoint attributes; which side is the server depends on the span kind."""
    c = ex.conn
    attrs: dict[str, str | int] = {"network.peer.address": c.remote_addr, "network.peer.port": c.remote_port,
                                   "network.transport": "tcp"}
    if ex.kind is ProtoKind.SERVER:
        attrs.update({"server.address": c.local_addr, "server.port": c.local_port,
                      "client.address": c.remote_addr, "client.port": c.remote_port})
    else:
        attrs.update({"server.address": c.remote_addr, "server.port": c.remote_port})
    return attrs


def to_span(ex: Exchange, desc: SpanDescription, resource: Resource, clock: Clock) -> ReadableSpan:
    """`desc` is the exchange's protocol description, shared with the metrics."""
    ctx = ex.context
    flags = _SAMPLED if ctx.sampled else _NOT_SAMPLED
    attrs = {**network_attributes(ex), **desc.attributes}  # the protocol's server.address (Host) wins
    status = Status(StatusCode.UNSET)
    if desc.error_type is not None:
        attrs["error.type"] = desc.error_type
        status = Status(StatusCode.ERROR)
    parent = (SpanContext(ctx.trace_id, ctx.parent_span_id, is_remote=ctx.parent_remote, trace_flags=flags)
              if ctx.parent_span_id else None)
    return ReadableSpan(
        name=desc.name,
        context=SpanContext(ctx.trace_id, ctx.span_id, is_remote=False, trace_flags=flags),
        parent=parent,
        resource=resource,
        attributes=attrs,
        kind=_KINDS[ex.kind],
        status=status,
        start_time=clock.wall(ex.start_ns),
        end_time=clock.wall(ex.end_ns),
        instrumentation_scope=_SCOPE,
    )
