"""HTTP/1.x stream parsing and span description."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import (
    HTTP1,
    MAX_HEAD,
    HttpRequest,
    HttpResponse,
    HttpStream,
    span_name,
)

CAPTURE = 512
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CLIENT_HELLO = bytes.fromhex(
    "160301020001000" "1fc0303" + "ab" * 32 + "20" + "cd" * 32 + "0020130113021303c02bc02f")


def requests() -> HttpStream:
    return HTTP1().new_stream(True)


def responses() -> HttpStream:
    return HTTP1().new_stream(False)


def feed(stream: HttpStream, payload: bytes, ts: int, size: int | None = None,
         capture: int = CAPTURE) -> list:
    """Feed one send/recv of `size` bytes (default len(payload)) as the probe captures it."""
    size = len(payload) if size is None else size
    return stream._feed(payload[:capture], size, ts)  # _feed: exceptions must fail the test


def feed_parts(stream: HttpStream, wire: bytes, cuts: list[int], ts0: int = 1) -> list:
    """Send `wire` in reads ending at `cuts` (captured like the probe); ts = ts0, ts0+1, ..."""
    out, start = [], 0
    for i, end in enumerate([*cuts, len(wire)]):
        out += feed(stream, wire[start:end], ts0 + i)
        start = end
    return out


GET = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


# -- requests --------------------------------------------------------------------------


def test_simple_get():
    s = requests()
    [m] = feed(s, GET, 10)
    assert m == HttpRequest(is_request=True, start_ns=10, end_ns=10, size=0,
                            header_size=len(GET), traceparent=None, method="GET",
                            path="/index.html", query="", version="1.1", host="example.com")
    assert s.stats.messages == 1 and s.stats.failures == 0


def test_post_body_in_same_chunk():
    wire = b"POST /api HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
    s = requests()
    [m] = feed(s, wire, 5)
    assert (m.method, m.path, m.size, m.header_size, m.start_ns, m.end_ns) == (
        "POST", "/api", 11, len(wire) - 11, 5, 5)


def test_post_body_in_later_chunks():
    head = b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
    s = requests()
    assert feed(s, head, 1) == []
    assert feed(s, b"01234", 2) == []
    [m] = feed(s, b"56789", 3)
    assert (m.size, m.header_size, m.start_ns, m.end_ns) == (10, len(head), 1, 3)
    assert s.stats.failures == 0


def test_post_body_larger_than_capture():
    head = b"POST /big HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"
    s = requests()
    wire = head + b"x" * 100000
    assert feed(s, wire[:60000], 1, size=60000) == []
    [m] = feed(s, wire[60000:], 2, size=len(wire) - 60000)
    assert (m.size, m.start_ns, m.end_ns) == (100000, 1, 2)
    assert s.stats.failures == 0


def test_keep_alive_three_requests():
    s = requests()
    out = []
    for i, path in enumerate((b"/a", b"/b", b"/c")):
        out += feed(s, b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n", 100 + i)
    assert [(m.path, m.start_ns, m.end_ns) for m in out] == [
        ("/a", 100, 100), ("/b", 101, 101), ("/c", 102, 102)]
    assert s.stats.messages == 3 and s.stats.failures == 0


def test_pipelining_two_requests_in_one_chunk():
    wire = (b"POST /one HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /two?x=1 HTTP/1.1\r\nHost: h\r\n\r\n")
    s = requests()
    out = feed(s, wire, 7)
    assert [(m.method, m.path, m.query, m.size) for m in out] == [
        ("POST", "/one", "", 3), ("GET", "/two", "x=1", 0)]


def test_request_head_split_at_every_byte():
    wire = (b"POST /split?q=1 HTTP/1.1\r\nHost: api:8080\r\ntraceparent: " + TP.encode()
            + b"\r\nContent-Length: 4\r\n\r\nbody")
    expected = HttpRequest(True, 1, 2, 4, len(wire) - 4, TP, "POST", "/split", "q=1", "1.1",
                           "api:8080")
    for i in range(len(wire) + 1):
        s = requests()
        out = feed_parts(s, wire, [i])
        expected.start_ns = 1 if i else 2  # an empty first read starts nothing
        expected.end_ns = 1 if i == len(wire) else 2  # all in the first read, an empty 2nd
        assert out == [expected], i
        assert s.stats.failures == 0, i


def test_request_split_in_three_at_every_pair_of_offsets():
    wire = b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    for i in range(len(wire)):
        for j in range(i, len(wire)):
            s = requests()
            [m] = feed_parts(s, wire, [i, j])
            assert (m.path, m.host, m.header_size, m.start_ns) == ("/x", "h", len(wire),
                                                                  1 if i else (2 if j else 3))


def test_query_parsing():
    s = requests()
    [a, b, c] = feed(s, b"GET /s?q=a%20b&x=1 HTTP/1.1\r\n\r\n"
                        b"GET /empty? HTTP/1.1\r\n\r\n"
                        b"GET /p/%E2%82%AC HTTP/1.0\r\n\r\n", 1)
    assert (a.path, a.query) == ("/s", "q=a%20b&x=1")
    assert (b.path, b.query) == ("/empty", "")
    assert (c.path, c.query, c.version) == ("/p/%E2%82%AC", "", "1.0")


def test_absolute_form_target():
    s = requests()
    [a, b, c] = feed(s, b"GET http://user:pw@proxy.example:3128/a/b?c=d HTTP/1.1\r\n\r\n"
                        b"GET HTTP://Example.com HTTP/1.1\r\nHost: example.com\r\n\r\n"
                        b"GET https://h?x HTTP/1.1\r\n\r\n", 1)
    assert (a.path, a.query, a.host) == ("/a/b", "c=d", "proxy.example:3128")
    assert "pw" not in repr(a)
    assert (b.path, b.query, b.host) == ("/", "", "example.com")
    assert (c.path, c.query, c.host) == ("/", "x", "h")


def test_connect_and_asterisk_targets():
    s = requests()
    [m] = feed(s, b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 1)
    assert (m.method, m.path) == ("OPTIONS", "*")
    s = requests()
    [m] = feed(s, b"CONNECT db:5432 HTTP/1.1\r\n\r\n", 1)
    assert (m.method, m.path, m.host) == ("CONNECT", "db:5432", "db:5432")
    # the tunnel that follows is not HTTP and costs no failure
    assert feed(s, CLIENT_HELLO, 2) == []
    assert s.stats.failures == 0 and s.skipped_bytes == len(CLIENT_HELLO)


def test_all_standard_methods_and_unknown_method():
    s = requests()
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
    for m in methods:
        assert HTTP1().detect(f"{m} /x HTTP/1.1\r\n".encode(), True)
    wire = b"".join(f"{m} /x HTTP/1.1\r\n\r\n".encode() for m in methods if m != "CONNECT")
    assert [r.method for r in feed(s, wire, 1)] == [m for m in methods if m != "CONNECT"]
    [m] = feed(s, b"PROPFIND /dav HTTP/1.1\r\nDepth: 1\r\n\r\n", 2)
    assert (m.method, m.path) == ("PROPFIND", "/dav")
    assert not HTTP1().detect(b"PROPFIND /dav HTTP/1.1\r\n", True)


def test_headers_case_insensitive_and_only_needed_ones_kept():
    wire = (b"PUT /k HTTP/1.1\r\nHOST: Store.local\r\nAuthorization: Bearer s3cr3t\r\n"
            b"Cookie: session=s3cr3t\r\nTRACEPARENT: " + TP.encode() + b"\r\n"
            b"content-LENGTH: 2\r\n\r\nok")
    s = requests()
    [m] = feed(s, wire, 1)
    assert (m.host, m.traceparent, m.size) == ("store.local", TP, 2)
    assert "s3cr3t" not in repr(m)
    assert set(HttpRequest.__slots__) == {"method", "path", "query", "version", "host"}
    assert set(HttpResponse.__slots__) == {"status_code", "version"}


@pytest.mark.parametrize("value", [
    "01-" + TP[3:],  # version 01 is fine
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    TP + "-extra",  # version 00 has exactly four fields
    TP[:-1],  # short
    "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",  # not hex
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba-02b7-01",  # dash in span id
])
def test_traceparent_validation(value):
    s = requests()
    [m] = feed(s, f"GET / HTTP/1.1\r\ntraceparent: {value}\r\n\r\n".encode(), 1)
    assert m.traceparent == (value if value.startswith("01-") else None)


def test_chunked_request_body():
    wire = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    s = requests()
    [m] = feed(s, wire, 1)
    assert (m.size, m.header_size) == (len(b"3\r\nabc\r\n0\r\n\r\n"), len(wire) - 13)


def test_lf_only_lines():
    s = requests()
    [m] = feed(s, b"GET /lf HTTP/1.1\nHost: h\n\n", 1)
    assert (m.path, m.host, m.header_size) == ("/lf", "h", 26)
    r = responses()
    [m] = feed(r, b"HTTP/1.0 200 OK\nContent-Length: 2\n\nhi", 2)
    assert (m.status_code, m.size) == (200, 2)


def test_empty_lines_between_requests_are_skipped():
    s = requests()
    [a] = feed(s, b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n", 1)
    [b] = feed(s, b"\r\nGET /b HTTP/1.1\r\n\r\n", 2)
    assert (a.path, b.path, s.stats.failures) == ("/a", "/b", 0)


# -- responses -------------------------------------------------------------------------


def test_simple_response():
    r = responses()
    [m] = feed(r, OK, 3)
    assert m == HttpResponse(False, 3, 3, 5, len(OK) - 5, None, 200, "1.1")


def test_status_line_without_reason():
    r = responses()
    [m] = feed(r, b"HTTP/1.1 204\r\n\r\n", 1)
    assert (m.status_code, m.size) == (204, 0)


def test_response_larger_than_capture():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    wire = head + bytes(range(256)) * 390 + b"z" * 160
    assert len(wire) == len(head) + 100000
    r = responses()
    cuts = [65536, 65536 + 20000]
    out = feed_parts(r, wire, cuts, ts0=10)
    [m] = out
    assert (m.size, m.header_size, m.start_ns, m.end_ns) == (100000, len(head), 10, 12)
    assert r.stats.failures == 0 and r.skipped_bytes == 0
    [m2] = feed(r, OK, 13)  # still in sync
    assert m2.size == 5


def test_response_head_split_at_every_byte():
    wire = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\nRetry-After: 1\r\n\r\n"
            b"go away")
    for i in range(len(wire) + 1):
        r = responses()
        [m] = feed_parts(r, wire, [i])
        assert (m.status_code, m.size, m.header_size, m.start_ns) == (
            503, 7, len(wire) - 7, 1 if i else 2), i
        assert m.end_ns == (2 if i < len(wire) else 1)
        assert r.stats.failures == 0


def test_chunked_response_across_feeds_with_chunk_larger_than_capture():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    big = b"3e8\r\n" + b"y" * 1000 + b"\r\n"
    parts = [head + b"5\r\nhel", b"lo\r\n", big, b"1", b"0;ext=1\r\n" + b"z" * 16 + b"\r\n",
             b"0\r\nX-Trailer: t\r\n", b"\r\n"]
    r = responses()
    out = []
    for ts, p in enumerate(parts, 1):
        out += feed(r, p, ts)
    [m] = out
    body = b"".join(parts)[len(head):]
    assert (m.size, m.header_size, m.start_ns, m.end_ns) == (len(body), len(head), 1, 7)
    assert r.stats.failures == 0


def test_chunked_several_chunks_in_one_uncaptured_read():
    # read: chunk a (600 data bytes), chunk b fully in the uncaptured region would lose
    # framing; here the next chunk line starts in the next read: framing is kept.
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    c1 = b"258\r\n" + b"a" * 600 + b"\r\n"
    c2 = b"2000\r\n" + b"b" * 8192 + b"\r\n"
    r = responses()
    assert feed(r, head, 1) == []
    assert feed(r, c1, 2) == []
    assert feed(r, c2, 3) == []
    [m] = feed(r, b"0\r\n\r\n", 4)
    assert (m.size, m.end_ns, r.stats.failures) == (len(c1) + len(c2) + 5, 4, 0)


def test_chunked_last_chunk_beyond_capture_completes():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    tail = b"2000\r\n" + b"b" * 8192 + b"\r\n0\r\n\r\n"  # one write, terminator not captured
    r = responses()
    assert feed(r, head, 1) == []
    [m] = feed(r, tail, 2)
    assert (m.size, m.end_ns, r.stats.failures) == (len(tail), 2, 0)
    [m] = feed(r, OK, 3)
    assert m.status_code == 200


def test_chunked_framing_lost_in_uncaptured_bytes_resyncs():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    two_chunks = b"400\r\n" + b"a" * 1024 + b"\r\n" + b"400\r\n" + b"b" * 1024 + b"\r\n"
    r = responses()
    assert feed(r, head + two_chunks, 1) == []  # 2nd chunk-size line was not captured
    assert r.stats.failures == 1
    assert feed(r, b"c" * 3000, 2) == []  # unknown framing: counted, no more failures
    [m, m2] = feed(r, OK, 3)  # the next response ends the lost one at its last chunk
    assert (m.status_code, m.size, m.start_ns, m.end_ns) == (200, len(two_chunks) + 3000, 1, 2)
    assert (m2.size, m2.start_ns) == (5, 3)
    assert r.stats.failures == 1 and r.stats.messages == 2


def test_chunked_framing_lost_ends_at_visible_last_chunk():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    r = responses()
    feed(r, head + b"400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"b" * 1024 + b"\r\n", 1)
    assert feed(r, b"c" * 5000, 2) == []
    [m] = feed(r, b"3\r\nend\r\n0\r\n\r\n", 3)
    assert (m.end_ns, r.stats.failures) == (3, 1)
    [m] = feed(r, OK, 4)
    assert m.start_ns == 4


def test_request_with_lost_chunk_framing_is_returned_at_once():
    head = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    s = requests()
    [m] = feed(s, head + b"400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"b" * 1024 + b"\r\n", 1)
    assert (m.path, s.stats.failures) == ("/up", 1)
    assert feed(s, b"garbage", 2) == []
    [m] = feed(s, GET, 3)
    assert m.path == "/index.html" and s.stats.failures == 1


def test_keep_alive_responses_and_expect_head():
    r = responses()
    for method in ("GET", "HEAD", "GET"):
        r.expect(method)
    wire = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"  # HEAD: no body follows
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    out = feed(r, wire, 1)
    assert [(m.status_code, m.size) for m in out] == [(200, 2), (200, 0), (404, 0)]
    assert r.stats.failures == 0


def test_expect_takes_the_request_message():
    s, r = requests(), responses()
    [req] = feed(s, b"HEAD /h HTTP/1.1\r\n\r\n", 1)
    r.expect(req)
    [m] = feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", 2)
    assert (m.size, m.end_ns) == (0, 2)


def test_bodiless_204_304_and_interim_responses():
    r = responses()
    wire = (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    out = feed(r, wire, 1)
    assert [(m.status_code, m.size) for m in out] == [(204, 0), (304, 0), (200, 1)]
    assert r.stats.messages == 3 and r.stats.failures == 0


def test_switching_protocols_then_tunnel():
    r = responses()
    [m] = feed(r, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 1)
    assert m.status_code == 101
    assert feed(r, b"\x81\x7e\x01\x00" + b"x" * 256, 2) == []
    assert r.stats.failures == 0 and r.skipped_bytes == 7 + 260


def test_connect_established_then_tunnel():
    r = responses()
    r.expect("CONNECT")
    [m] = feed(r, b"HTTP/1.1 200 Connection Established\r\n\r\n", 1)
    assert m.status_code == 200
    assert feed(r, b"\x16\x03\x03\x00\x50" + b"s" * 80, 2) == []
    assert r.stats.failures == 0


def test_http10_response_read_until_close():
    r = responses()
    assert feed(r, b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>", 1) == []
    assert feed(r, b"x" * 2000, 2, size=2000) == []
    assert feed(r, b"</html>", 3) == []
    [m] = r.close(9)
    assert (m.status_code, m.version, m.size, m.start_ns, m.end_ns) == (200, "1.0", 2013, 1, 3)
    assert r.stats.failures == 0 and r.close(10) == []


def test_connection_close_without_length_until_close():
    r = responses()
    head = b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n"
    assert feed(r, head, 4) == []
    [m] = r.close(8)
    assert (m.status_code, m.size, m.end_ns) == (500, 0, 4)


def test_truncated_body_at_close_is_a_failure():
    r = responses()
    assert feed(r, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 1) == []
    assert r.close(2) == []
    assert r.stats.failures == 1
    s = requests()
    assert feed(s, b"GET / HTT", 1) == []
    assert s.close(2) == [] and s.stats.failures == 1


# -- failures and garbage --------------------------------------------------------------


def test_detect():
    h = HTTP1()
    assert h.detect(GET, True) and not h.detect(GET, False)
    assert h.detect(OK, False) and not h.detect(OK, True)
    for junk in (CLIENT_HELLO, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x01",
                 b"*1\r\n$4\r\nPING\r\n", b"get / HTTP/1.1\r\n", b"GETX / HTTP/1.1", b"",
                 b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/2 200\r\n"):
        assert not h.detect(junk, True) and not h.detect(junk, False), junk
    assert [p.name for p in all_protocols()] == ["http"]


@pytest.mark.parametrize("junk", [
    CLIENT_HELLO,
    bytes(random.Random(1).randrange(256) for _ in range(400)),
    b"\x00" * 64,
    b"hello there\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/2.0\r\n\r\n",
    b"get /x HTTP/1.1\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\n\r\n",
])
def test_garbage_requests_are_skipped_and_counted(junk):
    s = requests()
    assert s.feed(junk, len(junk), 1) == []
    assert s.feed(junk, len(junk), 2) == []
    assert s.stats.failures == 1 and s.stats.messages == 0
    [m] = s.feed(GET, len(GET), 3)  # resyncs at the next start line
    assert m.path == "/index.html" and s.stats.failures == 1


@pytest.mark.parametrize("junk", [
    CLIENT_HELLO,
    b"HTTP/1.1 2OO OK\r\n\r\n",
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/1.1 200OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
])
def test_garbage_responses_are_skipped_and_counted(junk):
    r = responses()
    assert r.feed(junk, len(junk), 1) == []
    assert r.stats.failures == 1
    out = r.feed(OK, len(OK), 2)
    assert out[-1].status_code == 200 and out[-1].start_ns == 2
    assert r.stats.failures == 1


def test_bad_content_length_on_request_keeps_the_request():
    s = requests()
    [m] = feed(s, b"POST /x HTTP/1.1\r\nContent-Length: abc\r\n\r\nbody", 1)
    assert m.path == "/x" and s.stats.failures == 1
    [m] = feed(s, b"POST /y HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 2)
    assert m.path == "/y" and s.stats.failures == 2


def test_head_beyond_capture_is_lost():
    # one 2000-byte write, headers longer than the 512 captured bytes
    wire = b"GET /long HTTP/1.1\r\nX-Pad: " + b"p" * 1900 + b"\r\n\r\n"
    s = requests()
    assert feed(s, wire, 1) == []
    assert s.stats.failures == 1 and s._buf == bytearray()
    [m] = feed(s, GET, 2)
    assert m.start_ns == 2


def test_next_message_starting_in_uncaptured_bytes_is_lost():
    s = requests()
    wire = b"POST /a HTTP/1.1\r\nContent-Length: 600\r\n\r\n" + b"x" * 600 + GET
    [m] = feed(s, wire, 1)
    assert (m.path, m.size, s.stats.failures) == ("/a", 600, 1)
    assert s.skipped_bytes == len(GET)


def test_oversized_headers_are_bounded():
    s = requests()
    out = feed(s, b"GET /big HTTP/1.1\r\n", 1)
    for i in range(40):  # 40 small reads of 300 header bytes each, no end of head
        out += feed(s, b"X-H: " + b"v" * 293 + b"\r\n", 2 + i)
        assert len(s._buf) <= MAX_HEAD
    assert out == [] and s.stats.failures == 1
    [m] = feed(s, GET, 100)
    assert m.path == "/index.html"


def test_fuzz_random_bytes_never_raise_and_stay_bounded():
    rng = random.Random(0xBEE)
    valid = [GET, OK, b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
             b"HTTP/1.0 200 OK\r\n\r\nbody"]
    for trial in range(3000):
        s = HttpStream(rng.random() < 0.5)
        for _ in range(rng.randrange(1, 12)):
            kind = rng.random()
            if kind < 0.3:
                data = rng.randbytes(rng.randrange(0, 600))
            elif kind < 0.7:  # a valid message, mutated and cut
                data = bytearray(rng.choice(valid) * rng.randrange(1, 3))
                for _ in range(rng.randrange(0, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data[rng.randrange(len(data)):] if rng.random() < 0.3 else data)
            else:
                data = rng.choice(valid)[:rng.randrange(1, 40)]
            size = len(data) + (rng.choice((0, 0, 1, 5, 2, 1000, 10**6)) if rng.random() < 0.3 else 0)
            data = data[:CAPTURE]
            out = s._feed(data, size, trial)
            assert all(isinstance(m, (HttpRequest, HttpResponse)) for m in out)
            assert len(s._buf) <= MAX_HEAD
            assert len(s._expected) <= 64
        s.close(trial)
        assert not s._buf and s._msg is None


# -- describe --------------------------------------------------------------------------


def _pair(req_wire: bytes, resp_wire: bytes | None) -> tuple:
    s, r = requests(), responses()
    [req] = feed(s, req_wire, 1)
    if resp_wire is None:
        return req, None
    r.expect(req)
    [resp] = feed(r, resp_wire, 2)
    return req, resp


def test_describe_server_span():
    req, resp = _pair(b"POST /orders?id=7 HTTP/1.1\r\nHost: shop:8080\r\nContent-Length: 3\r\n\r\nabc",
                      b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\n\r\n{\"id\": \"7\"}\n")
    d = HTTP1().describe(req, resp, SpanKind.SERVER, with_query=False, route="/orders")
    assert d.name == "POST /orders"
    assert d.error_type is None
    assert d.attributes == {
        "http.request.method": "POST",
        "url.path": "/orders",
        "http.route": "/orders",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.request.body.size": 3,
        "http.response.status_code": 201,
        "http.response.body.size": 12,
    }


def test_describe_with_query():
    req, resp = _pair(b"GET /s?q=1&r=2 HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    d = HTTP1().describe(req, resp, SpanKind.SERVER, with_query=True)
    assert d.attributes["url.query"] == "q=1&r=2"
    assert "url.query" not in HTTP1().describe(req, resp, SpanKind.SERVER, False).attributes
    assert "http.response.body.size" not in d.attributes


def test_describe_client_span_with_host():
    req, resp = _pair(b"GET /v1/items HTTP/1.0\r\nHost: api.example.com:8443\r\n\r\n",
                      b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
    d = HTTP1().describe(req, resp, SpanKind.CLIENT, with_query=True)
    assert d.name == "GET" and d.error_type is None  # no route: the method alone
    assert d.attributes == {
        "http.request.method": "GET",
        "url.path": "/v1/items",
        "url.scheme": "http",
        "network.protocol.version": "1.0",
        "server.address": "api.example.com",
        "http.response.status_code": 200,
        "http.response.body.size": 2,
    }
    server = HTTP1().describe(req, resp, SpanKind.SERVER, with_query=True)
    assert "server.address" not in server.attributes


def test_describe_ipv6_host():
    req, resp = _pair(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n")
    assert HTTP1().describe(req, resp, SpanKind.CLIENT, False).attributes["server.address"] == "::1"


def test_describe_404_is_client_error_only():
    req, resp = _pair(GET, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert HTTP1().describe(req, resp, SpanKind.CLIENT, False).error_type == "404"
    assert HTTP1().describe(req, resp, SpanKind.SERVER, False).error_type is None


def test_describe_500_is_error_on_both_sides():
    req, resp = _pair(GET, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
    for kind in SpanKind:
        d = HTTP1().describe(req, resp, kind, False)
        assert d.error_type == "500" and d.attributes["http.response.status_code"] == 500


def test_describe_incomplete():
    req, _ = _pair(GET, None)
    d = HTTP1().describe(req, None, SpanKind.SERVER, False)
    assert d.error_type == "incomplete"
    assert "http.response.status_code" not in d.attributes


def test_describe_unknown_method():
    req, resp = _pair(b"PROPFIND /dav/ HTTP/1.1\r\n\r\n", b"HTTP/1.1 207 Multi-Status\r\nContent-Length: 0\r\n\r\n")
    d = HTTP1().describe(req, resp, SpanKind.SERVER, False, route="/dav/")
    assert d.name == "HTTP /dav/"
    assert d.attributes["http.request.method"] == "_OTHER"
    assert d.attributes["http.request.method_original"] == "PROPFIND"
    assert span_name("GET", "/a/{id}") == "GET /a/{id}"
    assert span_name("GET", None) == "GET"
    assert HTTP1().path(req) == "/dav/"


def test_chunked_terminator_crlf_beyond_capture_completes():
    r = responses()
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert feed(r, head + b"3\r\nabc\r\n0\r\n", 1) == []
    [m] = feed(r, b"\r\n", 2, capture=0)  # the final CRLF moved but was not captured
    assert (m.size, m.end_ns, r.stats.failures) == (13, 2, 0)


def test_internal_error_costs_a_failure_not_an_exception(monkeypatch):
    s = requests()

    def boom(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(s, "_head", boom)
    assert s.feed(GET, len(GET), 1) == []
    assert s.stats.failures == 1
    monkeypatch.undo()
    [m] = s.feed(GET, len(GET), 2)
    assert m.start_ns == 2


def test_expect_is_ignored_on_request_streams():
    s = requests()
    s.expect("HEAD")
    [m] = feed(s, b"POST /x HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 1)
    assert m.size == 1 and not s._expected
