"""HTTP/2 from H2Chunk records: real h2 client/server byte streams cut as the kernel would cut them
(DATA payloads elided, chunks cut anywhere), then exact streams, desyncs and bounds."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.bpf.events import ConnTuple, H2Chunk, Role
from beyla_sidecar.protocols import all_protocols, guess_protocol
from beyla_sidecar.protocols import http2 as http2_module
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import SERVER_METRICS, HttpRequest
from beyla_sidecar.protocols.http2 import HTTP2, H2Response, StreamDone, frames_prefix

from .h2wire import SOCK, TID_UP, Wire, chunks, frame_types, truncate
from .test_redis import cmd

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def run(wire: Wire, role: Role = Role.SERVER, rng: random.Random | None = None, merge: int = 1,
        h: HTTP2 | None = None) -> tuple[HTTP2, list[StreamDone]]:
    h = h or HTTP2()
    return h, [d for c in chunks(wire, role, rng, merge) for d in h.chunk(c)]


def simple_wire() -> Wire:
    w = Wire()
    w.request(1, "POST", "/items?id=7&x=1", body=40000,
              extra=[("content-type", "application/json"), ("authorization", "Bearer s3cr3t"), ("traceparent", TP)])
    w.flush(100)
    w.response(1, 201, 1234, extra=[("set-cookie", "session=s3cr3t")])
    w.flush(200)
    w.request(3, "GET", "/health")
    w.flush(300)
    w.response(3, 404)
    w.flush(400)
    return w


def check_simple(out: list[StreamDone], h: HTTP2) -> None:
    assert [d.stream_id for d in out] == [1, 3]
    post, get = out
    assert post.protocol is h and post.tid == TID_UP
    rq, rs = post.parsed.request, post.parsed.response
    assert isinstance(rq, HttpRequest) and isinstance(rs, H2Response)
    assert (rq.method, rq.path, rq.query, rq.version, rq.host) == ("POST", "/items", "id=7&x=1", "2", "api.example:8443")
    assert rq.shape == ("POST", "/items", "id=7&x=1", "2", "api.example:8443")
    assert (rq.start_ns, rq.end_ns, rq.size, rq.traceparent) == (100, 100, 40000, TP)
    assert (rs.status_code, rs.start_ns, rs.end_ns, rs.size, rs.reset, rs.grpc_status) == (201, 200, 200, 1234, None, None)
    assert rs.shape == (201, "2", None, None)
    rq, rs = get.parsed.request, get.parsed.response
    assert (rq.method, rq.path, rq.query, rq.start_ns, rq.end_ns, rq.size, rq.traceparent) == ("GET", "/health", "", 300, 300, 0, None)
    assert (rs.status_code, rs.start_ns, rs.end_ns, rs.size) == (404, 400, 400, 0)
    assert "s3cr3t" not in repr(out)  # Authorization and Cookie are never kept
    assert h.desyncs == {} and h.stream_drops == 0


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_one_chunk_per_transfer(role: Role) -> None:
    h, out = run(simple_wire(), role)
    check_simple(out, h)


@pytest.mark.parametrize("seed", range(40))
def test_cut_anywhere(seed: int) -> None:
    """Cuts inside frame headers, header blocks and elided payloads change nothing."""
    rng = random.Random(seed)
    h, out = run(simple_wire(), rng.choice([Role.SERVER, Role.CLIENT]), rng)
    check_simple(out, h)


def test_merged_transfers_take_the_last_time() -> None:
    """A chunk of several transfers has the last one's time: transfers at 100 and 300 make one
    request chunk at 300, those at 200 and 400 one response chunk at 400."""
    h, out = run(simple_wire(), merge=2)
    assert [(d.parsed.request.method, d.parsed.request.start_ns, d.parsed.response.status_code,  # type: ignore[union-attr]
             d.parsed.response.size, d.parsed.response.end_ns) for d in out] == [  # type: ignore[union-attr]
        ("POST", 300, 201, 1234, 400), ("GET", 300, 404, 0, 400)]
    assert h.desyncs == {}


def test_twenty_interleaved_streams() -> None:
    """20 requests at once, answered in reverse order with interleaved DATA: times and sizes per stream."""
    w = Wire()
    sids = [1 + 2 * k for k in range(20)]
    for k, sid in enumerate(sids):
        w.request(sid, "POST" if k % 2 else "GET", f"/s/{k}", body=100 * k if k % 2 else 0)
        w.flush(1000 + k)
    for k, sid in enumerate(reversed(sids)):
        w.server.send_headers(sid, [(":status", "200")])
        w.flush(2000 + k)
    for k, sid in enumerate(sids):
        w.server.send_data(sid, b"x" * (10 + k))  # first half of each body
        w.flush(3000 + k)
    for k, sid in enumerate(reversed(sids)):
        w.server.send_data(sid, b"y" * k, end_stream=True)
        w.flush(4000 + k)
    for seed in (None, 1, 2):
        h, out = run(w, rng=None if seed is None else random.Random(seed))
        assert [d.stream_id for d in out] == list(reversed(sids))
        for d in out:
            k = sids.index(d.stream_id)
            rq, rs = d.parsed.request, d.parsed.response
            assert isinstance(rq, HttpRequest) and isinstance(rs, H2Response)
            assert (rq.path, rq.start_ns, rq.end_ns, rq.size) == (f"/s/{k}", 1000 + k, 1000 + k, 100 * k if k % 2 else 0)
            assert (rs.start_ns, rs.end_ns, rs.size) == (2000 + 19 - k, 4000 + 19 - k, 10 + k + 19 - k)
        assert h.desyncs == {} and h.stream_drops == 0


def test_continuation_and_big_headers() -> None:
    """A header block over the 16 KiB frame size: HEADERS + CONTINUATION frames."""
    w = Wire()
    w.request(1, "GET", "/big", extra=[("x-big", "v" * 25000), ("cookie", "c" * 10000)])
    w.flush(10)
    w.response(1, 200, 5, extra=[("x-big-too", "w" * 20000)])
    w.flush(20)
    assert frame_types(b"".join(d for _, d in w.up)).count(9) == 1  # CONTINUATION
    assert frame_types(b"".join(d for _, d in w.down)).count(9) == 1
    for seed in (None, 3, 4):
        h, out = run(w, rng=None if seed is None else random.Random(seed))
        (d,) = out
        assert (d.parsed.request.path, d.parsed.response.status_code, d.parsed.response.size) == ("/big", 200, 5)  # type: ignore[attr-defined,union-attr]
        assert d.parsed.request.header_size > 25000
        assert "vvvv" not in repr(d) and "cccc" not in repr(d)


def test_informational_response_is_skipped() -> None:
    w = Wire()
    w.request(1, "POST", "/upload", body=10, extra=[("expect", "100-continue")])
    w.flush(10)
    w.server.send_headers(1, [(":status", "100")])
    w.flush(20)
    w.response(1, 200, 3)
    w.flush(30)
    _, out = run(w)
    (d,) = out
    assert (d.parsed.response.status_code, d.parsed.response.start_ns, d.parsed.response.end_ns) == (200, 30, 30)  # type: ignore[union-attr]


def test_rst_stream_ends_a_stream_as_an_error() -> None:
    w = Wire()
    w.request(1, "GET", "/slow")
    w.request(3, "GET", "/refused")
    w.request(5, "GET", "/cut")
    w.flush(10)
    w.client.reset_stream(1, 8)  # CANCEL, before any response
    w.flush(20)
    w.server.reset_stream(3, 7)  # REFUSED_STREAM
    w.server.send_headers(5, [(":status", "200")])
    w.server.send_data(5, b"partial")
    w.flush(30)
    w.server.reset_stream(5, 2)  # INTERNAL_ERROR after headers and some data
    w.flush(40)
    h, out = run(w)
    got = {d.stream_id: d.parsed.response for d in out}
    assert {k: (r.status_code, r.reset, r.start_ns, r.end_ns, r.size) for k, r in got.items()} == {  # type: ignore[union-attr]
        1: (0, 8, 20, 20, None), 3: (0, 7, 30, 30, None), 5: (200, 2, 30, 40, 7)}
    descs = {d.stream_id: h.describe(d.parsed.request, d.parsed.response, SpanKind.SERVER, False) for d in out}
    assert descs[1].error_type == "CANCEL" and "http.response.status_code" not in descs[1].attributes
    assert descs[3].error_type == "REFUSED_STREAM"
    assert descs[5].error_type == "INTERNAL_ERROR" and descs[5].attributes["http.response.status_code"] == 200


def test_no_error_reset_after_the_response_began_is_no_error() -> None:
    """curl resets a stream with NO_ERROR once the body its content-length announced is in, before the
    server's END_STREAM: the status code tells (a 200 is fine, a 404 a client error), not the reset."""
    w = Wire()
    w.request(1, "GET", "/ok")
    w.request(3, "GET", "/missing")
    w.flush(10)
    for sid, status in ((1, "200"), (3, "404")):
        w.server.send_headers(sid, [(":status", status), ("content-length", "3")])
        w.server.send_data(sid, b"abc")
    w.flush(20)
    w.client.reset_stream(1, 0)
    w.client.reset_stream(3, 0)
    w.flush(30)
    h, out = run(w, Role.CLIENT)
    descs = [h.describe(d.parsed.request, d.parsed.response, SpanKind.CLIENT, False) for d in out]
    assert [(d.attributes["http.response.status_code"], d.error_type) for d in descs] == [(200, None), (404, "404")]


