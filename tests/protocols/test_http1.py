"""HTTP/1.x from exchange records, and span description."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.bpf.events import (
    FLAG_TLS, FLAG_TRACEPARENT, TRACEPARENT_CAPTURE, ConnTuple, End, ExchangeRecord, Role,
)
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import Parsed, SpanKind
from beyla_sidecar.protocols.http1 import (
    CLIENT_METRICS, HTTP1, SERVER_METRICS, HttpRequest, HttpResponse, parse_request, parse_response, span_name,
)
from beyla_sidecar.protocols.instruments import DURATION_BOUNDS, SIZE_BOUNDS, AttributeValue, InstrumentSet

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 256  # BEYLA_RESPONSE_CAPTURE_SIZE default
MAX_HEAD_SCAN = 64 * 1024  # probes/exchange.h: heads beyond stay unknown
REQ_START, REQ_END, RESP_START, RESP_END = 100, 110, 120, 130
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CLIENT_HELLO = bytes.fromhex(
    "160301020001000" "1fc0303" + "ab" * 32 + "20" + "cd" * 32 + "0020130113021303c02bc02f")
GET = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def kernel_head(wire: bytes) -> int:
    """The kernel's head scan: the offset just past a LF that follows a LF with only CRs
    between (the empty line), 0 when the first MAX_HEAD_SCAN bytes hold none."""
    nl = False
    for i, b in enumerate(wire[:MAX_HEAD_SCAN]):
        if b == 0x0A:
            if nl:
                return i + 1
            nl = True
        elif b != 0x0D:
            nl = False
    return 0


def traceparent_area(wire: bytes, prefix: int, area: int) -> bytes:
    """What the kernel keeps of a head's first "traceparent" line (from its name on, `area`
    bytes) when the line does not end inside the prefix; b"" otherwise."""
    head = kernel_head(wire) or min(len(wire), MAX_HEAD_SCAN)
    at = wire.lower().find(b"\ntraceparent", 0, head) + 1
    if not at or wire.find(b"\n", at) < prefix:
        return b""
    return wire[at:at + area]


def record(request: bytes, response: bytes | None = OK, *, role: Role = Role.SERVER,
           end: End = End.NEXT_REQUEST, tls: bool = False, area: int = TRACEPARENT_CAPTURE) -> ExchangeRecord:
    """The record the kernel sends for one exchange with these wire bytes (response None: no
    answer came): prefixes cut at the default capture sizes, exact byte counts, head lengths
    scanned by the kernel for messages longer than their prefix (0: user space finds them)."""
    tp = traceparent_area(request, REQ_PREFIX, area)
    flags = (FLAG_TLS if tls else 0) | (FLAG_TRACEPARENT if tp else 0)
    resp = b"" if response is None else response
    return ExchangeRecord(
        sock_id=0xFFFF0001, pid=1000, ns_pid=7, tid=1001, role=role, end=end, flags=flags,
        req_start_ns=REQ_START, req_end_ns=REQ_END,
        resp_start_ns=0 if response is None else RESP_START, resp_end_ns=0 if response is None else RESP_END,
        req_bytes=len(request), resp_bytes=len(resp), parent=None,
        req_head=kernel_head(request) if len(request) > REQ_PREFIX else 0,
        resp_head=kernel_head(resp) if len(resp) > RESP_PREFIX else 0,
        request=request[:REQ_PREFIX], response=resp[:RESP_PREFIX], traceparent=tp)


def parse(request: bytes, response: bytes | None = OK, **kw: object) -> Parsed:
    parsed = HTTP1().parse(record(request, response, **kw))  # type: ignore[arg-type]
    assert parsed is not None
    return parsed


def req(wire: bytes) -> HttpRequest:
    r = parse_request(record(wire))
    assert r is not None
    return r


def resp(wire: bytes) -> HttpResponse:
    r = parse_response(record(GET, wire))
    assert r is not None
    return r


# -- the record helper models the kernel -----------------------------------------------


def test_record_helper() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + b"x" * 300
    rec = record(GET, big)
    assert (rec.req_bytes, rec.req_head, rec.request) == (len(GET), 0, GET)
    assert (rec.resp_bytes, rec.resp_head, rec.response) == (len(big), len(big) - 300, big[:RESP_PREFIX])
    assert (rec.flags, rec.traceparent, rec.key) == (0, b"", (0xFFFF0001, REQ_START))
    assert kernel_head(b"GET / HTTP/1.1\n\r\nbody") == 17 and kernel_head(b"GET / HTTP/1.1\r\n") == 0
    none = record(GET, None)
    assert (none.resp_start_ns, none.resp_end_ns, none.resp_bytes, none.response) == (0, 0, 0, b"")


# -- requests --------------------------------------------------------------------------


def test_simple_exchange() -> None:
    assert parse(GET) == Parsed(
        HttpRequest(is_request=True, start_ns=REQ_START, end_ns=REQ_END, size=0, header_size=len(GET),
                    traceparent=None, method="GET", path="/index.html", query="", version="1.1",
                    host="example.com"),
        HttpResponse(is_request=False, start_ns=RESP_START, end_ns=RESP_END, size=5, header_size=len(OK) - 5,
                     traceparent=None, status_code=200, version="1.1"),
        False)


def test_post_body_inside_the_prefix() -> None:
    wire = b"POST /api HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
    m = req(wire)
    assert (m.method, m.path, m.size, m.header_size, m.start_ns, m.end_ns) == (
        "POST", "/api", 11, len(wire) - 11, REQ_START, REQ_END)


def test_post_body_larger_than_the_prefix() -> None:
    head = b"POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
    rec = record(head + b"x" * 100000)
    assert rec.req_head == len(head) and len(rec.request) == REQ_PREFIX
    m = parse_request(rec)
    assert m is not None and (m.path, m.size, m.header_size) == ("/big", 100000, len(head))


def test_request_with_16k_headers() -> None:
    area = TRACEPARENT_CAPTURE
    head = (b"POST /upload?part=2 HTTP/1.1\r\nHost: store:9000\r\n"
            + b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"v" * 100) for i in range(150))
            + b"TraceParent: " + TP.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
    assert len(head) > 16 * 1024
    rec = record(head + b"b" * 1000, area=area)
    assert (rec.req_head, rec.req_bytes, rec.flags) == (len(head), len(head) + 1000, FLAG_TRACEPARENT)
    assert rec.traceparent == (b"TraceParent: " + TP.encode() + b"\r\nContent-Length: 1000\r\n\r\n")[:area]
    m = parse_request(rec)
    assert m == HttpRequest(True, REQ_START, REQ_END, 1000, len(head), TP, "POST", "/upload", "part=2", "1.1",
                            "store:9000")


def test_traceparent_in_the_prefix_wins_over_the_area() -> None:
    other = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    rec = record(b"GET / HTTP/1.1\r\ntraceparent: " + TP.encode() + b"\r\n\r\n")._replace(
        flags=FLAG_TRACEPARENT, traceparent=f"traceparent: {other}\r\n".encode())
    m = parse_request(rec)
    assert m is not None and m.traceparent == TP


def test_traceparent_area_must_hold_the_header_name() -> None:
    rec = record(b"GET / HTTP/1.1\r\n\r\n")._replace(flags=FLAG_TRACEPARENT,
                                                      traceparent=f"tracepartner: {TP}\r\n".encode())
    m = parse_request(rec)
    assert m is not None and m.traceparent is None


def test_header_lines_cut_by_the_prefix_are_unknown() -> None:
    # Host and traceparent lines that start in the prefix and end beyond it
    target = b"/" + b"a" * 220
    wire = b"GET " + target + b" HTTP/1.1\r\nHost: api.example.com\r\n\r\n"
    assert wire.find(b"Host") < REQ_PREFIX < wire.find(b"\n", wire.find(b"Host"))
    m = req(wire)
    assert (m.path, m.host, m.header_size) == (target.decode(), None, len(wire))
    wire = b"GET " + target[:200] + b" HTTP/1.1\r\ntraceparent: " + TP.encode() + b"\r\n\r\n"
    assert wire.find(b"traceparent") < REQ_PREFIX < wire.find(b"\n", wire.find(b"traceparent"))
    rec = record(wire, area=80)  # the rest of the line comes in the area
    assert rec.traceparent.startswith(b"traceparent: ")
    m = parse_request(rec)
    assert m is not None and (m.host, m.traceparent) == (None, TP)


def test_head_never_found_gives_unknown_sizes() -> None:
    wire = b"GET /huge HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"p" * MAX_HEAD_SCAN + b"\r\n\r\nbody"
    rec = record(wire)
    assert rec.req_head == 0
    m = parse_request(rec)
    assert m is not None and (m.path, m.host, m.size, m.header_size) == ("/huge", "h", 0, 0)


def test_query_parsing() -> None:
    a = req(b"GET /s?q=a%20b&x=1 HTTP/1.1\r\n\r\n")
    b = req(b"GET /empty? HTTP/1.1\r\n\r\n")
    c = req(b"GET /p/%E2%82%AC HTTP/1.0\r\n\r\n")
    d = req(b"GET /f?x=1#frag HTTP/1.1\r\n\r\n")
    assert (a.path, a.query) == ("/s", "q=a%20b&x=1")
    assert (b.path, b.query) == ("/empty", "")
    assert (c.path, c.query, c.version) == ("/p/%E2%82%AC", "", "1.0")
    assert (d.path, d.query) == ("/f", "x=1")


def test_absolute_form_target() -> None:
    a = req(b"GET http://user:pw@proxy.example:3128/a/b?c=d HTTP/1.1\r\n\r\n")
    b = req(b"GET HTTP://Example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
    c = req(b"GET https://h?x HTTP/1.1\r\n\r\n")
    assert (a.path, a.query, a.host) == ("/a/b", "c=d", "proxy.example:3128")
    assert "pw" not in repr(a)
    assert (b.path, b.query, b.host) == ("/", "", "example.com")
    assert (c.path, c.query, c.host) == ("/", "x", "h")


def test_connect_and_asterisk_targets() -> None:
    m = req(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (m.method, m.path, m.query, m.host) == ("OPTIONS", "*", "", "h")
    m = req(b"CONNECT db:5432 HTTP/1.1\r\n\r\n")
    assert (m.method, m.path, m.query, m.host) == ("CONNECT", "db:5432", "", "db:5432")
    m = req(b"CONNECT db:5432 HTTP/1.1\r\nHost: proxy:3128\r\n\r\n")
    assert (m.path, m.host) == ("db:5432", "proxy:3128")


def test_all_standard_methods_and_unknown_method() -> None:
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
    for method in methods:
        wire = f"{method} /x HTTP/1.1\r\n\r\n".encode()
        assert HTTP1().detect(wire, b""), method
        assert req(wire).method == method
    m = req(b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n")
    assert (m.method, m.path) == ("PROPFIND", "/dav")  # parsed on a connection already HTTP
    assert not HTTP1().detect(b"PROPFIND /dav HTTP/1.1\r\n", OK)  # but it does not make one


def test_headers_case_insensitive_and_only_needed_ones_kept() -> None:
    wire = (b"PUT /k HTTP/1.1\r\nHOST: Store.local\r\nAuthorization: Bearer s3cr3t\r\n"
            b"Cookie: session=s3cr3t\r\nTRACEPARENT: " + TP.upper().encode() + b"\r\n"
            b"content-LENGTH: 2\r\n\r\nok")
    m = req(wire)
    assert (m.host, m.traceparent, m.size) == ("store.local", TP, 2)
    assert "s3cr3t" not in repr(m)
    assert set(HttpRequest.__slots__) == {"method", "path", "query", "version", "host", "shape"}
    assert set(HttpResponse.__slots__) == {"status_code", "version", "shape"}


def test_host_header_value_is_trimmed_and_ends_at_its_line() -> None:
    m = req(b"GET / HTTP/1.1\r\nHost:   api:8080  \r\nX-Host: other\r\n\r\n")
    assert m.host == "api:8080"
    assert req(b"GET / HTTP/1.1\r\nX-Forwarded-Host: fwd\r\n\r\n").host is None


@pytest.mark.parametrize("value", [
    "01-" + TP[3:],  # version 01 is fine
    "01-" + TP[3:] + "-future",  # and may have more fields
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    TP + "-extra",  # version 00 has exactly four fields
    TP[:-1],  # short
    "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",  # not hex
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba-02b7-01",  # dash in span id
])
def test_traceparent_validation(value: str) -> None:
    m = req(f"GET / HTTP/1.1\r\ntraceparent: {value}\r\n\r\n".encode())
    assert m.traceparent == (value[:55] if value.startswith("01-") else None)


def test_chunked_body_size_is_the_data_without_framing() -> None:
    body = b"3\r\nabc\r\n0\r\n\r\n"
    wire = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    m = req(wire)
    assert (m.size, m.header_size) == (3, len(wire) - len(body))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    small = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    assert (resp(head + small).size, resp(head + small).header_size) == (15, len(head))
    # the whole body is not in the prefix: its data size is unknown, not the wire size
    big = b"3e8\r\n" + b"y" * 1000 + b"\r\n0\r\n\r\n"
    r = resp(head + big)
    assert (r.size, r.header_size) == (None, len(head))


def test_lf_only_lines() -> None:
    m = req(b"GET /lf HTTP/1.1\nHost: h\n\n")
    assert (m.path, m.host, m.header_size, m.size) == ("/lf", "h", 26, 0)
    r = resp(b"HTTP/1.0 200 OK\nContent-Length: 2\n\nhi")
    assert (r.status_code, r.version, r.size, r.header_size) == (200, "1.0", 2, 35)
    head = b"POST /lf HTTP/1.1\nHost: h\nX-Pad: " + b"p" * 300 + b"\n\n"
    m = req(head + b"body")
    assert (m.host, m.size, m.header_size) == ("h", 4, len(head))


# -- responses -------------------------------------------------------------------------


def test_status_line_without_reason() -> None:
    r = resp(b"HTTP/1.1 204\r\n\r\n")
    assert (r.status_code, r.size, r.header_size) == (204, 0, 16)


def test_response_larger_than_its_prefix() -> None:
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + b"".join(b"X-Trace-%d: %s\r\n" % (i, b"t" * 40) for i in range(6))
            + b"Content-Length: 100000\r\n\r\n")
    assert len(head) > RESP_PREFIX
    rec = record(GET, head + bytes(range(256)) * 390 + b"z" * 160)
    assert (rec.resp_head, rec.resp_bytes, len(rec.response)) == (len(head), len(head) + 100000, RESP_PREFIX)
    assert parse_response(rec) == HttpResponse(False, RESP_START, RESP_END, 100000, len(head), None, 200, "1.1")


def test_response_body_beyond_the_prefix_head_inside() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n"
    assert len(head) < RESP_PREFIX
    r = resp(head + b"x" * 5000)
    assert (r.size, r.header_size) == (5000, len(head))


def test_response_read_until_close() -> None:
    request = b"GET / HTTP/1.0\r\n\r\n"
    head = b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n"
    parsed = parse(request, head + b"<html>" + b"x" * 2000 + b"</html>", end=End.CLOSE)
    assert parsed.request.header_size == len(request)
    assert parsed.response is not None
    assert (parsed.response.size, parsed.response.header_size) == (2013, len(head))


def test_head_and_bodiless_statuses_have_the_bytes_that_came() -> None:
    cases = [
        (b"HEAD /h HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        (GET, b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"),
        (GET, b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
        (GET, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    ]
    for request, response in cases:
        p = parse(request, response)
        assert p.response is not None
        assert (p.response.size, p.response.header_size, p.ends_protocol) == (0, len(response), False)


def test_switching_protocols_ends_http() -> None:
    p = parse(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
              b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
    assert p.response is not None and (p.response.status_code, p.response.size, p.ends_protocol) == (101, 7, True)


def test_accepted_connect_ends_http() -> None:
    connect = b"CONNECT db:5432 HTTP/1.1\r\n\r\n"
    assert parse(connect, b"HTTP/1.1 200 Connection Established\r\n\r\n").ends_protocol
    assert not parse(connect, b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").ends_protocol
    assert not parse(connect, b"HTTP/1.1 302 Found\r\nLocation: /\r\n\r\n").ends_protocol
    assert not parse(GET, b"HTTP/1.1 200 OK\r\n\r\n").ends_protocol


def test_no_response() -> None:
    assert parse(GET, None) == Parsed(
        HttpRequest(True, REQ_START, REQ_END, 0, len(GET), None, "GET", "/index.html", "", "1.1", "example.com"),
        None, False)


# -- failures and garbage --------------------------------------------------------------


def test_detect() -> None:
    h = HTTP1()
    assert h.detect(GET, OK) and h.detect(GET, b"")
    assert not h.detect(OK, GET)  # a response as what the connection's initiator sent
    for junk in (CLIENT_HELLO, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x01",
                 b"*1\r\n$4\r\nPING\r\n", b"get / HTTP/1.1\r\n", b"GETX / HTTP/1.1", b"", b"GET",
                 b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/2 200\r\n"):
        assert not h.detect(junk, OK), junk
    assert [p.name for p in all_protocols()][0] == "http"  # tried first


@pytest.mark.parametrize("junk", [
    CLIENT_HELLO,
    bytes(random.Random(1).randrange(256) for _ in range(400)),
    b"\x00" * 64,
    b"",
    b"hello there\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/2.0\r\n\r\n",
    b"get /x HTTP/1.1\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\n\r\n",
    b"\r\nGET /x HTTP/1.1\r\n\r\n",
    b"A" * 25 + b" / HTTP/1.1\r\n\r\n",  # method longer than MAX_METHOD
])
def test_request_prefix_that_is_not_http(junk: bytes) -> None:
    rec = record(junk)
    assert parse_request(rec) is None
    assert HTTP1().parse(rec) is None


@pytest.mark.parametrize("junk", [
    CLIENT_HELLO,
    b"",
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/1.1 200OK\r\n\r\n",
    b"HTTP/1.1 20\r\n\r\n",
    b"HTTP/2 200\r\n\r\n",
    GET,
])
def test_response_prefix_that_is_not_a_status_line(junk: bytes) -> None:
    rec = record(GET, junk)
    assert parse_response(rec) is None
    assert HTTP1().parse(rec) is None


def test_fuzz_random_prefixes_never_raise() -> None:
    rng = random.Random(0xBEE)
    valid = [GET, OK, b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
             b"GET / HTTP/1.1\r\ntraceparent: " + TP.encode() + b"\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nbody"]

    def wire() -> bytes:
        if rng.random() < 0.3:
            return rng.randbytes(rng.randrange(0, 600))
        data = bytearray(rng.choice(valid) * rng.randrange(1, 3))
        for _ in range(rng.randrange(0, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data[:rng.randrange(1, len(data) + 1)])

    parsed = 0
    for _ in range(3000):
        rec = record(wire(), wire() if rng.random() < 0.8 else None)
        if rng.random() < 0.3:
            rec = rec._replace(flags=FLAG_TRACEPARENT, traceparent=b"traceparent:" + wire()[:52])
        p = HTTP1().parse(rec)
        if p is None:
            continue
        parsed += 1
        for m, total in ((p.request, rec.req_bytes), (p.response, rec.resp_bytes)):
            if m is None:
                continue
            assert 0 <= m.header_size <= total
            # a chunked body is smaller than its bytes, or unknown
            assert m.size is None or (0 <= m.size and m.size + m.header_size <= total)
    assert parsed > 100  # the mutated valid messages do reach the checks


# -- describe --------------------------------------------------------------------------


def _pair(request: bytes, response: bytes | None) -> tuple[HttpRequest, HttpResponse | None]:
    p = parse(request, response)
    assert isinstance(p.request, HttpRequest) and (p.response is None or isinstance(p.response, HttpResponse))
    return p.request, p.response


def test_describe_server_span() -> None:
    rq, rs = _pair(b"POST /orders?id=7 HTTP/1.1\r\nHost: shop:8080\r\nContent-Length: 3\r\n\r\nabc",
                   b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{\"id\": \"7\"}\n")
    d = HTTP1().describe(rq, rs, SpanKind.SERVER, with_query=False, route="/orders")
    assert d.name == "POST /orders"
    assert d.error_type is None
    assert d.attributes == {
        "http.request.method": "POST",
        "url.path": "/orders",
        "http.route": "/orders",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.response.status_code": 201,
    }
    # sizes differ from one exchange of a shape to the next: the span encoder sets them
    assert HTTP1.size_attributes == ("http.request.body.size", "http.response.body.size")
    assert (rq.size, rs.size) == (3, 12)


def test_shapes_are_what_describe_reads() -> None:
    rq, rs = _pair(b"POST /orders?id=7 HTTP/1.1\r\nHost: shop:8080\r\nContent-Length: 3\r\n\r\nabc",
                   b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{\"id\": \"7\"}\n")
    assert rq.shape == ("POST", "/orders", "id=7", "1.1", "shop:8080") and rs.shape == (201, "1.1")
    # another body size and traceparent, the same shape
    rq2, rs2 = _pair(b"POST /orders?id=7 HTTP/1.1\r\nHost: shop:8080\r\nContent-Length: 5\r\n"
                     b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\nabcde",
                     b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
    assert (rq2.shape, rs2.shape) == (rq.shape, rs.shape) and (rq2.size, rs2.size) == (5, 2)
    assert rq2.traceparent is not None


def test_describe_tls_scheme() -> None:
    rq, rs = _pair(GET, OK)
    assert HTTP1().describe(rq, rs, SpanKind.SERVER, False, tls=True).attributes["url.scheme"] == "https"
    assert HTTP1().describe(rq, rs, SpanKind.SERVER, False).attributes["url.scheme"] == "http"


def test_describe_with_query() -> None:
    rq, rs = _pair(b"GET /s?q=1&r=2 HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    d = HTTP1().describe(rq, rs, SpanKind.SERVER, with_query=True)
    assert d.attributes["url.query"] == "q=1&r=2"
    assert "url.query" not in HTTP1().describe(rq, rs, SpanKind.SERVER, False).attributes


def test_describe_client_span_with_host() -> None:
    rq, rs = _pair(b"GET /v1/items HTTP/1.0\r\nHost: api.example.com:8443\r\n\r\n",
                   b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    d = HTTP1().describe(rq, rs, SpanKind.CLIENT, with_query=True)
    assert d.name == "GET" and d.error_type is None  # no route: the method alone
    assert d.attributes == {
        "http.request.method": "GET",
        "url.path": "/v1/items",
        "url.scheme": "http",
        "network.protocol.version": "1.0",
        "server.address": "api.example.com",
        "http.response.status_code": 200,
    }
    server = HTTP1().describe(rq, rs, SpanKind.SERVER, with_query=True)
    assert "server.address" not in server.attributes


def test_describe_ipv6_host() -> None:
    rq, rs = _pair(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n")
    assert HTTP1().describe(rq, rs, SpanKind.CLIENT, False).attributes["server.address"] == "::1"
    rq, rs = _pair(b"GET / HTTP/1.1\r\nHost: [fe80::2]\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n")
    assert HTTP1().describe(rq, rs, SpanKind.CLIENT, False).attributes["server.address"] == "fe80::2"


def test_describe_404_is_client_error_only() -> None:
    rq, rs = _pair(GET, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert HTTP1().describe(rq, rs, SpanKind.CLIENT, False).error_type == "404"
    assert HTTP1().describe(rq, rs, SpanKind.SERVER, False).error_type is None


def test_describe_500_is_error_on_both_sides() -> None:
    rq, rs = _pair(GET, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    for kind in SpanKind:
        d = HTTP1().describe(rq, rs, kind, False)
        assert d.error_type == "500" and d.attributes["http.response.status_code"] == 500


def test_describe_incomplete() -> None:
    rq, rs = _pair(GET, None)
    assert rs is None
    d = HTTP1().describe(rq, None, SpanKind.SERVER, False)
    assert d.error_type == "incomplete"
    assert "http.response.status_code" not in d.attributes


def test_describe_unknown_method() -> None:
    rq, rs = _pair(b"PROPFIND /dav/ HTTP/1.1\r\n\r\n", b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n")
    d = HTTP1().describe(rq, rs, SpanKind.SERVER, False, route="/dav/")
    assert d.name == "HTTP /dav/"
    assert d.attributes["http.request.method"] == "_OTHER"
    assert d.attributes["http.request.method_original"] == "PROPFIND"
    assert span_name("GET", "/a/{id}") == "GET /a/{id}"
    assert span_name("GET", None) == "GET"
    assert span_name("PROPFIND", None) == "HTTP"
    assert HTTP1().path(rq) == "/dav/"


# -- metrics ---------------------------------------------------------------------------

CONN = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
POST = b"POST /users/7 HTTP/1.1\r\nHost: api.local:81\r\nContent-Length: 3\r\n\r\nabc"


def measure(request: bytes, response: bytes | None, kind: SpanKind, route: str | None = "/users/{id}",
            extra: frozenset[str] = frozenset()
            ) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...], tuple[float | None, ...]]:
    rq, rs = _pair(request, response)
    desc = HTTP1().describe(rq, rs, kind, False, route=route)
    instruments, key = HTTP1().metric_attributes(kind, CONN, desc, route, extra)
    return instruments, key, HTTP1().metric_values(rq, rs)


def test_metric_instruments() -> None:
    http = HTTP1()
    assert http.instruments(SpanKind.SERVER) is SERVER_METRICS and http.instruments(SpanKind.CLIENT) is CLIENT_METRICS
    for side, metrics in (("server", SERVER_METRICS), ("client", CLIENT_METRICS)):
        assert [(i.name, i.unit, i.description, i.bounds) for i in metrics.instruments] == [
            (f"http.{side}.request.duration", "s", f"Duration of HTTP {side} requests.", DURATION_BOUNDS),
            (f"http.{side}.request.body.size", "By", f"Size of HTTP {side} request bodies.", SIZE_BOUNDS),
            (f"http.{side}.response.body.size", "By", f"Size of HTTP {side} response bodies.", SIZE_BOUNDS),
        ]
    assert SERVER_METRICS.attributes == ("http.request.method", "http.response.status_code", "http.route",
                                         "error.type", "url.path", "client.address")
    assert CLIENT_METRICS.attributes == ("http.request.method", "http.response.status_code", "http.route",
                                         "error.type", "server.address", "server.port", "url.path")


def test_measure_server_exchange() -> None:
    duration = (RESP_END - REQ_START) / 1e9
    assert measure(POST, OK, SpanKind.SERVER) == (
        SERVER_METRICS, ("POST", 200, "/users/{id}", None, None, None), (duration, 3, 5))
    error = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    assert measure(GET, error, SpanKind.SERVER, route=None)[1] == ("GET", 500, None, "500", None, None)
    # url.path and client.address (the peer) only on opt-in: both are unbounded
    opted = measure(POST, OK, SpanKind.SERVER, extra=frozenset(("url.path", "client.address")))
    assert opted[1] == ("POST", 200, "/users/{id}", None, "/users/7", "10.0.0.2")


def test_measure_without_known_addresses() -> None:
    """No socket behind a TLS memory BIO: the server's address and port are left out."""
    rq, rs = _pair(b"GET /users/7 HTTP/1.1\r\n\r\n", OK)
    desc = HTTP1().describe(rq, rs, SpanKind.CLIENT, False, route="/users/{id}")
    _, key = HTTP1().metric_attributes(SpanKind.CLIENT, ConnTuple("", 0, "", 0), desc, "/users/{id}", frozenset())
    assert key == ("GET", 200, "/users/{id}", None, None, None, None)


def test_measure_client_exchange() -> None:
    duration = (RESP_END - REQ_START) / 1e9
    assert measure(POST, OK, SpanKind.CLIENT) == (
        CLIENT_METRICS, ("POST", 200, "/users/{id}", None, "api.local", 40000, None), (duration, 3, 5))
    # no Host header: the server is the connection's remote end; no response: no response size
    no_host = b"GET /users/7 HTTP/1.1\r\n\r\n"
    assert measure(no_host, None, SpanKind.CLIENT, extra=frozenset(("url.path", "client.address"))) == (
        CLIENT_METRICS, ("GET", None, "/users/{id}", "incomplete", "10.0.0.2", 40000, "/users/7"),
        ((REQ_END - REQ_START) / 1e9, 0, None))
