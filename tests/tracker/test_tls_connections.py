"""TLS connections in the tracker: plaintext from the library probes replaces the socket's
ciphertext, which never yields a span nor a parse failure; process exits end connections."""

from __future__ import annotations

import os

from beyla_sidecar.bpf.events import ConnTuple, Direction, Event, EventType, Role
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

TUPLE = ConnTuple("127.0.0.1", 8443, "127.0.0.1", 40000)
REQ = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def data(sock: int, direction: Direction, payload: bytes, tls: bool, ts: int, pid: int = 5) -> Event:
    return Event(EventType.DATA, ts, sock, pid, pid, 1, 1, len(payload), direction, Role.SERVER, TUPLE,
                 "app", payload, tls)


def test_handshake_ciphertext_then_plaintext_gives_one_https_exchange() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(Event(EventType.CONN_OPEN, 1, 9, 5, 5, 1, 1, 0, Direction.SEND, Role.SERVER, TUPLE, "app", b""))
    for i in range(5):  # ClientHello & co. seen by the socket probes before the socket was known TLS
        t.handle(data(9, Direction.RECV, b"\x16\x03\x01" + os.urandom(60), False, 10 + i))
        t.handle(data(9, Direction.SEND, b"\x16\x03\x03" + os.urandom(60), False, 20 + i))
    t.handle(data(9, Direction.RECV, REQ, True, 100))
    t.handle(data(9, Direction.SEND, b"\x17\x03\x03" + os.urandom(80), False, 101))  # late ciphertext
    t.handle(data(9, Direction.SEND, RESP, True, 102))
    [ex] = out
    assert ex.tls and ex.kind is SpanKind.SERVER and ex.conn == TUPLE
    assert ex.request.method == "GET" and ex.response.status_code == 200  # type: ignore[union-attr]
    assert t.stats.parse_failures == {}
    desc = ex.protocol.describe(ex.request, ex.response, ex.kind, False, tls=ex.tls)
    assert desc.attributes["url.scheme"] == "https"
    assert ex.protocol.describe(ex.request, ex.response, ex.kind, False).attributes["url.scheme"] == "http"


def test_process_exit_ends_its_connections() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(data(1, Direction.RECV, REQ, True, 10, pid=5))
    t.handle(data(2, Direction.RECV, REQ, True, 11, pid=6))
    t.forget_process(5, 20)
    assert len(t) == 1 and [ex.pid for ex in out] == [5] and out[0].response is None  # unanswered
    t.forget_process(6, 21)
    assert len(t) == 0 and t.serving_threads == 0
