"""gRPC: the HTTP/2 streams whose request content-type is application/grpc (protocols/http2.py parses
them and hands them here as `HTTP2.grpc`; exchange records never match `detect`).

One span per call, unary or streaming, from the request's HEADERS to the response's END_STREAM.
Spans follow the OpenTelemetry gRPC conventions as Beyla emits them: name `package.Service/Method`
(the :path without its slash), `rpc.system=grpc`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code` (int), `network.protocol.name=http`, `network.protocol.version=2`,
`server.address` from :authority on client spans (`server.*`/`network.*` otherwise come from the
connection, export/spans.py).

Status: the `grpc-status` of the trailers (or of a trailers-only response). Without one, gRPC's own
rules: a reset stream maps its RST_STREAM code (CANCEL -> CANCELLED, REFUSED_STREAM -> UNAVAILABLE,
ENHANCE_YOUR_CALM -> RESOURCE_EXHAUSTED, INADEQUATE_SECURITY -> PERMISSION_DENIED, others ->
INTERNAL); a response without grpc-status maps its HTTP status (400 -> INTERNAL, 401 ->
UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> UNIMPLEMENTED, 429/502/503/504 -> UNAVAILABLE,
others, 200 included, -> UNKNOWN). Errors, per the conventions: on a server span only UNKNOWN,
DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and DATA_LOSS; on a client span every code
but OK; `error.type` is the code's name (`NOT_FOUND`; the number for a code gRPC does not define).

Metrics: `rpc.server.call.duration` and `rpc.client.call.duration` (seconds; Prometheus
`rpc_server_call_duration_seconds`, `rpc_client_call_duration_seconds`) with rpc.system,
rpc.service, rpc.method, rpc.grpc.status_code, error.type, and server.address/server.port on the
client. The newer conventions' rename (rpc.system.name, rpc.response.status_code as text) is not
followed yet: dashboards and Beyla use the names above. Message sizes are not recorded (the
conventions dropped them); gRPC-Web is not gRPC here (plain HTTP/2).
"""

from __future__ import annotations

from ..bpf.events import ConnTuple, ExchangeRecord
from .base import Message, Parsed, Protocol, SpanDescription, SpanKind
from .http1 import _host_only
from .instruments import DURATION_BOUNDS, AttributeValue, Instrument, InstrumentSet, duration

CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
OK, CANCELLED, UNKNOWN = 0, 1, 2
INTERNAL = 13
SERVER_ERRORS = frozenset((2, 4, 12, 13, 14, 15))
# gRPC's PROTOCOL-HTTP2 mapping of RST_STREAM codes (by HTTP/2 error code) and of HTTP statuses
_RESET_STATUS = {7: 14, 8: CANCELLED, 11: 8, 12: 7}
_HTTP_STATUS = {400: INTERNAL, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}

SERVER_METRICS = InstrumentSet(
    (Instrument("rpc.server.call.duration", "s", "Measures the duration of an incoming Remote Procedure Call (RPC).",
                DURATION_BOUNDS),),
    ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "error.type"))
CLIENT_METRICS = InstrumentSet(
    (Instrument("rpc.client.call.duration", "s", "Measures the duration of an outgoing Remote Procedure Call (RPC).",
                DURATION_BOUNDS),),
    ("rpc.system", "rpc.service", "rpc.method", "rpc.grpc.status_code", "error.type", "server.address",
     "server.port"))


def status_code(response: Message | None) -> int | None:
    """The call's gRPC status (see the module doc); None without a response."""
    if response is None:
        return None
    code: int | None = getattr(response, "grpc_status", None)
    if code is not None:
        return code
    reset = getattr(response, "reset", None)
    if reset is not None:
        return _RESET_STATUS.get(reset, INTERNAL)
    return _HTTP_STATUS.get(getattr(response, "status_code", 0), UNKNOWN)


def code_name(code: int) -> str:
    return CODES[code] if 0 <= code < len(CODES) else str(code)


class GRPC(Protocol):
    """gRPC calls over HTTP/2 streams."""

    name = "grpc"

    def detect(self, request: bytes, response: bytes) -> bool:
        return False  # reached only through HTTP2

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        return None

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        full = getattr(request, "path", "").lstrip("/")
        service, _, method = full.partition("/")
        attrs: dict[str, str | int | float | bool] = {"rpc.system": "grpc"}
        if service and method:
            attrs["rpc.service"] = service
            attrs["rpc.method"] = method
        code = status_code(response)
        error_type = None
        if code is None:
            error_type = "incomplete"
        else:
            attrs["rpc.grpc.status_code"] = code
            if code != OK and (kind is SpanKind.CLIENT or code in SERVER_ERRORS):
                error_type = code_name(code)
        attrs["network.protocol.name"] = "http"
        attrs["network.protocol.version"] = "2"
        host = getattr(request, "host", None)
        if kind is SpanKind.CLIENT and host:
            address = _host_only(host)
            if address:
                attrs["server.address"] = address
        return SpanDescription(f"{service}/{method}" if service and method else "grpc", attrs, error_type)

    def instruments(self, kind: SpanKind) -> InstrumentSet:
        return SERVER_METRICS if kind is SpanKind.SERVER else CLIENT_METRICS

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]]:
        a = desc.attributes
        values = ("grpc", a.get("rpc.service"), a.get("rpc.method"), a.get("rpc.grpc.status_code"), desc.error_type)
        if kind is SpanKind.SERVER:
            return SERVER_METRICS, values
        return CLIENT_METRICS, (*values, a.get("server.address") or conn.remote_addr or None,
                                conn.remote_port or None)

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        return (duration(request, response),)
