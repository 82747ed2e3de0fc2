"""HTTP/1.0 and HTTP/1.1 from exchange records.

A record holds the first bytes of a request and of its response, their exact byte
counts, and the head lengths the kernel found (the offset just past the empty line),
so that heads larger than the prefixes still give exact body sizes; an incoming
traceparent beyond the request prefix comes in the record's traceparent area. Only what
a span needs is taken from a head (method, target, version, status, Host, traceparent);
every other header, Authorization and Cookie included, is looked at by nobody.

Sizes: `Message.header_size` is the start line plus headers plus the empty line;
`Message.size` is the body: every byte after the head up to the end of the message. A chunked
body's size is its data without the chunk framing and trailers, known only when the whole
message is in the prefix; otherwise it is unknown (None: no size attribute, no size metric)
rather than a wrong figure.

A record whose request prefix is not a request line, or whose response prefix is not a
status line, is a parse failure (counted by the tracker). After a 101 or a successful
CONNECT the connection is no longer HTTP: `Parsed.ends_protocol` tells the tracker. A 101 to
an `Upgrade: h2c` request is no exchange of its own: its answer comes in HTTP/2
(`Parsed.upgrade`).

Metrics: the semantic conventions' `http.{server,client}.request.duration` and the request and
response body sizes, with the conventions' default attributes (`url.path` and `client.address`
only on opt-in: both are unbounded).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TypeVar

from ..bpf.events import ConnTuple, ExchangeRecord
from .base import Message, Parsed, Protocol, Repeats, SpanDescription, SpanKind
from .instruments import DURATION_BOUNDS, SIZE_BOUNDS, AttributeValue, Instrument, InstrumentSet

MAX_METHOD = 24

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_METHOD_PREFIXES = tuple(m.encode() + b" " for m in sorted(KNOWN_METHODS))
_METHOD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
_TARGET_CHARS = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))  # visible, no space/CTL
_TRACEPARENT_CHARS = b"0123456789abcdef-"
_TRACEPARENT_NAME = b"traceparent:"
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_SERVER = SpanKind.SERVER  # an Enum member looked up on its class runs Python code (3.11): once here

SERVER_METRICS = InstrumentSet(
    (Instrument("http.server.request.duration", "s", "Duration of HTTP server requests.", DURATION_BOUNDS),
     Instrument("http.server.request.body.size", "By", "Size of HTTP server request bodies.", SIZE_BOUNDS),
     Instrument("http.server.response.body.size", "By", "Size of HTTP server response bodies.", SIZE_BOUNDS)),
    ("http.request.method", "http.response.status_code", "http.route", "error.type", "url.path",
     "client.address"))
CLIENT_METRICS = InstrumentSet(
    (Instrument("http.client.request.duration", "s", "Duration of HTTP client requests.", DURATION_BOUNDS),
     Instrument("http.client.request.body.size", "By", "Size of HTTP client request bodies.", SIZE_BOUNDS),
     Instrument("http.client.response.body.size", "By", "Size of HTTP client response bodies.", SIZE_BOUNDS)),
    ("http.request.method", "http.response.status_code", "http.route", "error.type", "server.address",
     "server.port", "url.path"))


@dataclass(slots=True)
class HttpRequest(Message):
    method: str = ""
    path: str = ""
    query: str = ""  # without the '?', '' when none
    version: str = ""  # "1.1" or "1.0"
    host: str | None = None  # Host header (or absolute-form authority), port included
    shape: Hashable = field(default=None, compare=False)  # (method, path, query, version, host)


@dataclass(slots=True)
class HttpResponse(Message):
    status_code: int = 0
    version: str = ""
    shape: Hashable = field(default=None, compare=False)  # (status_code, version)


def _head_end(b: bytes) -> int:
    """Length of the head the prefix `b` starts with (just past its empty line); 0 when the
    prefix does not hold its end. The start line's ending decides CRLF or bare-LF framing."""
    nl = b.find(b"\n")
    if nl < 0:
        return 0
    if nl > 0 and b[nl - 1] == 13:
        i = b.find(b"\r\n\r\n", nl - 1)
        return i + 4 if i >= 0 else 0
    i = b.find(b"\n\n", nl)
    return i + 2 if i >= 0 else 0


