"""Tracker with the real HTTP/1.x parser and synthetic kernel records."""

from __future__ import annotations

import struct

import pytest

from beyla_sidecar.bpf.events import NO_TUPLE, ConnTuple, End, EventType, ExchangeRecord, Role
from beyla_sidecar.protocols import all_protocols, guess_protocol
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1, HttpRequest, HttpResponse
from beyla_sidecar.tracker.connections import DETECT_ATTEMPTS, PARENT_WAIT_NS, RECENT_PARENTS, Tracker
from beyla_sidecar.tracker.context import PARENT_BASED_ALWAYS_ON, AlwaysOff, ParentBased, Sampler, TraceContext
from beyla_sidecar.tracker.exchange import Exchange

from .records import PID, REQ, RESP, TP, conn_event, exchange, ns_pid

SERVER_TUPLE = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
CLIENT_TUPLE = ConnTuple("10.0.0.1", 41000, "10.0.0.3", 80)
REDIS_TUPLE = ConnTuple("10.0.0.1", 6379, "10.0.0.4", 50000)
TRACE_ID, PARENT_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
CLIENT_HELLO = bytes.fromhex("160301020001000" "1fc0303" + "ab" * 32 + "20" + "cd" * 32)
PING, PONG = b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"


class Recorder:
    """A tracker whose exchanges are kept in `out`."""

    def __init__(self, max_connections: int = 65536, sampler: Sampler = PARENT_BASED_ALWAYS_ON) -> None:
        self.http = HTTP1()
        self.out: list[Exchange] = []
        self.tracker = Tracker((self.http,), self.out.append, max_connections, sampler)

    def open(self, sock: int, role: Role = Role.SERVER, conn: ConnTuple = SERVER_TUPLE, pid: int = PID) -> None:
        self.tracker.handle(conn_event(EventType.CONN_OPEN, sock, role, conn, pid))

    def close(self, sock: int) -> None:
        self.tracker.handle(conn_event(EventType.CONN_CLOSE, sock))

    def exchange(self, sock: int, start: int, request: bytes = REQ, response: bytes | None = RESP,
                 **kw: object) -> ExchangeRecord:
        rec = exchange(sock, start, request, response, **kw)  # type: ignore[arg-type]
        self.tracker.exchange(rec)
        return rec


def root(ctx: TraceContext) -> bool:
    return ctx.trace_id != 0 and ctx.span_id != 0 and ctx.parent_span_id == 0 and not ctx.parent_remote


def child_of(ctx: TraceContext, parent: TraceContext) -> bool:
    return (ctx.trace_id, ctx.parent_span_id, ctx.parent_remote) == (parent.trace_id, parent.span_id, False) \
        and ctx.span_id not in (0, parent.span_id)


def test_server_exchange_from_one_record() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000, tid=PID + 7)
    [ex] = r.out
    assert ex == Exchange(
        r.http, SpanKind.SERVER,
        HttpRequest(True, 1000, 1010, 0, len(REQ), None, "GET", "/a", "", "1.1", "svc"),
        HttpResponse(False, 1020, 1030, 2, len(RESP) - 2, None, 200, "1.1"),
        ex.context, PID, PID + 7, ns_pid(PID), SERVER_TUPLE, False)
    assert root(ex.context) and ex.context.sampled
    assert (ex.start_ns, ex.end_ns) == (1000, 1030)
    s = r.tracker.stats
    assert (s.records, s.bytes, s.exchanges, s.duplicates, s.parse_failures) == (
        1, len(REQ) + len(RESP), 1, 0, {})


def test_client_role_comes_from_conn_open() -> None:
    r = Recorder()
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.exchange(2, 1000, role=Role.CLIENT)
    [ex] = r.out
    assert (ex.kind, ex.conn) == (SpanKind.CLIENT, CLIENT_TUPLE) and root(ex.context)


