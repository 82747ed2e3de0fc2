"""Tracker with the real HTTP/1.x parser and synthetic kernel events."""

from __future__ import annotations

from beyla_sidecar.bpf.events import ConnTuple, Direction, Event, EventType, Role
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.tracker.connections import DETECT_ATTEMPTS, Tracker
from beyla_sidecar.tracker.exchange import Exchange

SERVER_TUPLE = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
CLIENT_TUPLE = ConnTuple("10.0.0.1", 41000, "10.0.0.3", 80)
REQ = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Recorder:
    def __init__(self) -> None:
        self.out: list[Exchange] = []
        self.tracker = Tracker(all_protocols(), self.out.append)
        self.ts = 1000

    def ev(self, etype: EventType, sock: int, role: Role = Role.UNKNOWN, direction: Direction = Direction.SEND,
           payload: bytes = b"", size: int | None = None, tid: int = 7,
           conn: ConnTuple = SERVER_TUPLE) -> None:
        self.ts += 10
        self.tracker.handle(Event(etype, self.ts, sock, 5, tid, 1, tid, len(payload) if size is None else size,
                                  direction, role, conn, "app", payload))

    def open(self, sock: int, role: Role, conn: ConnTuple = SERVER_TUPLE) -> None:
        self.ev(EventType.CONN_OPEN, sock, role, conn=conn)

    def recv(self, sock: int, data: bytes, **kw: object) -> None:
        self.ev(EventType.DATA, sock, direction=Direction.RECV, payload=data, **kw)  # type: ignore[arg-type]

    def send(self, sock: int, data: bytes, **kw: object) -> None:
        self.ev(EventType.DATA, sock, direction=Direction.SEND, payload=data, **kw)  # type: ignore[arg-type]


def test_server_exchange_joins_request_and_response() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.recv(1, REQ)
    r.send(1, RESP)
    [ex] = r.out
    assert ex.kind is SpanKind.SERVER and ex.conn == SERVER_TUPLE
    assert ex.request.method == "GET" and ex.response.status_code == 200  # type: ignore[union-attr]
    assert ex.start_ns == 1020 and ex.end_ns == 1030
    assert ex.context.parent_span_id == 0 and ex.context.span_id != 0


def test_client_role_comes_from_connect_not_ports() -> None:
    r = Recorder()
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.send(2, REQ, conn=CLIENT_TUPLE)
    r.recv(2, RESP, conn=CLIENT_TUPLE)
    assert [ex.kind for ex in r.out] == [SpanKind.CLIENT]


def test_keepalive_and_pipelining_pair_in_order() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.recv(1, REQ.replace(b"/a", b"/1") + REQ.replace(b"/a", b"/2"))
    r.send(1, RESP.replace(b"200 OK", b"201 Created"))
    r.send(1, RESP.replace(b"200 OK", b"404 Not Found"))
    r.recv(1, REQ.replace(b"/a", b"/3"))
    r.send(1, RESP)
    assert [(ex.request.path, ex.response.status_code) for ex in r.out] == [  # type: ignore[union-attr]
        ("/1", 201), ("/2", 404), ("/3", 200)]


def test_large_response_beyond_capture_is_framed_by_byte_counts() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.recv(1, REQ)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    r.send(1, head + b"x" * (512 - len(head)), size=len(head) + 60000)
    assert r.out == []
    r.send(1, b"x" * 512, size=40000)
    [ex] = r.out
    assert ex.response.size == 100000 and ex.end_ns == r.ts  # type: ignore[union-attr]


def test_incoming_traceparent_and_child_client_call_on_same_thread() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.recv(1, REQ.replace(b"\r\n\r\n", f"\r\ntraceparent: {TP}\r\n\r\n".encode()), tid=9)
    r.send(2, REQ, tid=9, conn=CLIENT_TUPLE)
    r.recv(2, RESP, tid=9, conn=CLIENT_TUPLE)
    r.send(1, RESP, tid=9)
    client, server = r.out
    assert server.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert server.context.parent_span_id == 0x00F067AA0BA902B7 and server.context.parent_remote
    assert client.context.trace_id == server.context.trace_id
    assert client.context.parent_span_id == server.context.span_id and not client.context.parent_remote
    assert r.tracker.serving_threads == 0  # the server span ended: the thread serves nothing now


def test_client_call_on_another_thread_is_not_a_child() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.open(2, Role.CLIENT, CLIENT_TUPLE)
    r.recv(1, REQ, tid=9)
    r.send(2, REQ, tid=10, conn=CLIENT_TUPLE)
    r.recv(2, RESP, tid=10, conn=CLIENT_TUPLE)
    assert r.out[0].context.parent_span_id == 0


def test_unknown_role_is_inferred_from_the_first_request() -> None:
    r = Recorder()
    r.recv(3, REQ)  # no CONN_OPEN: the socket predates the probes
    r.send(3, RESP)
    assert [ex.kind for ex in r.out] == [SpanKind.SERVER]


def test_response_without_request_and_ciphertext_are_ignored_quietly() -> None:
    r = Recorder()
    r.open(1, Role.CLIENT, CLIENT_TUPLE)
    r.recv(1, RESP, conn=CLIENT_TUPLE)
    r.open(4, Role.SERVER)
    for _ in range(DETECT_ATTEMPTS + 2):
        r.recv(4, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100))
    assert r.out == [] and r.tracker.stats.parse_failures == {}


def test_close_flushes_pending_request_as_incomplete_and_forgets_connection() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.recv(1, REQ)
    r.ev(EventType.CONN_CLOSE, 1)
    [ex] = r.out
    assert ex.response is None and len(r.tracker) == 0


def test_http10_response_ending_at_close() -> None:
    r = Recorder()
    r.open(1, Role.CLIENT, CLIENT_TUPLE)
    r.send(1, REQ.replace(b"1.1", b"1.0"), conn=CLIENT_TUPLE)
    r.recv(1, b"HTTP/1.0 200 OK\r\n\r\nbody until close", conn=CLIENT_TUPLE)
    r.ev(EventType.CONN_CLOSE, 1)
    [ex] = r.out
    assert ex.response is not None and ex.response.size == len(b"body until close")


def test_garbage_after_detection_is_counted_per_protocol() -> None:
    r = Recorder()
    r.open(1, Role.SERVER)
    r.recv(1, REQ)
    r.send(1, RESP)
    r.recv(1, b"\x00\x01garbage that is not http\r\n\r\n")
    assert r.tracker.stats.parse_failures == {"http": 1}


def test_connection_table_is_bounded() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append, max_connections=100)
    for sock in range(1000):
        t.handle(Event(EventType.CONN_OPEN, sock, sock, 1, 1, 1, 1, 0, Direction.SEND, Role.SERVER,
                       SERVER_TUPLE, "app", b""))
    assert len(t) == 100 and t.stats.connections_evicted == 900