def _line_end(b: bytes | bytearray, s: int, nl: int) -> int:
    return nl - 1 if nl > s and b[nl - 1] == 13 else nl


def _request_line(b: bytes | bytearray, s: int, e: int) -> tuple[bytes, bytes, str] | None:
    """(method, target, version) of `b[s:e]` (no line ending), None when not a request line."""
    sp1 = b.find(b" ", s, e)
    sp2 = b.rfind(b" ", s, e)
    if sp1 <= s or sp2 <= sp1 + 1 or sp1 - s > MAX_METHOD:
        return None
    version = _VERSIONS.get(bytes(b[sp2 + 1:e]))
    if version is None:
        return None
    method = bytes(b[s:sp1])
    target = bytes(b[sp1 + 1:sp2])
    if method.translate(None, _METHOD_CHARS) or target.translate(None, _TARGET_CHARS):
        return None
    return method, target, version


def _status_line(b: bytes | bytearray, s: int, e: int) -> tuple[int, str] | None:
    """(status code, version) of `b[s:e]`, None when not a status line."""
    if e - s < 12 or b[s + 8] != 32 or (e - s > 12 and b[s + 12] != 32):
        return None
    version = _VERSIONS.get(bytes(b[s:s + 8]))
    code = b[s + 9:s + 12]
    if version is None or not code.isdigit() or code[0] == 48:  # '0xx' is no status
        return None
    return int(code), version


def _header(low: bytes, name: bytes) -> bytes | None:
    """Value of header `name` (b"\\nname:") in the lowercased head section `low`."""
    i = low.find(name)
    if i < 0:
        return None
    i += len(name)
    e = low.find(b"\n", i)
    return low[i:e].strip() if e >= 0 else None  # the line goes on past the prefix: unknown


def _traceparent(v: bytes | None) -> str | None:
    """A syntactically valid W3C traceparent, else None."""
    if v is None or len(v) < 55 or v[2] != 45 or v[35] != 45 or v[52] != 45:
        return None
    if v[:2] == b"ff" or (v[:2] == b"00" and len(v) != 55) or (len(v) > 55 and v[55] != 45):
        return None
    v = v[:55]
    if (v.translate(None, _TRACEPARENT_CHARS) or v.count(b"-") != 3
            or v[3:35] == b"0" * 32 or v[36:52] == b"0" * 16):
        return None
    return v.decode("ascii")


def _split_target(target: bytes) -> tuple[str, str, str | None]:
    """(path, query, authority) of a request target; authority only for absolute-form."""
    authority = None
    if target[:1] != b"/":
        low = target[:8].lower()
        if low.startswith(b"http://") or low == b"https://":
            a = target.find(b"//") + 2
            end = len(target)
            for sep in (b"/", b"?", b"#"):
                i = target.find(sep, a)
                if 0 <= i < end:
                    end = i
            authority = target[a:end].rpartition(b"@")[2].decode("utf-8", "replace")  # no userinfo
            target = target[end:]
            if target[:1] != b"/":
                target = b"/" + target
    path, _, query = target.partition(b"?")
    query = query.partition(b"#")[0]
    return path.decode("utf-8", "replace"), query.decode("utf-8", "replace"), authority


def _first_line_end(b: bytes) -> int:
    """End of the start line (without its line ending); the whole prefix when it has no LF."""
    nl = b.find(b"\n")
    return _line_end(b, 0, nl) if nl >= 0 else len(b)


