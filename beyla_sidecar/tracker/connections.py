"""Per-connection state: protocol detection, one parser per direction, request/response join.

The role of a socket (server or client) comes from how the kernel saw it created: accept()
or connect(). Only sockets that existed before the probes were attached arrive without a
role; for those the first message that a protocol recognises as a request decides.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..bpf.events import ConnTuple, Direction, Event, EventType, Role
from ..protocols.base import Message, Protocol, SpanKind, Stream
from .context import TraceContext, client_context, server_context
from .exchange import Exchange

# Chunks of request-side data without a recognised protocol before a connection is ignored.
DETECT_ATTEMPTS = 3
# Requests in flight on one connection (pipelining) before the oldest is given up.
MAX_PENDING = 64


@dataclass(slots=True)
class TrackerStats:
    events: int = 0
    bytes: int = 0
    exchanges: int = 0
    connections_evicted: int = 0
    unanswered_dropped: int = 0  # pipelined requests beyond MAX_PENDING
    parse_failures: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    request: Message
    context: TraceContext
    tid: int


class Connection:
    __slots__ = ("role", "conn", "pid", "ns_pid", "protocol", "requests", "responses",
                 "pending", "attempts", "ignored", "tls")

    def __init__(self, role: Role, conn: ConnTuple, pid: int, ns_pid: int) -> None:
        self.role = role
        self.conn = conn
        self.pid = pid
        self.ns_pid = ns_pid
        self.protocol: Protocol | None = None
        self.requests: Stream | None = None
        self.responses: Stream | None = None
        self.pending: deque[_Pending] = deque()
        self.attempts = 0
        self.ignored = False
        self.tls = False  # its bytes come from the TLS library probes (plaintext)


def _is_request_side(role: Role, direction: Direction) -> bool:
    return (role is Role.SERVER) == (direction is Direction.RECV)


class Tracker:
    """Turns kernel events into `Exchange`s handed to `emit`."""

    def __init__(self, protocols: tuple[Protocol, ...], emit: Callable[[Exchange], None],
                 max_connections: int = 65536) -> None:
        self._protocols = protocols
        self._emit = emit
        self._max_connections = max_connections
        self._conns: OrderedDict[int, Connection] = OrderedDict()
        # host tid -> the server span that thread is serving right now
        self._serving: dict[int, TraceContext] = {}
        self.stats = TrackerStats()

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def serving_threads(self) -> int:
        return len(self._serving)

    def handle(self, ev: Event) -> None:
        self.stats.events += 1
        if ev.type is EventType.DATA:
            self.stats.bytes += ev.bytes
            self._data(ev)
        elif ev.type is EventType.CONN_OPEN:
            self._close(ev.sock_id, ev.ts_ns)  # the kernel reused the address of a socket we missed closing
            self._open(ev.sock_id, ev.role, ev.tuple, ev.pid, ev.ns_pid)
        else:
            self._close(ev.sock_id, ev.ts_ns)

    def forget_thread(self, tid: int) -> None:
        self._serving.pop(tid, None)

    def forget_process(self, pid: int, ts_ns: int) -> None:
        """The process (host pid) exited: its connections end as if closed now (a response
        delimited by the close completes; unanswered requests end without one)."""
        for sock_id in [s for s, c in self._conns.items() if c.pid == pid]:
            self._close(sock_id, ts_ns)

    def _open(self, sock_id: int, role: Role, conn: ConnTuple, pid: int, ns_pid: int) -> Connection:
        c = self._conns[sock_id] = Connection(role, conn, pid, ns_pid)
        if len(self._conns) > self._max_connections:
            self._conns.popitem(last=False)
            self.stats.connections_evicted += 1
        return c

    def _data(self, ev: Event) -> None:
        c = self._conns.get(ev.sock_id)
        if c is None:
            c = self._open(ev.sock_id, ev.role, ev.tuple, ev.pid, ev.ns_pid)
        if ev.tls != c.tls and not self._switch_tls(c, ev.tls):
            return
        if c.ignored:
            return
        if c.protocol is None and not self._detect(c, ev):
            return
        request_side = _is_request_side(c.role, ev.direction)
        stream = c.requests if request_side else c.responses
        assert stream is not None
        failures = stream.stats.failures
        messages = stream.feed(ev.payload, ev.bytes, ev.ts_ns)
        if stream.stats.failures != failures:
            self._count_failures(c, stream.stats.failures - failures)
        for msg in messages:
            if request_side:
                self._request(c, msg, ev.tid)
            else:
                self._response(c, msg)

    def _detect(self, c: Connection, ev: Event) -> bool:
        if c.role is Role.UNKNOWN:
            for proto in self._protocols:
                if proto.detect(ev.payload, True):
                    c.role = Role.SERVER if ev.direction is Direction.RECV else Role.CLIENT
                    self._bind(c, proto)
                    return True
        elif _is_request_side(c.role, ev.direction):
            for proto in self._protocols:
                if proto.detect(ev.payload, True):
                    self._bind(c, proto)
                    return True
        else:
            return False  # responses before any recognised request are not ours to parse
        c.attempts += 1
        if c.attempts >= DETECT_ATTEMPTS:
            c.ignored = True  # e.g. TLS ciphertext or an unsupported protocol: no noise
        return False

    @staticmethod
    def _switch_tls(c: Connection, tls: bool) -> bool:
        """Plaintext from the TLS probes on a connection seen so far as socket bytes: those
        were the handshake's ciphertext, so detection starts afresh on the plaintext.
        Socket bytes on a TLS connection (ciphertext the kernel sent before it knew the
        socket was TLS) are dropped: False."""
        if not tls:
            return False
        c.tls = True
        c.ignored = False
        c.attempts = 0
        c.protocol = c.requests = c.responses = None
        c.pending.clear()
        return True

    @staticmethod
    def _bind(c: Connection, proto: Protocol) -> None:
        c.protocol = proto
        c.requests = proto.new_stream(True)
        c.responses = proto.new_stream(False)

    def _request(self, c: Connection, msg: Message, tid: int) -> None:
        if c.role is Role.SERVER:
            ctx = server_context(msg.traceparent)
            self._serving[tid] = ctx
        else:
            ctx = client_context(self._serving.get(tid))
        if len(c.pending) >= MAX_PENDING:
            c.pending.popleft()
            self.stats.unanswered_dropped += 1
        c.pending.append(_Pending(msg, ctx, tid))
        assert c.responses is not None
        c.responses.expect(msg)

    def _response(self, c: Connection, msg: Message) -> None:
        if not c.pending:
            return  # a response whose request was sent before we attached
        self._finish(c, c.pending.popleft(), msg)

    def _finish(self, c: Connection, pending: _Pending, response: Message | None) -> None:
        assert c.protocol is not None
        kind = SpanKind.SERVER if c.role is Role.SERVER else SpanKind.CLIENT
        if kind is SpanKind.SERVER and self._serving.get(pending.tid) is pending.context:
            del self._serving[pending.tid]
        self.stats.exchanges += 1
        self._emit(Exchange(c.protocol, kind, pending.request, response, pending.context,
                            c.pid, pending.tid, c.ns_pid, c.conn, c.tls))

    def _close(self, sock_id: int, ts_ns: int) -> None:
        c = self._conns.pop(sock_id, None)
        if c is None or c.protocol is None:
            return
        assert c.responses is not None
        for msg in c.responses.close(ts_ns):
            if c.pending:
                self._finish(c, c.pending.popleft(), msg)
        while c.pending:
            self._finish(c, c.pending.popleft(), None)

    def _count_failures(self, c: Connection, n: int) -> None:
        assert c.protocol is not None
        name = c.protocol.name
        self.stats.parse_failures[name] = self.stats.parse_failures.get(name, 0) + n
