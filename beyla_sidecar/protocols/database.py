"""What every database and cache protocol shares: the query-text mode (BEYLA_DB_QUERY_TEXT) and
the client metric, `db.client.operation.duration`, recorded for CLIENT exchanges only (a server in
the pod gets SERVER spans but no metric: the conventions define no database server metric, and
recording both ends would count an operation twice when client and server are in the pod)."""

from __future__ import annotations

from ..bpf.events import ConnTuple
from .base import Message, Protocol, SpanDescription, SpanKind
from .instruments import DB_CLIENT_METRICS, AttributeValue, InstrumentSet, duration

QUERY_TEXT_MODES = ("raw", "sanitized", "off")


class Database(Protocol):
    """A database protocol: `system` is its `db.system.name`; `streams` the operations after which
    the exchange lasts as long as a stream does (pub/sub, replication): no metric for them."""

    system: str
    streams: frozenset[str] = frozenset()

    def __init__(self, query_text: str = "sanitized") -> None:
        if query_text not in QUERY_TEXT_MODES:
            raise ValueError(f"query_text: expected one of {QUERY_TEXT_MODES}, got {query_text!r}")
        self.query_text = query_text

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