# What a request prefix says: its shape (method, path, query, version, host), the traceparent
# (None when not in the prefix), the head length found in the prefix (0: not there), whether its
# body is chunked, whether it asks to upgrade to HTTP/2 (h2c) and its declared Content-Length (0: none).
RequestFields = tuple[tuple[str, str, str, str, "str | None"], "str | None", int, bool, bool, int]
# What a response prefix says: its shape (status, version), the head length found in the prefix
# and whether its body is chunked.
ResponseFields = tuple[tuple[int, str], int, bool]


def request_fields(b: bytes) -> RequestFields | None:
    """The parts of a request prefix a span needs; None when it is no HTTP/1 request line."""
    parts = _request_line(b, 0, _first_line_end(b))
    if parts is None:
        return None
    method_b, target, version = parts
    method = method_b.decode("ascii")
    head = _head_end(b)
    low = b[:head or len(b)].lower()
    if method == "CONNECT" or (method == "OPTIONS" and target == b"*"):
        path, query, authority = target.decode("utf-8", "replace"), "", None
    else:
        path, query, authority = _split_target(target)
    host_b = _header(low, b"\nhost:")
    host = host_b.decode("utf-8", "replace") if host_b else authority
    if host is None and method == "CONNECT":
        host = path
    upgrade = _header(low, b"\nupgrade:")
    length = _header(low, b"\ncontent-length:")
    return ((method, path, query, version, host), _traceparent(_header(low, b"\ntraceparent:")), head,
            _chunked(low), upgrade is not None and b"h2c" in upgrade,
            int(length) if length is not None and length.isdigit() else 0)


def response_fields(b: bytes) -> ResponseFields | None:
    """Status, version and head length of a response prefix; None when no HTTP/1 status line."""
    parts = _status_line(b, 0, _first_line_end(b))
    if parts is None:
        return None
    head = _head_end(b)
    return parts, head, _chunked(b[:head or len(b)].lower())


def _chunked(low: bytes) -> bool:
    """Does the lowercased head section say the body is chunked (the last transfer coding)?"""
    coding = _header(low, b"\ntransfer-encoding:")
    return coding is not None and coding.endswith(b"chunked")


def _body_size(prefix: bytes, head: int, total: int, chunked: bool) -> int | None:
    """The body size of a message of `total` bytes whose head is `head` long (0: not found):
    a chunked body's data alone, known when the whole message is in `prefix`, else None."""
    if not head:
        return 0
    if not chunked or total == head:
        return total - head
    if total > len(prefix):
        return None
    size, at = 0, head
    while True:
        nl = prefix.find(b"\n", at)
        if nl < 0:
            return None
        length = prefix[at:nl].partition(b";")[0].strip()
        try:
            n = int(length, 16)
        except ValueError:
            return None
        if n == 0:
            return size
        size += n
        at = nl + 1 + n  # past the data, then its line ending
        at += 2 if prefix[at:at + 2] == b"\r\n" else 1


def content_length(b: bytes, head: int) -> int | None:
    """Content-Length of the response head in prefix `b` (`head` bytes long, 0: longer than the
    prefix), None when absent or not in the prefix."""
    value = _header(b[:head or len(b)].lower(), b"\ncontent-length:")
    return int(value) if value is not None and value.isdigit() else None


NO_BODY_STATUS = frozenset((204, 304))


def _pipelined(fields: RequestFields, size: int | None) -> bool:
    """Does the request direction go on past the first request's end (its head, then the body
    its Content-Length declares, none without one)? Then more requests were sent before its
    response: pipelining. A stray CRLF after a body is tolerated; a chunked body, or a head
    longer than the prefix, cannot be measured here: not called pipelined."""
    _, _, head, chunked, _, length = fields
    if chunked or not head or not size:
        return False
    return size > length + 2


