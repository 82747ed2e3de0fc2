"""What a protocol module provides, shared by every protocol module.

A protocol is one module in this package (listed in `all_protocols`): a `Protocol` subclass that can sniff the first
bytes of a connection, make one `Stream` parser per direction, and describe a finished
request/response pair as a span. The tracker only ever sees these types.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import Enum


class SpanKind(Enum):
    SERVER = "SERVER"
    CLIENT = "CLIENT"


@dataclass(slots=True)
class Message:
    """A request or a response, complete (headers and body seen or counted).

    start_ns/end_ns are kernel monotonic timestamps of the first and last byte's
    syscall. `size` counts the body bytes; `header_size` the bytes before it.
    """

    is_request: bool
    start_ns: int
    end_ns: int
    size: int = 0
    header_size: int = 0
    traceparent: str | None = None


@dataclass(slots=True)
class SpanDescription:
    """How the exporter should name and annotate the span of one exchange."""

    name: str
    attributes: dict[str, str | int | float | bool] = field(default_factory=dict)
    error_type: str | None = None  # set => span status ERROR with this `error.type`


@dataclass(slots=True)
class ParseStats:
    """Per-stream counters the pipeline sums into internal metrics."""

    messages: int = 0
    failures: int = 0  # times the stream lost its place and skipped input to resync


class Stream(ABC):
    """Parser of one direction of one connection. Never raises on bad input."""

    def __init__(self) -> None:
        self.stats = ParseStats()

    @abstractmethod
    def feed(self, data: bytes, size: int, ts_ns: int) -> list[Message]:
        """Take the captured prefix `data` of a `size`-byte transfer; return completed messages.

        `size >= len(data)`: bytes beyond the capture were moved by the kernel but not
        copied, and still count towards bodies.
        """

    def expect(self, request: Message) -> None:
        """On a response stream: the request this connection will answer next was parsed.

        Lets a protocol frame responses that depend on the request (HTTP HEAD has no body).
        """

    def close(self, ts_ns: int) -> list[Message]:
        """The connection closed: return a message that only the close completes, if any."""
        return []


class Protocol(ABC):
    """One application protocol (HTTP/1.x, ...)."""

    name: str

    @abstractmethod
    def detect(self, data: bytes, is_request_side: bool) -> bool:
        """Does this first captured chunk start a message of this protocol?

        `is_request_side` is True for what a server receives / a client sends.
        """

    @abstractmethod
    def new_stream(self, is_request_side: bool) -> Stream:
        """A parser for one direction: requests if `is_request_side`, else responses."""

    def path(self, request: Message) -> str | None:
        """The URL path of a request, which route grouping turns into `route`; None: no paths."""
        return None

    @abstractmethod
    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Span name, semantic-convention attributes and error for one exchange.

        `response` is None when the connection closed before a response came; `route` is
        the low-cardinality template of `path(request)` (tracker/routes.py), if any; `tls`
        says the exchange went over TLS (seen as plaintext by the TLS library probes).
        """