def test_reset_once_the_announced_body_is_in_is_a_complete_response() -> None:
    """Whatever its code: a stream reset after its content-length's bytes came ended normally; one
    reset short of them is an error."""
    w = Wire()
    w.request(1, "GET", "/whole")
    w.request(3, "GET", "/short")
    w.flush(10)
    for sid, sent in ((1, b"abcde"), (3, b"ab")):
        w.server.send_headers(sid, [(":status", "200"), ("content-length", "5")])
        w.server.send_data(sid, sent)
    w.flush(20)
    w.server.reset_stream(1, 5)  # STREAM_CLOSED
    w.server.reset_stream(3, 5)
    w.flush(30)
    h, out = run(w, Role.CLIENT)
    assert [(d.parsed.response.reset, d.parsed.response.size) for d in out] == [(None, 5), (5, 2)]  # type: ignore[union-attr]
    descs = [h.describe(d.parsed.request, d.parsed.response, SpanKind.CLIENT, False) for d in out]
    assert [d.error_type for d in descs] == [None, "STREAM_CLOSED"]


def test_describe_and_metrics_as_http1() -> None:
    h, out = run(simple_wire())
    post, get = out
    desc = h.describe(post.parsed.request, post.parsed.response, SpanKind.SERVER, True, route="/items")
    assert desc.name == "POST /items" and desc.error_type is None
    assert desc.attributes == {"http.request.method": "POST", "url.path": "/items", "http.route": "/items",
                               "url.query": "id=7&x=1", "url.scheme": "http", "network.protocol.version": "2",
                               "http.response.status_code": 201}
    assert "url.query" not in h.describe(post.parsed.request, post.parsed.response, SpanKind.SERVER, False).attributes
    client = h.describe(get.parsed.request, get.parsed.response, SpanKind.CLIENT, False, tls=True)
    assert client.error_type == "404" and client.attributes["server.address"] == "api.example"
    assert client.attributes["url.scheme"] == "https"
    assert h.path(post.parsed.request) == "/items"
    conn = ConnTuple("10.0.0.1", 8443, "10.0.0.2", 40000)
    iset, values = h.metric_attributes(SpanKind.SERVER, conn, desc, "/items", frozenset())
    assert iset is SERVER_METRICS and values == ("POST", 201, "/items", None, None, None)
    assert h.metric_values(post.parsed.request, post.parsed.response) == (100e-9, 40000, 1234)
    assert h.size_attributes == ("http.request.body.size", "http.response.body.size")


