"""Exchanges that repeat a known one: the short way from ring bytes to metrics and spans.

Most records of a connection repeat an earlier one but for their times and byte counts: a
client sends the same few requests, a server answers them with the same heads. When the
protocol says such records parse alike (Protocol.repeats) and the exporters have worked out
what an exchange of that shape records (export/shapes.py), the connection remembers it under
the record's key: its prefixes, head lengths and flags. A later record with the same key is
then neither decoded into an ExchangeRecord nor parsed, described or looked up by shape: the
tracker takes its times and sizes from the ring bytes and hands them to the remembered output
(Tracker.repeat). Anything the short way cannot tell alike (a traceparent, a parent to find,
asyncio Tasks, a possible pipelining) takes the full way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Protocol as Interface

from ..protocols.base import Protocol, Repeats
from .context import TraceContext

if TYPE_CHECKING:
    from .connections import Connection

# Keys a connection remembers before it starts over: a server's Date header changes its
# response prefix every second, so keys of the past are dropped now and then.
KNOWN_PER_CONNECTION = 64
Key = tuple[bytes, int, int, int, int]  # request + response prefixes, request prefix length, head lengths, flags


class Output(Interface):
    """What an exchange of a known shape records: its metrics, and its span if sampled."""

    def emit(self, ctx: TraceContext | None, start_ns: int, end_ns: int, request_size: int,
             response_size: int) -> None: ...


class Known:
    """One key of a connection: how its records parse, and where their exchanges go (`output`,
    set by the pipeline once it has worked out their shape)."""

    __slots__ = ("conn", "key", "protocol", "request_head", "response_head", "request_max", "output")

    def __init__(self, conn: Connection, key: Key, protocol: Protocol, repeats: Repeats) -> None:
        self.conn = conn  # until it is dropped (Tracker._drop breaks the cycle)
        self.key = key
        self.protocol = protocol
        self.request_head, self.response_head, self.request_max = repeats
        self.output: Output | None = None
