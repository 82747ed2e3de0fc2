"""The tracker with HTTP/2 chunks: finished streams become exchanges of the connection, with the
stream's protocol (HTTP/2 or gRPC), tid and trace context; closed and ignored connections."""

from __future__ import annotations

from beyla_sidecar.bpf.events import ConnTuple, EventType, Role
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.protocols.http2 import HTTP2
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..protocols.h2wire import SOCK, TID_UP, Wire, chunks
from .records import TP, conn_event

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


def test_close_forgets_streams_in_flight() -> None:
    wire = Wire()
    wire.request(1, "GET", "/never-answered")
    wire.flush(10)
    out, tracker, http2 = run(wire)
    assert out == []
    tracker.handle(conn_event(EventType.CONN_CLOSE, SOCK))
    assert http2.stream_drops == 1 and len(tracker) == 0