def test_record_without_conn_open_takes_the_records_role() -> None:
    r = Recorder()
    r.exchange(3, 1000, role=Role.CLIENT, pid=PID + 1)  # its CONN_OPEN was lost
    [ex] = r.out
    assert (ex.kind, ex.conn, ex.pid, ex.ns_pid) == (SpanKind.CLIENT, NO_TUPLE, PID + 1, ns_pid(PID + 1))
    assert len(r.tracker) == 1 and r.tracker.has_connections(PID + 1)


def test_keepalive_exchanges_in_order() -> None:
    r = Recorder()
    r.open(1)
    for i, status in enumerate((b"201 Created", b"404 Not Found", b"200 OK")):
        r.exchange(1, 1000 + 100 * i, REQ.replace(b"/a", b"/%d" % i), RESP.replace(b"200 OK", status))
    assert [(ex.request.path, ex.response.status_code, ex.start_ns)  # type: ignore[attr-defined,union-attr]
            for ex in r.out] == [("/0", 201, 1000), ("/1", 404, 1100), ("/2", 200, 1200)]


def test_no_response() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000, response=None, end=End.CLOSE)
    [ex] = r.out
    assert ex.response is None and (ex.start_ns, ex.end_ns) == (1000, 1010)


def test_no_response_lasts_until_the_connection_closed() -> None:
    r = Recorder()
    r.open(1)
    rec = exchange(1, 1000, response=None, end=End.CLOSE)._replace(resp_end_ns=5_000_000)  # the kernel's close time
    r.tracker.exchange(rec)
    [ex] = r.out
    assert ex.response is None and (ex.start_ns, ex.end_ns) == (1000, 5_000_000)
    assert r.http.metric_values(ex.request, None)[0] == (5_000_000 - 1000) / 1e9