def parse_request(rec: ExchangeRecord, fields: RequestFields | None = None) -> HttpRequest | None:
    """The request of an exchange record, None when its prefix is no HTTP/1 request line.
    `fields`: request_fields(rec.request), when the caller has them already."""
    if fields is None:
        fields = request_fields(rec.request)
        if fields is None:
            return None
    shape, traceparent, head, chunked, _, _ = fields
    method, path, query, version, host = shape
    head = rec.req_head or head
    if traceparent is None and rec.traceparent[:len(_TRACEPARENT_NAME)].lower() == _TRACEPARENT_NAME:
        traceparent = _traceparent(rec.traceparent[len(_TRACEPARENT_NAME):].partition(b"\n")[0].strip().lower())
    size = _body_size(rec.request, head, rec.req_bytes, chunked)
    return HttpRequest(True, rec.req_start_ns, rec.req_end_ns, size, head, traceparent,
                       method, path, query, version, host, shape)


def parse_response(rec: ExchangeRecord, fields: ResponseFields | None = None) -> HttpResponse | None:
    """The response of an exchange record, None when its prefix is no HTTP/1 status line."""
    if fields is None:
        fields = response_fields(rec.response)
        if fields is None:
            return None
    shape, head, chunked = fields
    head = rec.resp_head or head
    size = _body_size(rec.response, head, rec.resp_bytes, chunked)
    return HttpResponse(False, rec.resp_start_ns, rec.resp_end_ns, size, head, None, shape[0], shape[1], shape)


def span_name(method: str, route: str | None) -> str:
    """`METHOD route`, or `METHOD` alone without a route (never the raw path: cardinality)."""
    name = method if method in KNOWN_METHODS else "HTTP"
    return f"{name} {route}" if route else name