def test_invalid_traceparent_is_dropped() -> None:
    w = Wire()
    w.request(1, "GET", "/", extra=[("traceparent", "00-zz-b7ad6b7169203331-01")])
    w.flush(10)
    w.response(1)
    w.flush(20)
    _, (d,) = run(w)
    assert d.parsed.request.traceparent is None


@pytest.mark.parametrize("which", ["up", "down"])
def test_seq_gap_desyncs_and_reports_nothing_after(which: str) -> None:
    w = Wire()
    w.request(1, "GET", "/before")
    w.flush(10)
    w.response(1)
    w.flush(20)
    w.request(3, "GET", "/lost")
    w.request(5, "GET", "/inflight")
    w.flush(30)
    w.response(3)
    w.flush(40)
    w.response(5)
    w.request(7, "GET", "/after")
    w.flush(50)
    w.response(7)
    w.flush(60)
    h = HTTP2()
    cs = chunks(w)
    lost = next(c for c in cs if c.ts_ns == 30) if which == "up" else next(c for c in cs if c.ts_ns == 40)
    out = [d for c in cs if c is not lost for d in h.chunk(c)]
    assert [d.parsed.request.path for d in out] == ["/before"]  # type: ignore[attr-defined]
    assert h.desyncs == {"gap": 1}
    assert h.stream_drops == (0 if which == "up" else 3)  # down: 3, 5 and 7 were in flight


