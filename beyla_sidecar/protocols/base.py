"""What a protocol module provides, shared by every protocol module.

A protocol is one module in this package (listed in `all_protocols`): a `Protocol` subclass that
recognises a connection from its first exchange record (the first bytes of a request and of
its response, with exact sizes and times), parses each record into a request and a response,
describes a finished pair as a span, and says which metric instruments it records, with which
values and attributes (protocols/instruments.py). The tracker and the exporters only ever see
these types.

Descriptions are computed once per shape: what describe() reads of a message (HTTP's method,
path, Host, status...) is its `shape`, and exchanges of equal shapes, kind and TLS share one
description, span template and metric series (export/shapes.py). So describe() and
metric_attributes() must not read times or sizes; those are per exchange (`size_attributes`,
metric_values()).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from ..bpf.events import ConnTuple, ExchangeRecord
from .instruments import AttributeValue, InstrumentSet


class SpanKind(Enum):
    SERVER = "SERVER"
    CLIENT = "CLIENT"


@dataclass(slots=True)
class Message:
    """A request or a response, complete (headers and body seen or counted).

    start_ns/end_ns are kernel monotonic timestamps of the first and last byte's
    syscall; a request never answered ends when its exchange did (its connection closed), so
    that an incomplete span lasts as long as the wait. `size` counts the body bytes (None:
    unknown); `header_size` the bytes before it.
    """

    is_request: bool
    start_ns: int
    end_ns: int
    size: int | None = 0
    header_size: int = 0
    traceparent: str | None = None

    @property
    def shape(self) -> Hashable:
        """What describe() reads of this message, equal for messages described alike; None:
        unknown (described one by one). A protocol's message class gives it as a field."""
        return None


@dataclass(slots=True)
class SpanDescription:
    """How the exporter should name and annotate the span of one exchange."""

    name: str
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)
    error_type: str | None = None  # set => span status ERROR with this `error.type`


class Parsed(NamedTuple):
    """A protocol's reading of one exchange record."""

    request: Message
    response: Message | None  # None: the connection closed (or went idle) before an answer
    ends_protocol: bool = False  # the connection stops speaking this protocol (upgrade, tunnel)
    # The protocol the connection switched to, when this exchange only switched (an h2c upgrade,
    # whose answer comes in that protocol): no span; the connection counts as that protocol's.
    upgrade: str | None = None
    # The record holds several requests sent back to back before their responses (pipelining):
    # one span cannot describe them (whose sizes, whose end?), so none is made; it is counted.
    pipelined: bool = False
    # The exchange is the protocol's own housekeeping (a startup or authentication handshake, TLS
    # negotiation, a goodbye): no span, no metric, not a failure.
    housekeeping: bool = False


class Repeats(NamedTuple):
    """Protocol.repeats: every record of the connection with the same prefixes, head lengths,
    flags and a response parses as this one did, but for its times (the record's) and its sizes
    (its byte counts less these head lengths). Such records skip parsing (tracker/known.py)."""

    request_head: int
    response_head: int
    request_max: int  # a request of more body bytes than this parses otherwise (HTTP: pipelining)


class Protocol(ABC):
    """One application protocol (HTTP/1.x, ...)."""

    name: str
    # The span attributes holding the request's and the response's `size`, set when non-zero by
    # the span encoder (sizes differ from one exchange to the next; a description does not).
    size_attributes: tuple[str | None, str | None] = (None, None)
    # Per-connection state forgotten to stay within its bounds (prepared statements, pending
    # correlation ids, ...): each dropped item once. Exported as a self-metric by protocol.
    state_drops: int = 0

    @abstractmethod
    def detect(self, request: bytes, response: bytes) -> bool:
        """Do the first exchange's prefixes (what a server receives / a client sends, and the
        answer, possibly empty) speak this protocol?"""

    @abstractmethod
    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        """Request and response of one exchange record; None when the bytes do not parse
        (the tracker counts it). Never raises on bad input."""

    def repeats(self, rec: ExchangeRecord, parsed: Parsed) -> Repeats | None:
        """Do records like `rec` parse alike (see Repeats)? Only for a protocol whose
        metric_values() of an exchange with a response are its duration, request size and
        response size, in that order (or a prefix of them). Default: None, each record is parsed."""
        return None

    def finished(self, rec: ExchangeRecord) -> bool:
        """May an exchange whose response went quiet be ended now (the idle sweep)? False when
        more of the response is known to be due (a declared length not reached): it then ends
        with its next byte's quiet, the connection's next request or its close. Default: yes."""
        return True

    def closed(self, sock_id: int) -> None:
        """Connection `sock_id`, bound to this protocol, is gone (closed, evicted, or its id reused
        by a new connection): forget what was kept for it (Redis: its SELECTed database).
        Default: nothing is kept per connection."""

    def path(self, request: Message) -> str | None:
        """The URL path of a request, which route grouping turns into `route`; None: no paths."""
        return None

    @abstractmethod
    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Span name, semantic-convention attributes and error for exchanges of this shape.

        Reads only what the messages' `shape` stands for (never times or sizes); `response` is
        None when the connection closed before a response came; `route` is the low-cardinality
        template of `path(request)` (tracker/routes.py), if any; `tls` says the exchange went
        over TLS (seen as plaintext by the TLS library probes).
        """

    def instruments(self, kind: SpanKind) -> InstrumentSet | None:
        """The histograms exchanges of `kind` record; None: no metrics (the default)."""
        return None

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]] | None:
        """Which of `instruments(kind)` exchanges of this description record, with the attribute
        values in the order the set names them (None for an absent one); None: nothing.

        `desc` is the description their spans get, `route` as for describe, `extra` the attributes
        the user opted in to (BEYLA_METRICS_EXTRA_ATTRIBUTES). Computed once per shape and connection.
        """
        return None

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        """One exchange's value for each instrument of its set (None: none). Runs for every
        exchange: keep it cheap."""
        return ()
