"""The tracker with HTTP/2 chunks: finished streams become exchanges of the connection, with the
stream's protocol (HTTP/2 or gRPC), tid and trace context; closed and ignored connections."""

from __future__ import annotations

import h2.config
import h2.connection

from beyla_sidecar.bpf.events import ConnTuple, EventType, Role
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.protocols.http2 import HTTP2
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..protocols.h2wire import SOCK, TID_UP, Wire, chunks, direction_chunks
from .records import TP, conn_event, exchange

SERVER_TUPLE = ConnTuple("10.0.0.1", 8443, "10.0.0.2", 40000)
TRACE_ID, PARENT_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7


def run(wire: Wire, role: Role = Role.SERVER, traces: bool = True) -> tuple[list[Exchange], Tracker, HTTP2]:
    out: list[Exchange] = []
    http2 = HTTP2()
    tracker = Tracker((HTTP1(), http2), out.append, traces=traces)
    tracker.handle(conn_event(EventType.CONN_OPEN, SOCK, role, SERVER_TUPLE, pid=100))
    for c in chunks(wire, role):
        tracker.h2(c)
    return out, tracker, http2


def conversation() -> Wire:
    wire = Wire()
    wire.request(1, "GET", "/a", extra=[("traceparent", TP), ("authorization", "Bearer s3cret")])
    wire.request(3, "POST", "/demo.Greeter/SayHello", body=12, extra=[("content-type", "application/grpc")])
    wire.flush(10)
    wire.response(3, 200, 7, extra=[("content-type", "application/grpc")], trailers=[("grpc-status", "5")])
    wire.flush(20)
    wire.response(1, 404, 3)
    wire.flush(30)
    return wire


def test_streams_are_exchanges_of_their_connection() -> None:
    out, tracker, http2 = run(conversation())
    assert [(e.protocol, e.kind, e.request.path, e.response.status_code, e.tid, e.conn, e.pid)  # type: ignore[union-attr]
            for e in out] == [
        (http2.grpc, SpanKind.SERVER, "/demo.Greeter/SayHello", 200, TID_UP, SERVER_TUPLE, 100),
        (http2, SpanKind.SERVER, "/a", 404, TID_UP, SERVER_TUPLE, 100)]
    assert [(e.start_ns, e.end_ns, e.request.size, e.response.size) for e in out] == [  # type: ignore[union-attr]
        (10, 20, 12, 7), (10, 30, 0, 3)]
    grpc, http = (e.context for e in out)
    assert http is not None and (http.trace_id, http.parent_span_id, http.parent_remote) == (TRACE_ID, PARENT_ID, True)
    assert grpc is not None and grpc.parent_span_id == 0 and grpc.trace_id not in (0, TRACE_ID)
    assert tracker.stats.exchanges == 2 and tracker.stats.records == len(chunks(conversation()))


def test_client_streams_are_roots() -> None:
    out, _, _ = run(conversation(), Role.CLIENT)
    assert [e.kind for e in out] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert all(e.context is not None and e.context.parent_span_id == 0 for e in out)


def test_without_span_destination_no_context() -> None:
    out, _, _ = run(conversation(), traces=False)
    assert len(out) == 2 and all(e.context is None for e in out)


def test_close_ends_streams_in_flight() -> None:
    """As an HTTP/1 exchange: an unanswered stream lasts until the close, with no response; an
    answered one whose END_STREAM never came (the client closed once its body was in) ends with the
    last of its response that came."""
    wire = Wire()
    wire.request(1, "GET", "/never-answered")
    wire.request(3, "GET", "/cut-short")
    wire.flush(10)
    wire.server.send_headers(3, [(":status", "200"), ("content-length", "5")])
    wire.server.send_data(3, b"12345")  # no END_STREAM
    wire.flush(20)
    out, tracker, http2 = run(wire)
    assert out == []
    tracker.handle(conn_event(EventType.CONN_CLOSE, SOCK)._replace(ts_ns=50))
    assert [(e.request.path, e.response and (e.response.status_code, e.response.size), e.start_ns, e.end_ns)  # type: ignore[attr-defined]
            for e in out] == [("/never-answered", None, 10, 50), ("/cut-short", (200, 5), 10, 20)]
    assert http2.stream_drops == 0 and len(tracker) == 0


def test_h2c_upgrade_request_is_stream_one() -> None:
    """`Upgrade: h2c` answered 101: the HTTP/1.1 request is stream 1, answered in HTTP/2 frames;
    the 101 exchange itself is no span, and later streams follow on the same connection."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    settings = client.initiate_upgrade_connection()
    server.initiate_upgrade_connection(settings)
    up, down = [(200, client.data_to_send()[24:])], [(200, server.data_to_send())]
    server.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + up[0][1])
    server.send_headers(1, [(":status", "200"), ("content-type", "text/plain")])
    server.send_data(1, b"x" * 321, end_stream=True)
    down.append((300, server.data_to_send()))
    client.receive_data(b"".join(d for _, d in down))
    client.send_headers(3, [(":method", "GET"), (":path", "/next"), (":scheme", "http"), (":authority", "svc")],
                        end_stream=True)
    up.append((400, client.data_to_send()))
    server.receive_data(up[-1][1])
    server.send_headers(3, [(":status", "204")], end_stream=True)
    down.append((500, server.data_to_send()))

    out: list[Exchange] = []
    http2 = HTTP2()
    tracker = Tracker((HTTP1(), http2), out.append)
    tracker.handle(conn_event(EventType.CONN_OPEN, SOCK, Role.SERVER, SERVER_TUPLE, pid=100))
    upgrade = (b"GET /up?x=1 HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: " + settings + b"\r\n\r\n")
    tracker.exchange(exchange(SOCK, 100, upgrade, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                              b"Upgrade: h2c\r\n\r\n", pid=100, tid=TID_UP))
    chunks = [c for _, _, c in sorted(direction_chunks(up, True, Role.SERVER, TID_UP) +
                                      direction_chunks(down, False, Role.SERVER, TID_UP + 1), key=lambda t: t[0])]
    for c in chunks:
        tracker.h2(c)
    assert [(e.protocol, e.request.method, e.request.path, e.request.query, e.response.status_code,  # type: ignore[union-attr]
             e.response.size, e.start_ns, e.end_ns, e.tid) for e in out] == [
        (http2, "GET", "/up", "x=1", 200, 321, 100, 300, TID_UP),
        (http2, "GET", "/next", "", 204, 0, 400, 500, TID_UP)]
    assert http2.desyncs == {} and tracker.stats.unrecognised_connections == {}