def test_truncated_chunk_desyncs() -> None:
    w = simple_wire()
    h = HTTP2()
    out = []
    for c in chunks(w):
        out += h.chunk(truncate(c) if c.ts_ns == 300 else c)
    assert [d.stream_id for d in out] == [1] and h.desyncs == {"truncated": 1}


def test_closed_forgets_the_connection() -> None:
    w = Wire()
    w.request(1, "GET", "/pending")
    w.flush(10)
    h = HTTP2()
    assert [d for c in chunks(w) for d in h.chunk(c)] == []
    h.closed(SOCK)
    assert h.stream_drops == 1
    _, out = run(simple_wire(), h=h)  # the id reused by a new connection: starts from seq 0
    assert [d.stream_id for d in out] == [1, 3] and h.desyncs == {}


def test_streams_per_connection_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http2_module, "MAX_STREAMS", 3)
    w = Wire()
    for sid in (1, 3, 5, 7, 9):
        w.request(sid, "GET", f"/{sid}")
    w.flush(10)
    for sid in (1, 3, 5, 7, 9):
        w.response(sid)
    w.flush(20)
    h, out = run(w)
    assert [d.stream_id for d in out] == [1, 3, 5] and h.stream_drops == 2 and h.desyncs == {}


def test_huge_dynamic_table() -> None:
    """A 64 KiB table (SETTINGS_HEADER_TABLE_SIZE) filled with distinct headers and reused: exact paths."""
    w = Wire(header_table_size=65536)
    paths = []
    for k in range(300):
        sid = 1 + 2 * k
        path = f"/tenant/{k % 40}/item"
        paths.append(path)
        w.request(sid, "GET", path, extra=[(f"x-h{k % 150}", f"value-{k % 150}-" + "z" * 200), ("x-req", str(k))])
        w.flush(10 + 2 * k)
        w.response(sid, 200 + k % 3, k)
        w.flush(11 + 2 * k)
    assert w.client.encoder.header_table_size == 65536
    for seed in (None, 5):
        h, out = run(w, rng=None if seed is None else random.Random(seed))
        assert [d.parsed.request.path for d in out] == paths  # type: ignore[attr-defined]
        assert [d.parsed.response.status_code for d in out] == [200 + k % 3 for k in range(300)]  # type: ignore[union-attr]
        assert h.desyncs == {}


def test_table_size_above_the_advertised_limit_desyncs() -> None:
    """An encoder growing its table past what the decoding side advertised is a lost framing."""
    w = Wire()
    w.client.encoder.header_table_size = 65536  # without the server's SETTINGS allowing it
    w.server.decoder.max_allowed_table_size = 65536  # (h2's server would refuse it)
    w.request(1, "GET", "/")
    w.flush(10)
    h, out = run(w)
    assert out == [] and h.desyncs == {"hpack": 1}


def test_role_unknown_and_framing_errors_are_counted() -> None:
    h = HTTP2()
    c = H2Chunk(SOCK, 1, 1, 1, Role.SERVER, True, 0, 0, 5, 9, b"\x00\x00\x04\x06\x00\x00\x00\x00\x00")  # PING of 4
    assert h.chunk(c) == [] and h.desyncs == {"framing": 1}
    assert h.chunk(c._replace(sock_id=2, role=Role.UNKNOWN)) == [] and h.desyncs == {"framing": 1, "role": 1}
    assert h.chunk(c._replace(sock_id=3, moved=3)) == [] and h.desyncs["framing"] == 2  # moved < data


def test_fuzz_never_raises() -> None:
    rng = random.Random(7)
    w = simple_wire()
    base = chunks(w, rng=random.Random(1))
    for _ in range(300):
        h = HTTP2()
        for c in base:
            if rng.random() < 0.2:
                data = bytearray(c.data)
                for _ in range(rng.randint(1, 4)):
                    if data:
                        data[rng.randrange(len(data))] = rng.randrange(256)
                c = c._replace(data=bytes(data), moved=max(c.moved + rng.randint(-3, 3), 0))
            h.chunk(c)
        for _ in range(5):
            data = rng.randbytes(rng.randint(0, 64))
            h.chunk(H2Chunk(rng.randint(1, 3), 1, 1, 1, rng.choice(list(Role)), rng.random() < 0.5,
                            rng.choice([0, 4]), rng.randint(0, 2), 1, len(data) + rng.randint(0, 5), data))