def test_incoming_traceparent_continues_the_trace() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000, REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {TP}\r\n\r\n".encode()))
    r.exchange(1, 2000, REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {TP[:-2]}00\r\n\r\n".encode()))
    sampled, dropped = (ex.context for ex in r.out)
    assert sampled == TraceContext(TRACE_ID, sampled.span_id, PARENT_ID, True, True)
    assert dropped == TraceContext(TRACE_ID, dropped.span_id, PARENT_ID, True, False)  # the caller's decision
    assert sampled.span_id not in (0, PARENT_ID, dropped.span_id)


def test_client_record_after_its_parent_is_its_child() -> None:
    r = Recorder()
    r.open(1)
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.exchange(1, 1000, REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {TP}\r\n\r\n".encode()))
    r.exchange(2, 1005, role=Role.CLIENT, parent=(1, 1000))
    server, client = r.out
    assert server.kind is SpanKind.SERVER and client.kind is SpanKind.CLIENT
    assert server.context.trace_id == TRACE_ID and child_of(client.context, server.context)
    assert client.context.sampled and r.tracker.waiting == 0


def test_client_record_before_its_parent_waits_for_it() -> None:
    r = Recorder()
    r.open(1)
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.exchange(2, 1005, role=Role.CLIENT, parent=(1, 1000))
    r.exchange(2, 1100, role=Role.CLIENT, parent=(1, 1000))
    assert r.out == [] and r.tracker.waiting == 2
    r.exchange(1, 900)  # another exchange of the same connection is not the parent
    assert len(r.out) == 1 and r.tracker.waiting == 2
    r.exchange(1, 1000, REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {TP}\r\n\r\n".encode()))
    _, server, first, second = r.out
    assert [ex.kind for ex in r.out] == [SpanKind.SERVER, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.CLIENT]
    assert (first.start_ns, second.start_ns) == (1005, 1100)
    assert server.context.trace_id == TRACE_ID
    assert child_of(first.context, server.context) and child_of(second.context, server.context)
    assert first.context.span_id != second.context.span_id
    assert r.tracker.waiting == 0
    r.tracker.expire(1 << 62)
    assert len(r.out) == 4


def test_client_whose_parent_never_comes_goes_out_as_a_root() -> None:
    r = Recorder()
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.exchange(2, 5000, role=Role.CLIENT, parent=(1, 4000))
    r.tracker.expire(5000 + PARENT_WAIT_NS - 1)
    assert r.out == [] and r.tracker.waiting == 1
    r.tracker.expire(5000 + PARENT_WAIT_NS)
    [client] = r.out
    assert client.kind is SpanKind.CLIENT and root(client.context) and client.context.sampled
    assert r.tracker.waiting == 0
    r.open(1)
    r.exchange(1, 4000)  # too late: the parent alone
    assert [ex.kind for ex in r.out] == [SpanKind.CLIENT, SpanKind.SERVER]


def test_client_without_parent_is_a_root_at_once() -> None:
    r = Recorder()
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.exchange(2, 1000, role=Role.CLIENT)
    [client] = r.out
    assert root(client.context) and r.tracker.waiting == 0


def test_parents_remembered_are_bounded() -> None:
    r = Recorder()
    r.open(1)
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    for i in range(2 * RECENT_PARENTS):  # at twice the bound the oldest half is forgotten
        r.exchange(1, 1000 + i)
    r.exchange(2, 10_000_000, role=Role.CLIENT, parent=(1, 1000 + RECENT_PARENTS - 1))  # forgotten
    r.exchange(2, 10_000_100, role=Role.CLIENT, parent=(1, 1000 + RECENT_PARENTS))  # the oldest kept
    assert len(r.out) == 2 * RECENT_PARENTS + 1 and r.tracker.waiting == 1
    assert child_of(r.out[-1].context, r.out[RECENT_PARENTS].context)


def test_sampler_decides_roots_and_children_follow_their_parent() -> None:
    r = Recorder(sampler=ParentBased(AlwaysOff()))
    r.open(1)
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.exchange(1, 1000)
    r.exchange(1, 2000, REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {TP}\r\n\r\n".encode()))
    r.exchange(2, 2005, role=Role.CLIENT, parent=(1, 2000))
    r.exchange(2, 3000, role=Role.CLIENT)
    assert [ex.context.sampled for ex in r.out] == [False, True, True, False]


def test_sweep_then_the_kernels_record_is_one_exchange() -> None:
    r = Recorder()
    r.open(1)
    rec = exchange(1, 1000, end=End.SWEEP)
    r.tracker.sweep([rec])
    r.tracker.sweep([rec])  # still idle at the next sweep
    assert len(r.out) == 1 and r.tracker.stats.duplicates == 0
    r.tracker.exchange(rec._replace(end=End.NEXT_REQUEST))
    r.exchange(1, 2000)
    [swept, nxt] = r.out
    assert (swept.start_ns, nxt.start_ns) == (1000, 2000)
    s = r.tracker.stats
    assert (s.duplicates, s.exchanges, s.records) == (1, 2, 2)


def test_sweep_leaves_a_response_short_of_its_declared_length() -> None:
    r = Recorder()
    r.open(1)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    paused = exchange(1, 1000, response=head + b"x" * 10, end=End.SWEEP)._replace(resp_bytes=len(head) + 400)
    r.tracker.sweep([paused])  # a pause in the middle of the body: not finished
    assert r.out == []
    r.tracker.sweep([paused._replace(resp_bytes=len(head) + 1000)])  # all of it, then quiet
    assert [ex.response.size for ex in r.out] == [1000]
    r.tracker.sweep([exchange(2, 1000, response=head, end=End.SWEEP)], finished_only=False)  # shutdown: all
    assert len(r.out) == 2


@pytest.mark.parametrize("request_, response", [
    (b"HEAD /a HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    (REQ, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n"),
    (REQ, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n"),
    (b"\x00\x01binary", b"\x02"),
])
def test_sweep_ends_what_has_no_known_length(request_: bytes, response: bytes) -> None:
    r = Recorder()
    r.open(1)
    r.tracker.sweep([exchange(1, 1000, request_, response, end=End.SWEEP)])
    assert r.tracker.stats.records == 1


def test_sweep_of_a_connection_without_conn_open() -> None:
    r = Recorder()
    rec = exchange(1, 1000, end=End.SWEEP)
    r.tracker.sweep([rec])
    r.tracker.exchange(rec._replace(end=End.CLOSE))
    assert len(r.out) == 1 and r.tracker.stats.duplicates == 1


@pytest.mark.parametrize("closed", [True, False])
def test_a_new_connection_on_a_swept_socket_is_not_a_duplicate(closed: bool) -> None:
    r = Recorder()
    r.open(1)
    r.tracker.sweep([exchange(1, 1000, end=End.SWEEP)])
    if closed:  # the kernel's own record was lost; else its CONN_CLOSE too
        r.close(1)
    r.open(1)
    r.exchange(1, 1000)  # the new connection's exchange with the swept key: not dropped
    assert len(r.out) == 2 and r.tracker.stats.duplicates == 0


def test_unrecognised_connection_is_counted_after_detect_attempts() -> None:
    r = Recorder()
    r.open(1, Role.SERVER, REDIS_TUPLE)
    per = len(PING) + len(PONG)
    for i in range(DETECT_ATTEMPTS - 1):
        r.exchange(1, 1000 + i, PING, PONG)
    s = r.tracker.stats
    assert (s.unrecognised_connections, s.unrecognised_bytes) == ({}, {("redis", 6379): per * (DETECT_ATTEMPTS - 1)})
    r.exchange(1, 2000, PING, PONG)
    assert s.unrecognised_connections == {("redis", 6379): 1}
    r.exchange(1, 3000, REQ, RESP)  # given up: not even HTTP is looked for now
    r.close(1)
    assert r.out == [] and s.parse_failures == {}
    assert s.unrecognised_connections == {("redis", 6379): 1}
    assert s.unrecognised_bytes == {("redis", 6379): per * DETECT_ATTEMPTS + len(REQ) + len(RESP)}
    assert (s.records, s.exchanges) == (DETECT_ATTEMPTS + 1, 0)


def test_unrecognised_connection_is_counted_at_close() -> None:
    r = Recorder()
    r.open(1, Role.CLIENT, ConnTuple("10.0.0.1", 50000, "10.0.0.5", 5432))
    startup = struct.pack(">II", 41, 196608) + b"user\0app\0database\0db\0\0" + b"\0" * 9
    r.exchange(1, 1000, startup, b"R\0\0\0\x08\0\0\0\0", role=Role.CLIENT)
    r.open(2)  # a connection that sent nothing is not traffic
    r.close(2)
    s = r.tracker.stats
    assert s.unrecognised_connections == {}
    r.close(1)
    assert s.unrecognised_connections == {("postgresql", 5432): 1}
    assert s.unrecognised_bytes == {("postgresql", 5432): len(startup) + 9}


def test_a_connection_recognised_late_is_not_unrecognised() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000, b"\r\n", b"")
    r.exchange(1, 2000)
    r.close(1)
    [ex] = r.out
    s = r.tracker.stats
    assert ex.start_ns == 2000 and s.unrecognised_connections == {}
    assert s.unrecognised_bytes == {("unknown", 8080): 2}


def test_guess_protocol() -> None:
    pg_startup = struct.pack(">II", 8 + 22, 196608) + b"user\0app\0database\0db\0"
    assert guess_protocol(CLIENT_HELLO, b"") == "tls"
    assert guess_protocol(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"") == "http2"
    assert guess_protocol(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n", b"+OK\r\n") == "redis"
    assert guess_protocol(pg_startup, b"R\0\0\0\x08\0\0\0\0") == "postgresql"
    assert guess_protocol(struct.pack(">II", 8, 80877103), b"S") == "postgresql"  # SSLRequest
    assert guess_protocol(b"Q\0\0\0\x0dselect 1\0", b"T\0\0\0\x1e") == "postgresql"
    kafka = struct.pack(">IhhI", 10, 18, 3, 1) + b"\0\0"
    assert guess_protocol(kafka, b"") == "kafka"
    assert guess_protocol(b"PROPFIND /dav HTTP/1.1\r\n", b"") == "http"
    assert guess_protocol(b"\x00\x01\x02", b"\x00") == "unknown"


def test_parse_failures_are_counted_per_protocol() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000)
    r.exchange(1, 2000, b"\x00\x01garbage that is not http\r\n\r\n")
    r.exchange(1, 3000, REQ, b"HTTP/1.1 2OO OK\r\n\r\n")
    r.exchange(1, 4000)
    assert [ex.start_ns for ex in r.out] == [1000, 4000]
    assert r.tracker.stats.parse_failures == {"http": 2}


def test_protocol_switch_ends_tracing_of_the_connection() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
               b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    r.exchange(1, 2000, b"\x81\x85" + b"m" * 9, b"\x81\x05hello")
    r.close(1)
    [ex] = r.out
    s = r.tracker.stats
    assert ex.response is not None and ex.response.status_code == 101  # type: ignore[attr-defined]
    assert (s.parse_failures, s.unrecognised_connections, s.unrecognised_bytes) == ({}, {}, {})


def test_h2c_upgrade_is_no_span_and_counts_the_connection_as_http2() -> None:
    r = Recorder()
    r.open(1)
    r.exchange(1, 1000, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
               b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    r.exchange(1, 2000, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    r.close(1)
    s = r.tracker.stats
    assert r.out == []  # no span saying 101 for a request whose answer came in HTTP/2
    assert s.unrecognised_connections == {("http2", 8080): 1} and s.parse_failures == {}
    assert s.unrecognised_bytes[("http2", 8080)] == 24 + 9  # what followed the upgrade


def test_connection_table_is_bounded_and_evicts_the_oldest() -> None:
    r = Recorder(max_connections=100)
    for sock in range(1000):
        r.open(sock, conn=SERVER_TUPLE._replace(remote_port=sock), pid=PID + sock % 2)
    assert len(r.tracker) == 100 and r.tracker.stats.connections_evicted == 900
    r.tracker.forget_process(PID)  # sockets 900..999 are left: the even ones are PID's
    assert len(r.tracker) == 50
    assert not r.tracker.has_connections(PID) and r.tracker.has_connections(PID + 1)
    r.exchange(901, 1000, pid=PID + 1)
    r.exchange(899, 2000, pid=PID + 1)  # evicted: known again from its record
    assert [ex.conn for ex in r.out] == [SERVER_TUPLE._replace(remote_port=901), NO_TUPLE]
    assert len(r.tracker) == 51 and r.tracker.stats.connections_evicted == 900


def test_forget_process_and_has_connections() -> None:
    r = Recorder()
    r.open(1, pid=PID)
    r.open(2, pid=PID)
    r.open(3, Role.SERVER, REDIS_TUPLE, pid=PID + 1)
    r.exchange(3, 1000, PING, PONG, pid=PID + 1)
    assert r.tracker.has_connections(PID) and r.tracker.has_connections(PID + 1)
    r.close(1)
    assert r.tracker.has_connections(PID)
    r.close(2)
    assert not r.tracker.has_connections(PID) and len(r.tracker) == 1
    r.tracker.forget_process(PID + 1)  # what is left goes, counted as a close
    assert not r.tracker.has_connections(PID + 1) and len(r.tracker) == 0
    assert r.tracker.stats.unrecognised_connections == {("redis", 6379): 1}


def test_socket_reused_by_another_process() -> None:
    r = Recorder()
    r.open(1, pid=PID)
    r.open(1, pid=PID + 1)  # the first connection's CONN_CLOSE was lost
    assert not r.tracker.has_connections(PID) and r.tracker.has_connections(PID + 1)
    r.exchange(1, 1000, pid=PID + 1)
    assert [ex.pid for ex in r.out] == [PID + 1]
    r.close(1)
    assert not r.tracker.has_connections(PID + 1) and len(r.tracker) == 0


def test_all_protocols_tracker() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.SERVER, SERVER_TUPLE))
    t.exchange(exchange(1, 1000))
    [ex] = out
    assert ex.protocol.name == "http"
