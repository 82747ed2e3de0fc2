"""What every database and cache protocol shares: the query-text mode (BEYLA_DB_QUERY_TEXT) and
the client metric, `db.client.operation.duration`, recorded for CLIENT exchanges only (a server in
the pod gets SERVER spans but no metric: the conventions define no database server metric, and
recording both ends would count an operation twice when client and server are in the pod)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Generic, TypeVar

from ..bpf.events import ConnTuple, ExchangeRecord
from .base import Message, Protocol, SpanDescription, SpanKind
from .instruments import DB_CLIENT_METRICS, AttributeValue, InstrumentSet, duration

QUERY_TEXT_MODES = ("raw", "sanitized", "off")
PARSE_CACHE = 4096  # distinct prefixes remembered per cache before it starts over
_MISSING = object()
F = TypeVar("F")  # what a protocol reads of a request prefix


class Database(Protocol, Generic[F]):
    """A database protocol: `system` is its `db.system.name`; `streams` the operations after which
    the exchange lasts as long as a stream does (pub/sub, replication): no metric for them.

    Request prefixes repeat (clients send the same statements and commands), so what
    `request_fields` reads of one is remembered, keyed by the prefix (and the request's exact size
    when the prefix is cut): most exchanges parse their request with one dict lookup."""

    system: str
    streams: frozenset[str] = frozenset()

    def __init__(self, query_text: str = "sanitized") -> None:
        if query_text not in QUERY_TEXT_MODES:
            raise ValueError(f"query_text: expected one of {QUERY_TEXT_MODES}, got {query_text!r}")
        self.query_text = query_text
        self._requests: dict[object, F | None] = {}

    @abstractmethod
    def request_fields(self, b: bytes, total: int) -> F | None:
        """What the request prefix `b` of a `total`-byte request says; None when it is not this protocol."""

    def _request(self, rec: ExchangeRecord) -> F | None:
        b, total = rec.request, rec.req_bytes
        return self._remembered(b if len(b) >= total else (b, total), b, total)

    def _remembered(self, key: object, b: bytes, total: int) -> F | None:
        """request_fields(b, total), remembered under `key`; the cache starts over when full."""
        cache = self._requests
        fields = cache.get(key, _MISSING)
        if fields is _MISSING:
            if len(cache) >= PARSE_CACHE:
                cache.clear()
            fields = cache[key] = self.request_fields(b, total)
        return fields  # type: ignore[return-value]

    def instruments(self, kind: SpanKind) -> InstrumentSet | None:
        return DB_CLIENT_METRICS if kind is SpanKind.CLIENT else None

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]] | None:
        a = desc.attributes
        operation = a.get("db.operation.name")
        if kind is not SpanKind.CLIENT or str(operation).removeprefix("BATCH ") in self.streams:
            return None
        return DB_CLIENT_METRICS, (self.system, operation, a.get("db.namespace"), desc.error_type,
                                   conn.remote_addr or None, conn.remote_port or None,
                                   a.get("db.response.status_code"))

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        return (duration(request, response),)


def error_attributes(error: str, attrs: dict[str, str | int | float | bool]) -> str | None:
    """The `error.type` of a response whose error code is `error` ("": none; `_OTHER`: an error
    without a code), which also becomes `db.response.status_code` when it is a code."""
    if not error:
        return None
    if error != "_OTHER":
        attrs["db.response.status_code"] = error
    return error
