"""TLS connections in the tracker: the kernel reports a socket a TLS library drives with a
CONN_OPEN flagged TLS, and its exchanges are the library's plaintext; process exits end
connections."""

from __future__ import annotations

from beyla_sidecar.bpf.events import NO_TUPLE, ConnTuple, EventType, Role
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1, HttpRequest, HttpResponse
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from .records import PID, REQ, RESP, conn_event, exchange, ns_pid

TUPLE = ConnTuple("127.0.0.1", 8443, "127.0.0.1", 40000)
CLIENT_HELLO = bytes.fromhex("160301020001000" "1fc0303" + "ab" * 32 + "20" + "cd" * 32)
SERVER_HELLO = bytes.fromhex("160303007a020000760303" + "ef" * 32)


def tracker() -> tuple[Tracker, HTTP1, list[Exchange]]:
    out: list[Exchange] = []
    http = HTTP1()
    return Tracker((http,), out.append), http, out


def test_tls_connection_gives_https_exchanges() -> None:
    t, http, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 9, Role.SERVER, TUPLE, tls=True))
    t.exchange(exchange(9, 100, tls=True))
    [ex] = out
    assert ex == Exchange(http, SpanKind.SERVER,
                          HttpRequest(True, 100, 110, 0, len(REQ), None, "GET", "/a", "", "1.1", "svc"),
                          HttpResponse(False, 120, 130, 2, len(RESP) - 2, None, 200, "1.1"),
                          ex.context, PID, PID + 1, ns_pid(PID), TUPLE, True)
    assert http.describe(ex.request, ex.response, ex.kind, False, tls=ex.tls).attributes["url.scheme"] == "https"
    assert http.describe(ex.request, ex.response, ex.kind, False).attributes["url.scheme"] == "http"


def test_socket_that_turns_tls_is_reported_again() -> None:
    t, _, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 9, Role.SERVER, TUPLE))
    t.handle(conn_event(EventType.CONN_OPEN, 9, Role.SERVER, TUPLE, tls=True))
    t.exchange(exchange(9, 100, tls=True))
    [ex] = out
    assert ex.tls and ex.kind is SpanKind.SERVER and ex.conn == TUPLE
    assert len(t) == 1 and t.has_connections(PID)
    s = t.stats
    assert (s.parse_failures, s.unrecognised_connections, s.unrecognised_bytes) == ({}, {}, {})


def test_ciphertext_seen_before_the_library_was_probed() -> None:
    # the library is attached while the connection is open: its first exchange was
    # ciphertext, counted as unrecognised when the socket is reported again as TLS
    t, _, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 9, Role.SERVER, TUPLE))
    t.exchange(exchange(9, 10, CLIENT_HELLO, SERVER_HELLO))
    t.handle(conn_event(EventType.CONN_OPEN, 9, Role.SERVER, TUPLE, tls=True))
    t.exchange(exchange(9, 100, tls=True))
    [ex] = out
    assert ex.tls and ex.start_ns == 100
    s = t.stats
    assert (s.parse_failures, s.unrecognised_connections) == ({}, {("tls", 8443): 1})
    assert s.unrecognised_bytes == {("tls", 8443): len(CLIENT_HELLO) + len(SERVER_HELLO)}
    assert len(t) == 1 and t.has_connections(PID)


def test_tls_record_without_conn_open() -> None:
    t, _, out = tracker()
    t.exchange(exchange(9, 100, role=Role.CLIENT, tls=True))
    [ex] = out
    assert (ex.tls, ex.kind, ex.conn) == (True, SpanKind.CLIENT, NO_TUPLE)


def test_process_exit_ends_its_connections() -> None:
    t, _, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.SERVER, TUPLE, pid=5, tls=True))
    t.handle(conn_event(EventType.CONN_OPEN, 2, Role.SERVER, TUPLE, pid=6, tls=True))
    t.exchange(exchange(1, 100, pid=5, tls=True))
    t.forget_process(5)
    assert len(t) == 1 and not t.has_connections(5) and t.has_connections(6)
    assert [ex.pid for ex in out] == [5]
    t.exchange(exchange(2, 200, pid=6, tls=True))
    t.forget_process(6)
    assert len(t) == 0 and not t.has_connections(6)
    assert [ex.pid for ex in out] == [5, 6]