def test_exchange_records_never_match() -> None:
    h = next(p for p in all_protocols() if p.name == "http2")
    assert isinstance(h, HTTP2) and h.grpc.name == "grpc"
    assert not h.detect(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"")


def _midstream_prefix() -> bytes:
    """What a client sends on a connection opened before the sidecar: a request on a used table."""
    w = Wire()
    w.request(1, "GET", "/a")
    w.flush(10)
    w.response(1)
    w.flush(20)
    w.request(3, "POST", "/b", body=20)
    w.flush(30)
    return w.up[-1][1]


def test_guess_protocol_names_frames_http2() -> None:
    prefix = _midstream_prefix()
    assert guess_protocol(prefix[:256], b"") == "http2"
    assert frames_prefix(b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00\x10\x00")  # one WINDOW_UPDATE, exactly
    assert not frames_prefix(b"\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x00")  # cut: not exactly one frame
    # one frame then the first bytes of the next header (a prefix that holds a sendmsg's first iovec)
    headers = frame(1, 0x4, 3, b"\x83\x86\xbe\xbf\xc0")
    assert frames_prefix(headers + b"\x00\x00\x04\x08\x00")
    assert frames_prefix(headers + b"\x00\x00")
    assert not frames_prefix(headers + b"\x00\x00\x04\x0a\x00")  # an extension frame type: not guessed
    assert not frames_prefix(headers + b"\x01\x00\x00\x08")  # longer than SETTINGS_MAX_FRAME_SIZE's default


@pytest.mark.parametrize("request_prefix", [
    cmd("SET", "key", "value"), cmd("PING"), b"PING\r\n",  # Redis
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",  # PostgreSQL SSLRequest
    b"\x00\x00\x00\x54\x00\x03\x00\x00user\x00app\x00database\x00db\x00\x00",  # startup
    b"Q\x00\x00\x00\x0dSELECT 1\x00", b"X\x00\x00\x00\x04",
    b"\x21\x00\x00\x00\x03SELECT * FROM t WHERE a = 1", b"\x01\x00\x00\x00\x0e", b"\x05\x00\x00\x00\x02db1\x00",  # MySQL
    b"get key\r\n", b"\x80\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x03" + b"\x00" * 12 + b"key",  # memcached
    b"\x00\x00\x00\x1f\x00\x03\x00\x0c\x00\x00\x00\x01\x00\x07client1\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # Kafka
    b"\x00\x00\x01\x04\x00\x00\x00\x09" + b"\x00" * 260,  # Kafka, 260 bytes: a frame-like first header
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
])
def test_guess_protocol_no_false_http2(request_prefix: bytes) -> None:
    assert not frames_prefix(request_prefix)
    assert guess_protocol(request_prefix, b"") != "http2"


def frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def test_remembered_header_blocks_follow_the_dynamic_table() -> None:
    """The same indexed block means another header once the table changed: `0x82 0x86 0xbe` is
    GET http <dynamic entry 62>, which is :path /a until /b is inserted (hand-made HPACK)."""
    insert_a, insert_b = b"\x82\x86\x44\x02/a", b"\x82\x86\x44\x02/b"  # literal with incremental indexing
    indexed = b"\x82\x86\xbe"
    blocks = (insert_a, indexed, insert_b, indexed, indexed)
    h = HTTP2()
    paths = []
    up = down = 0
    for k, block in enumerate(blocks):
        sid = 1 + 2 * k
        request = frame(1, 0x5, sid, block)  # HEADERS, END_STREAM | END_HEADERS
        response = frame(1, 0x5, sid, b"\x88")  # :status 200
        for chunk in (H2Chunk(SOCK, 1, 1, 9, Role.SERVER, True, 0, up, 10 * k, len(request), request),
                      H2Chunk(SOCK, 1, 1, 9, Role.SERVER, False, 0, down, 10 * k + 5, len(response), response)):
            paths += [d.parsed.request.path for d in h.chunk(chunk)]  # type: ignore[attr-defined]
        up, down = up + 1, down + 1
    assert paths == ["/a", "/a", "/b", "/b", "/b"]
    assert h.desyncs == {}
