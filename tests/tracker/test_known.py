"""The short way (tracker/known.py): records repeating a known exchange give exactly what the
full way gives, and anything it cannot tell alike takes the full way."""

from __future__ import annotations

from beyla_sidecar.bpf.events import FLAG_TRACEPARENT, ConnTuple, EventType, Role, decode_exchange, exchange_fields
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange

from .records import PID, conn_event, exchange, ring_bytes

SERVER_TUPLE = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
CLIENT_TUPLE = ConnTuple("10.0.0.1", 41000, "10.0.0.3", 80)
POST = b"POST /items HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello"
CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"
# (kind, start, end, request size, response size, context) of each exchange that went out
Out = tuple[bool, int, int, int | None, int | None, TraceContext | None]


class Sink:
    """An Output: what the pipeline's ShapeOutput would record, kept."""

    def __init__(self, out: list[Out], server: bool) -> None:
        self._out, self._server = out, server

    def emit(self, ctx: TraceContext | None, start_ns: int, end_ns: int, request_size: int,
             response_size: int) -> None:
        self._out.append((self._server, start_ns, end_ns, request_size, response_size, ctx))


class Run:
    """A tracker fed ring bytes; with `short`, repeats go the short way once learnt."""

    def __init__(self, short: bool, traces: bool = False) -> None:
        self.out: list[Out] = []
        self.full = 0  # records that took the full way
        self.short = short
        self.tracker = Tracker((HTTP1(),), self._emit, traces=traces)

    def _emit(self, ex: Exchange) -> None:
        assert ex.response is not None
        server = ex.kind.name == "SERVER"
        self.out.append((server, ex.request.start_ns, ex.response.end_ns, ex.request.size, ex.response.size,
                         ex.context))
        if self.short and ex.known is not None:
            self.tracker.learn(ex.known, Sink(self.out, server))

    def open(self, sock: int, role: Role = Role.SERVER, conn: ConnTuple = SERVER_TUPLE) -> None:
        self.tracker.handle(conn_event(EventType.CONN_OPEN, sock, role, conn))

    def repeat(self, raw: bytes) -> bool:
        fields = exchange_fields(raw)
        return fields is not None and self.tracker.repeat(raw, fields)

    def feed(self, raw: bytes) -> None:
        if self.short and self.repeat(raw):
            return
        self.full += 1
        rec = decode_exchange(raw)
        assert rec is not None
        self.tracker.exchange(rec)


def traffic() -> list[bytes]:
    """Two connections, two request shapes, sizes and times varying from exchange to exchange."""
    out = []
    for i in range(40):
        sock = 1 + i % 2
        request, response = (POST, CREATED) if i % 3 == 0 else (b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n",
                                                              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        rec = exchange(sock, 1000 * (i + 1), request, response)
        # a body that grows beyond the prefix: only the byte counts say how long it is
        rec = rec._replace(resp_bytes=rec.resp_bytes + i, resp_end_ns=rec.resp_end_ns + 7 * i,
                           resp_head=len(response) - (7 if response is CREATED else 2))
        out.append(ring_bytes(rec))
    return out


def test_the_short_way_gives_what_the_full_way_gives() -> None:
    full, short = Run(False), Run(True)
    for run in (full, short):
        run.open(1)
        run.open(2)
        for raw in traffic():
            run.feed(raw)
    assert short.out == full.out and len(full.out) == 40
    assert short.tracker.stats == full.tracker.stats
    # learnt once per connection and shape: 2 connections x 2 shapes
    assert short.full == 4


def test_server_spans_the_short_way_are_roots_whose_children_find_them() -> None:
    run = Run(True, traces=True)
    run.open(1)
    run.open(9, Role.CLIENT, CLIENT_TUPLE)
    run.feed(ring_bytes(exchange(1, 1000)))
    run.feed(ring_bytes(exchange(1, 2000)))  # the short way
    # a call made while serving it, its record after its parent's
    run.feed(ring_bytes(exchange(9, 2005, role=Role.CLIENT, parent=(1, 2000))))
    assert run.full == 2
    (_, _, _, _, _, first), (_, _, _, _, _, second), (server, *_, call) = run.out
    assert second is not None and second.parent_span_id == 0 and second.trace_id != first.trace_id
    assert not server and call is not None and (call.trace_id, call.parent_span_id) == (second.trace_id,
                                                                                        second.span_id)


def test_records_it_cannot_tell_alike_take_the_full_way() -> None:
    run = Run(True, traces=True)
    run.open(1)
    run.open(9, Role.CLIENT, CLIENT_TUPLE)
    base = exchange(1, 1000, POST, CREATED)
    run.feed(ring_bytes(base))
    known = run.full
    run.feed(ring_bytes(base._replace(req_start_ns=2000, req_bytes=base.req_bytes + 60)))  # pipelined?
    run.feed(ring_bytes(base._replace(req_start_ns=3000, flags=FLAG_TRACEPARENT,
                                      traceparent=b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-"
                                                  b"00f067aa0ba902b7-01")))
    run.feed(ring_bytes(base._replace(req_start_ns=4000, tasks=(0x7F00,))))
    run.feed(ring_bytes(base._replace(req_start_ns=5000, pid=PID + 1)))  # another process's socket
    run.feed(ring_bytes(base._replace(req_start_ns=5500), resp_off=256))  # its response prefix not next
    call = exchange(9, 6000, role=Role.CLIENT, parent=(1, 1000))
    run.feed(ring_bytes(call))
    run.feed(ring_bytes(call._replace(req_start_ns=7000)))  # its parent is to be found
    assert run.full == known + 7
    assert run.tracker.stats.pipelined == {"http": 1}


def test_a_connection_reopened_forgets_what_it_knew() -> None:
    run = Run(True)
    run.open(1)
    run.feed(ring_bytes(exchange(1, 1000)))
    run.feed(ring_bytes(exchange(1, 2000)))
    run.open(1)  # the socket address reused
    run.feed(ring_bytes(exchange(1, 3000)))
    assert run.full == 2 and len(run.out) == 3


def test_malformed_records_are_left_to_the_full_way() -> None:
    run = Run(True)
    run.open(1)
    raw = ring_bytes(exchange(1, 1000))
    run.feed(raw)
    assert exchange_fields(raw[:100]) is None and exchange_fields(b"") is None
    assert not run.repeat(raw[:3] + b"\x09" + raw[4:])  # no such end
    assert run.repeat(raw)
