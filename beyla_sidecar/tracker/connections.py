"""Per-connection state, protocol detection, exchange records -> `Exchange`s with trace context.

The kernel sends one record per exchange (probes/exchange.h) and the role of the socket
(server when its local port is a listening port of its namespace). The tracker binds a
connection to the first protocol that recognises it, has the protocol parse each record,
and gives each exchange its trace identity:

- a server exchange continues an incoming traceparent, else starts a trace;
- a client exchange is a child of the server exchange its thread was serving when the
  request began (the kernel names it in the record). The child's record may arrive before
  its parent's (the parent is only sent when its connection's next request begins, it
  closes, or it goes idle), so children wait for their parent up to PARENT_WAIT_NS, then
  go out as roots;
- on an asyncio event loop, a client exchange is rather the child of the server exchange its
  Task (or a Task that created it) answered (tasks.py), waiting up to PARENT_WAIT_NS for that
  answer before it falls back to the kernel's parent;
- with propagation (BEYLA_BPF_CONTEXT_PROPAGATION) the kernel gives a server exchange its trace
  id (or the caller's context from a TCP option) and a client exchange the ids it wrote into the
  request: the spans take them, so that the callee's server span is the client span's child.

HTTP/2 connections send chunks instead of exchange records (probes/h2.h): the HTTP2 protocol makes
their streams, each an exchange of the connection (a server stream continues an incoming
traceparent, a client stream starts a trace), and streams in flight end with the connection's close.

Without any span destination (`traces=False`) exchanges get no trace context at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..bpf.events import (EXCHANGE_DATA, FLAG_CONTEXT, FLAG_CONTEXT_REMOTE, FLAG_TRACEPARENT, NO_TUPLE, ConnTuple,
                          End, Event, EventType, ExchangeRecord, H2Chunk, Role)
from ..protocols import guess_protocol
from ..protocols.base import Parsed, Protocol, SpanKind
from ..protocols.http2 import HTTP2, StreamDone
from .context import PARENT_BASED_ALWAYS_ON, Sampler, TraceContext, client_context, root_context, server_context
from .exchange import Exchange
from .known import KNOWN_PER_CONNECTION, Key, Known, Output
from .tasks import TaskParents

# Exchanges of a connection no protocol recognises before it is given up as unrecognised.
DETECT_ATTEMPTS = 3
# How long a client exchange waits for the record of the server exchange it belongs to.
PARENT_WAIT_NS = 3_000_000_000
# Server contexts remembered for children whose record comes after their parent's (the
# newest RECENT_PARENTS at least, up to twice as many).
RECENT_PARENTS = 4096
# Records that take the full way whatever their key: their trace context comes from them.
_OWN_CONTEXT = FLAG_TRACEPARENT | FLAG_CONTEXT | FLAG_CONTEXT_REMOTE
_SERVER_ROLE = Role.SERVER
_END_CODES = frozenset(int(e) for e in End)

log = structlog.get_logger()


@dataclass(slots=True)
class TrackerStats:
    records: int = 0
    bytes: int = 0
    exchanges: int = 0
    connections_evicted: int = 0
    duplicates: int = 0  # exchanges the kernel sent again after user space ended them idle
    parse_failures: dict[str, int] = field(default_factory=dict)
    unrecognised_connections: dict[tuple[str, int], int] = field(default_factory=dict)  # (guess, port)
    unrecognised_bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    pipelined: dict[str, int] = field(default_factory=dict)  # by protocol: exchanges no span can describe
    housekeeping: int = 0  # exchanges a protocol spends on itself (handshakes): nothing to report


class Connection:
    __slots__ = ("role", "conn", "pid", "ns_pid", "protocol", "attempts", "ignored", "tls", "guess", "counted",
                 "known")

    def __init__(self, role: Role, conn: ConnTuple, pid: int, ns_pid: int, tls: bool) -> None:
        self.role = role
        self.conn = conn
        self.pid = pid
        self.ns_pid = ns_pid
        self.tls = tls  # its exchanges are TLS plaintext (the library probes)
        self.protocol: Protocol | None = None
        self.attempts = 0
        self.ignored = False
        self.guess = ""  # what its first exchange looked like, when no protocol recognised it
        self.counted = False  # counted as unrecognised
        self.known: dict[Key, Known] | None = None  # keys whose records go the short way (known.py)

    @property
    def server_port(self) -> int:
        return self.conn.local_port if self.role is Role.SERVER else self.conn.remote_port


class Tracker:
    """Turns connection events and exchange records into `Exchange`s handed to `emit`."""

    def __init__(self, protocols: tuple[Protocol, ...], emit: Callable[[Exchange], None],
                 max_connections: int = 65536, sampler: Sampler = PARENT_BASED_ALWAYS_ON,
                 traces: bool = True) -> None:
        self._protocols = protocols
        self._http2 = next((p for p in protocols if isinstance(p, HTTP2)), None)
        self._emit = emit
        self._max_connections = max_connections
        self._sampler = sampler
        self._traces = traces
        self._conns: OrderedDict[int, Connection] = OrderedDict()
        self._swept: dict[int, int] = {}  # sock_id -> req_start_ns of the exchange ended idle
        # server contexts by exchange key, in two generations: the newest, then the one before it
        self._parents: dict[tuple[int, int], TraceContext] = {}
        self._older_parents: dict[tuple[int, int], TraceContext] = {}
        self._waiting: dict[tuple[int, int], list[tuple[int, Connection, ExchangeRecord, Parsed]]] = {}
        self._task_parents: TaskParents[tuple[Connection, ExchangeRecord, Parsed]] = TaskParents()
        self._logged: set[tuple[int, int]] = set()  # (pid, port) of unrecognised traffic, logged once
        self._per_pid: dict[int, int] = {}  # host pid -> its open connections
        self.stats = TrackerStats()

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def waiting(self) -> int:
        """Client exchanges waiting for their parent's record."""
        return sum(len(v) for v in self._waiting.values()) + len(self._task_parents)

    def handle(self, ev: Event, excluded: bool = False) -> None:
        """A CONN_OPEN or CONN_CLOSE event. `excluded`: a connection of a process the selection
        turned out not to include (it reported while pending): its exchanges are dropped."""
        if ev.type is EventType.CONN_OPEN:
            self._open(ev.sock_id, ev.role, ev.tuple, ev.pid, ev.ns_pid, ev.tls).ignored = excluded
        else:
            self._close(ev.sock_id, ev.ts_ns)

    def exchange(self, rec: ExchangeRecord) -> None:
        """One exchange record from the kernel."""
        if self._swept.get(rec.sock_id) == rec.req_start_ns:
            del self._swept[rec.sock_id]
            self.stats.duplicates += 1
            return
        self._record(rec)

    def h2(self, chunk: H2Chunk) -> None:
        """A chunk of an HTTP/2 connection (the kernel recognised its preface): the streams it
        finishes are exchanges. A server stream continues an incoming traceparent, else starts a
        trace; a client stream starts one (the kernel links no parent to HTTP/2 streams)."""
        self.stats.records += 1
        self.stats.bytes += chunk.moved
        c = self._conns.get(chunk.sock_id)
        if c is None:  # its CONN_OPEN was lost (full ring) or evicted
            c = self._open(chunk.sock_id, chunk.role, NO_TUPLE, chunk.pid, chunk.ns_pid, chunk.tls)
        if c.ignored or self._http2 is None:
            return
        c.protocol = self._http2
        self._streams(c, self._http2.chunk(chunk))

    def _streams(self, c: Connection, streams: list[StreamDone]) -> None:
        for done in streams:
            ctx = None
            if self._traces:
                request = done.parsed.request
                ctx = (server_context(request.traceparent, self._sampler, 0, 0) if c.role is Role.SERVER
                       else client_context(None, self._sampler, 0, 0))
            self._emit_exchange(c, done.protocol, done.tid, done.parsed, ctx)

    def sweep(self, records: Iterable[ExchangeRecord], finished_only: bool = True) -> list[ExchangeRecord]:
        """Exchanges found idle in the kernel's state: ended now, unless their protocol knows
        more response bytes are due (`finished_only`); the kernel's own record of each ended
        one, if it sends it later, is dropped. Returns those ended (for the kernel to know)."""
        ended = []
        for rec in records:
            if self.swept(rec):
                continue  # already ended by an earlier sweep
            if finished_only and not self._finished(rec):
                continue
            self._record(rec)  # first: a connection it opens forgets the sock_id's swept mark
            self._swept[rec.sock_id] = rec.req_start_ns
            ended.append(rec)
        return ended

    def swept(self, rec: ExchangeRecord) -> bool:
        """Has a sweep ended this exchange?"""
        return self._swept.get(rec.sock_id) == rec.req_start_ns

    def _finished(self, rec: ExchangeRecord) -> bool:
        c = self._conns.get(rec.sock_id)
        proto = c.protocol if c is not None else None
        if proto is None:  # its first exchange: not bound yet
            proto = self._recognise(rec)
        return proto is None or proto.finished(rec)

    def _recognise(self, rec: ExchangeRecord) -> Protocol | None:
        return next((p for p in self._protocols if p.detect(rec.request, rec.response)), None)

    def expire(self, now_ns: int) -> None:
        """Children whose parent never came: out as roots; calls no Task of theirs answered
        for: children of the kernel's parent if its record came, else roots."""
        for key in [k for k, v in self._waiting.items() if v[0][0] <= now_ns]:
            for _, c, rec, parsed in self._waiting.pop(key):
                self._finish_child(c, rec, parsed, None)
        if self._task_parents:
            for c, rec, parsed in self._task_parents.expired(now_ns):
                self._finish_child(c, rec, parsed, self._parent(rec.parent) if rec.parent else None)

    def has_connections(self, pid: int) -> bool:
        """Does the process (host pid) still have open connections?"""
        return pid in self._per_pid

    def forget_process(self, pid: int) -> None:
        """The process (host pid) exited and its sockets' records are in: drop what is left."""
        for sock_id in [s for s, c in self._conns.items() if c.pid == pid]:
            self._close(sock_id)

    def _open(self, sock_id: int, role: Role, conn: ConnTuple, pid: int, ns_pid: int, tls: bool) -> Connection:
        old = self._conns.pop(sock_id, None)
        if old is not None:
            self._count_unrecognised(old)  # the address was reused, or the socket turned TLS
            self._drop(sock_id, old)  # its process may not be this one
        self._per_pid[pid] = self._per_pid.get(pid, 0) + 1
        c = self._conns[sock_id] = Connection(role, conn, pid, ns_pid, tls)
        self._swept.pop(sock_id, None)
        if len(self._conns) > self._max_connections:
            self._drop(*self._conns.popitem(last=False))
            self.stats.connections_evicted += 1
        return c

    def _close(self, sock_id: int, ts_ns: int = 0) -> None:
        self._swept.pop(sock_id, None)
        c = self._conns.pop(sock_id, None)
        if c is not None:
            self._count_unrecognised(c)
            http2 = self._http2
            if ts_ns and http2 is not None and c.protocol is http2 and not c.ignored:
                self._streams(c, http2.ended(sock_id, ts_ns))  # streams in flight end with it
            self._drop(sock_id, c)

    def _drop(self, sock_id: int, c: Connection) -> None:
        c.known = None  # its Known entries name it
        if c.protocol is not None:
            c.protocol.closed(sock_id)  # the id may come back, for another connection
        left = self._per_pid.get(c.pid, 0) - 1
        if left > 0:
            self._per_pid[c.pid] = left
        else:
            self._per_pid.pop(c.pid, None)

    def _record(self, rec: ExchangeRecord) -> None:
        self.stats.records += 1
        self.stats.bytes += rec.req_bytes + rec.resp_bytes
        c = self._conns.get(rec.sock_id)
        if c is None:  # its CONN_OPEN was lost (full ring) or evicted
            c = self._open(rec.sock_id, rec.role, NO_TUPLE, rec.pid, rec.ns_pid, rec.tls)
        if c.ignored:
            if c.counted:
                self._add_unrecognised_bytes(c, rec)
            return
        if c.protocol is None and not self._detect(c, rec):
            return
        assert c.protocol is not None
        parsed = c.protocol.parse(rec)
        if parsed is None:
            name = c.protocol.name
            self.stats.parse_failures[name] = self.stats.parse_failures.get(name, 0) + 1
            return
        if parsed.pipelined:
            name = c.protocol.name
            self.stats.pipelined[name] = self.stats.pipelined.get(name, 0) + 1
            return
        if parsed.housekeeping:
            self.stats.housekeeping += 1
            return
        if parsed.upgrade == "http2" and self._http2 is not None:
            # h2c: the kernel walks HTTP/2 from the 101 on, and the request is the stream 1 it answers
            self._http2.upgraded(rec.sock_id, parsed.request, rec.tid)
            c.protocol = self._http2
            return
        if parsed.upgrade is not None:  # nothing of its own to report: the answer is in that protocol
            c.protocol, c.guess, c.attempts = None, parsed.upgrade, c.attempts or 1
            self._count_unrecognised(c)
            return
        if parsed.ends_protocol:
            c.ignored = True
        if parsed.response is None and rec.resp_end_ns > parsed.request.end_ns:
            parsed.request.end_ns = rec.resp_end_ns  # unanswered: it lasted until the close
        known = self._lesson(c, rec, parsed)
        if not self._traces:
            self._finish(c, rec, parsed, None, known)
            return
        if c.role is Role.SERVER:
            ctx = server_context(parsed.request.traceparent, self._sampler, rec.trace_id,
                                 rec.span_id if rec.flags & FLAG_CONTEXT_REMOTE else 0)
            key = (rec.sock_id, rec.req_start_ns)
            self._remember_parent(key, ctx)
            self._finish(c, rec, parsed, ctx, known)
            if self._waiting:
                for _, child, child_rec, child_parsed in self._waiting.pop(key, ()):
                    self._finish_child(child, child_rec, child_parsed, ctx)
            if rec.tasks:
                for child, child_rec, child_parsed in self._task_parents.answered(
                        rec.pid, rec.tasks[0], rec.req_start_ns, rec.resp_start_ns, ctx):
                    self._finish_child(child, child_rec, child_parsed, ctx)
            return
        # a context the kernel wrote into the request names the kernel's parent: keep it
        if rec.tasks and not rec.flags & FLAG_CONTEXT:
            ctx = self._task_parents.find(rec.pid, rec.tasks, rec.req_start_ns)
            if ctx is None:
                self._task_parents.wait(rec.pid, rec.tasks, rec.req_start_ns, rec.req_start_ns + PARENT_WAIT_NS,
                                        (c, rec, parsed))
            else:
                self._finish_child(c, rec, parsed, ctx)
            return
        parent = self._parent(rec.parent) if rec.parent else None
        if rec.parent and parent is None:
            wait = self._waiting.setdefault(rec.parent, [])
            wait.append((rec.req_start_ns + PARENT_WAIT_NS, c, rec, parsed))
            return
        self._finish_child(c, rec, parsed, parent, known)

    def _finish_child(self, c: Connection, rec: ExchangeRecord, parsed: Parsed, parent: TraceContext | None,
                      known: Known | None = None) -> None:
        self._finish(c, rec, parsed, client_context(parent, self._sampler, rec.trace_id, rec.span_id), known)

    def _lesson(self, c: Connection, rec: ExchangeRecord, parsed: Parsed) -> Known | None:
        """What the records repeating `rec` do, to be learnt once its exchange went out (learn());
        None when its protocol cannot tell, or the connection knows its key already."""
        if rec.flags & _OWN_CONTEXT or rec.tasks or not rec.resp_start_ns:
            return None
        key = (rec.request + rec.response, len(rec.request), rec.req_head, rec.resp_head, rec.flags)
        if c.known is not None and key in c.known:
            return None
        assert c.protocol is not None
        repeats = c.protocol.repeats(rec, parsed)
        return Known(c, key, c.protocol, repeats) if repeats is not None else None

    def learn(self, known: Known, output: Output) -> None:
        """Records of `known`'s key on its connection go the short way from now on (repeat())."""
        c = known.conn
        if c.known is None:
            c.known = {}
        elif len(c.known) >= KNOWN_PER_CONNECTION:
            c.known.clear()
        known.output = output
        c.known[known.key] = known

    def repeat(self, record: bytes | memoryview, fields: tuple[Any, ...]) -> bool:
        """The short way (known.py): True when `record`, whose exchange_fields() are `fields`,
        repeats a known exchange of its connection and went out as one; False, having changed
        nothing, when it must take the full way."""
        (_, flags, _, end, pid, _, _, sock_id, req_start, _, resp_start, resp_end, req_bytes, resp_bytes, parent,
         _, req_head, resp_head, req_len, resp_len, resp_off, _, _, task, _, _, _) = fields
        if flags & _OWN_CONTEXT or task or not resp_start or end not in _END_CODES:
            return False
        c = self._conns.get(sock_id)
        if c is None or c.known is None or c.pid != pid or c.ignored:
            return False
        if resp_off != req_len:  # the probes put the response prefix right after the request's
            return False
        k = c.known.get((bytes(record[EXCHANGE_DATA:EXCHANGE_DATA + req_len + resp_len]), req_len, req_head, resp_head,
                         flags))
        if k is None or k.protocol is not c.protocol or k.output is None:
            return False
        request_size = req_bytes - k.request_head
        if request_size > k.request_max or (self._swept and sock_id in self._swept):
            return False
        server = c.role is _SERVER_ROLE
        ctx = None
        if self._traces:
            if not server and parent:
                return False  # its parent is to be found
            ctx = root_context(self._sampler)  # no traceparent, no parent: what either kind's context comes to
        stats = self.stats
        stats.records += 1
        stats.bytes += req_bytes + resp_bytes
        stats.exchanges += 1
        parent_of_calls = server and ctx is not None
        if parent_of_calls:
            self._remember_parent((sock_id, req_start), ctx)
        k.output.emit(ctx, req_start, resp_end, request_size, resp_bytes - k.response_head)
        if parent_of_calls and self._waiting:
            for _, child, child_rec, child_parsed in self._waiting.pop((sock_id, req_start), ()):
                self._finish_child(child, child_rec, child_parsed, ctx)
        return True

    def _detect(self, c: Connection, rec: ExchangeRecord) -> bool:
        c.protocol = self._recognise(rec)
        if c.protocol is not None:
            return True
        c.attempts += 1
        if c.attempts == 1:
            c.guess = guess_protocol(rec.request, rec.response)
        self._add_unrecognised_bytes(c, rec)
        if c.attempts >= DETECT_ATTEMPTS:
            self._count_unrecognised(c)
        return False

    def _add_unrecognised_bytes(self, c: Connection, rec: ExchangeRecord) -> None:
        key = (c.guess, c.server_port)
        self.stats.unrecognised_bytes[key] = self.stats.unrecognised_bytes.get(key, 0) + \
            rec.req_bytes + rec.resp_bytes

    def _count_unrecognised(self, c: Connection) -> None:
        """A connection no protocol recognised (given up, or closed first): counted once, by
        the guess from its first exchange and its server port; logged once per process and port."""
        if c.protocol is not None or c.counted or not c.attempts:
            return
        c.ignored = c.counted = True
        key = (c.guess, c.server_port)
        self.stats.unrecognised_connections[key] = self.stats.unrecognised_connections.get(key, 0) + 1
        if (c.pid, c.server_port) not in self._logged and len(self._logged) < 4096:
            self._logged.add((c.pid, c.server_port))
            log.warning("unrecognised traffic: not traced", pid=c.ns_pid, port=c.server_port, guess=c.guess,
                        role=c.role.name.lower())

    def _remember_parent(self, key: tuple[int, int], ctx: TraceContext) -> None:
        parents = self._parents
        parents[key] = ctx
        if len(parents) >= RECENT_PARENTS:  # a new generation: the one before it is forgotten
            self._older_parents = parents
            self._parents = {}

    def _parent(self, key: tuple[int, int]) -> TraceContext | None:
        return self._parents.get(key) or self._older_parents.get(key)

    def _finish(self, c: Connection, rec: ExchangeRecord, parsed: Parsed, ctx: TraceContext | None,
                known: Known | None = None) -> None:
        assert c.protocol is not None
        self._emit_exchange(c, c.protocol, rec.tid, parsed, ctx, known)

    def _emit_exchange(self, c: Connection, protocol: Protocol, tid: int, parsed: Parsed,
                       ctx: TraceContext | None, known: Known | None = None) -> None:
        kind = SpanKind.SERVER if c.role is Role.SERVER else SpanKind.CLIENT
        self.stats.exchanges += 1
        self._emit(Exchange(protocol, kind, parsed.request, parsed.response, ctx, c.pid, tid, c.ns_pid, c.conn, c.tls,
                            known))