def _host_only(host: str) -> str:
    """Host header value without its port; IPv6 literals without brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host[1:]
    return host.partition(":")[0]


_MISSING = object()
T = TypeVar("T")
PARSE_CACHE = 4096  # distinct prefixes remembered per direction before the cache starts over


def _cached(cache: dict[bytes, T | None], key: bytes, parse: Callable[[bytes], T | None]) -> T | None:
    """parse(key), remembered; the cache starts over when full."""
    value = cache.get(key, _MISSING)
    if value is _MISSING:
        if len(cache) >= PARSE_CACHE:
            cache.clear()
        value = cache[key] = parse(key)
    return value  # type: ignore[return-value]


class HTTP1(Protocol):
    """HTTP/1.0 and HTTP/1.1, over plain TCP or TLS (plaintext from the TLS library probes)."""

    name = "http"
    size_attributes = ("http.request.body.size", "http.response.body.size")

    def __init__(self) -> None:
        # Prefix -> what it says: clients repeat the same requests (and servers the same
        # heads within a second), so most exchanges parse with one dict lookup each way.
        self._requests: dict[bytes, RequestFields | None] = {}
        self._responses: dict[bytes, ResponseFields | None] = {}

    def detect(self, request: bytes, response: bytes) -> bool:
        return request.startswith(_METHOD_PREFIXES)

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        fields = _cached(self._requests, rec.request, request_fields)
        if fields is None:
            return None
        request = parse_request(rec, fields)
        assert request is not None
        response = None
        if rec.resp_start_ns:
            rfields = _cached(self._responses, rec.response, response_fields)
            if rfields is None:
                return None
            response = parse_response(rec, rfields)
        if _pipelined(fields, request.size):
            return Parsed(request, response, pipelined=True)
        if response is None:
            return Parsed(request, None)
        # after a protocol switch or an accepted CONNECT the bytes are no longer HTTP
        if response.status_code == 101:
            h2c = fields[4]
            return Parsed(request, response, True, "http2" if h2c else None)  # h2c: its answer comes in HTTP/2
        return Parsed(request, response, request.method == "CONNECT" and 200 <= response.status_code < 300)

    def repeats(self, rec: ExchangeRecord, parsed: Parsed) -> Repeats | None:
        """Exchanges whose heads were found and whose bodies are not chunked: their body sizes are
        their byte counts less the heads. Not when the prefix holds a traceparent (each one's
        differs), nor for upgrades, tunnels or pipelining (parsed otherwise)."""
        request, response = parsed.request, parsed.response
        if response is None or parsed.ends_protocol or parsed.pipelined or request.traceparent is not None:
            return None
        fields = _cached(self._requests, rec.request, request_fields)
        rfields = _cached(self._responses, rec.response, response_fields)
        if fields is None or rfields is None or fields[1] is not None or fields[3] or rfields[2]:
            return None
        if not request.header_size or not response.header_size:
            return None
        return Repeats(request.header_size, response.header_size, fields[5] + 2)  # see _pipelined

    def finished(self, rec: ExchangeRecord) -> bool:
        """Unfinished only when the response declares a length its bytes have not reached (a
        download paused by a rate limit or a slow reader). Chunked and close-delimited bodies
        cannot be told from a prefix: quiet means finished."""
        request = _cached(self._requests, rec.request, request_fields)
        response = _cached(self._responses, rec.response, response_fields)
        if request is None or response is None or request[0][0] == "HEAD":
            return True
        (status, _), prefix_head, _ = response
        head = rec.resp_head or prefix_head
        length = content_length(rec.response, prefix_head)
        if not head or length is None or status < 200 or status in NO_BODY_STATUS:
            return True
        return rec.resp_bytes >= head + length

    def path(self, request: Message) -> str | None:
        return getattr(request, "path", None) or None

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """OpenTelemetry HTTP semantic conventions.

        Unknown methods are `_OTHER` (original in `http.request.method_original`) and
        name the span `HTTP <route>`. Errors: 5xx on SERVER, 4xx and 5xx on CLIENT give
        `error.type` = the status code; no response at all gives `incomplete`.
        Body sizes (`size_attributes`, wire bytes after the head, see the module doc) are set
        per exchange by the span encoder.
        """
        method = getattr(request, "method", "") or "_OTHER"
        path = getattr(request, "path", "") or "/"
        attrs: dict[str, str | int | float | bool] = {}
        if method in KNOWN_METHODS:
            attrs["http.request.method"] = method
        else:
            attrs["http.request.method"] = "_OTHER"
            attrs["http.request.method_original"] = method
        attrs["url.path"] = path
        if route:
            attrs["http.route"] = route
        query = getattr(request, "query", "")
        if with_query and query:
            attrs["url.query"] = query
        attrs["url.scheme"] = "https" if tls else "http"
        attrs["network.protocol.version"] = getattr(request, "version", "") or "1.1"
        host = getattr(request, "host", None)
        if kind is SpanKind.CLIENT and host:
            address = _host_only(host)
            if address:
                attrs["server.address"] = address
        error_type = None
        if response is None:
            error_type = "incomplete"
        else:
            status = getattr(response, "status_code", 0)
            attrs["http.response.status_code"] = status
            if status >= 500 or (status >= 400 and kind is SpanKind.CLIENT):
                error_type = str(status)
        return SpanDescription(span_name(method, route), attrs, error_type)

    def instruments(self, kind: SpanKind) -> InstrumentSet:
        return SERVER_METRICS if kind is SpanKind.SERVER else CLIENT_METRICS

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]]:
        """Client metrics without a Host header name the server by the connection's address."""
        a = desc.attributes
        method, status = a.get("http.request.method"), a.get("http.response.status_code")
        path = a.get("url.path") if "url.path" in extra else None
        if kind is _SERVER:
            client = conn.remote_addr or None if "client.address" in extra else None
            return SERVER_METRICS, (method, status, route, desc.error_type, path, client)
        # an unknown address or port (no socket behind a TLS memory BIO) is left out
        return CLIENT_METRICS, (method, status, route, desc.error_type,
                                a.get("server.address") or conn.remote_addr or None, conn.remote_port or None, path)

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        """Duration, request and response body size (none without a response)."""
        if response is None:
            return (request.end_ns - request.start_ns) / 1e9, request.size, None
        return (response.end_ns - request.start_ns) / 1e9, request.size, response.size
