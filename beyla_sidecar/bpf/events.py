"""Decoding of the records the probes put on the ring buffer (layout: probes/beyla.h).

Two shapes: `Event` for connection and process events (rare, self-contained), and
`ExchangeRecord`, one per request/response exchange (the hot path: decoded with one
precompiled struct and two slices; addresses and task names are not repeated in it,
they come with the connection's EVENT_CONN_OPEN).
"""

from __future__ import annotations

import socket
import struct
from enum import IntEnum
from typing import Any, NamedTuple

# struct conn_event: type, role, flags, pad, pid, tid, ns_pid, ns_tid, pad, ts_ns, sock_id,
# tuple (saddr, daddr, sport, dport, family, pad), comm
CONN_EVENT = struct.Struct("<BBBx4I4xQQ16s16sHHH2x16s")
# struct exchange up to data[]: type, flags, role, end, pid, ns_pid, tid, sock_id,
# req/resp start/end, req/resp bytes, parent (sock, start), req/resp head, req/resp len,
# resp_off, pad, trace id, span id (FLAG_CONTEXT), asyncio Tasks, then the traceparent area
EXCHANGE = struct.Struct("<BBBBIIIQ8QIIHHH2x16s8s4Q")
TRACEPARENT_CAPTURE = 80
EXCHANGE_DATA = EXCHANGE.size + TRACEPARENT_CAPTURE  # offset of data[]: request prefix
REQ_CAPTURE_MAX = 512
RESP_CAPTURE_MAX = 256
# struct h2_chunk up to data[]: type, flags, role, recv, pid, ns_pid, tid, sock_id, ts_ns, seq, moved, len
H2_CHUNK = struct.Struct("<BBBBIIIQQIIH6x")
H2_CHUNK_MAX = 4096
# struct conn_state (probes/conn.h): phase, tls, nl, scanning, scanned, ssl, tp_len, announced,
# filling, then the exchange (and the CONN_OPEN after it)
CONN_STATE = struct.Struct("<BBBBIQB7x")
ANNOUNCED_IN_STATE = 17  # offset of conn_state.announced: its CONN_OPEN went out
PHASE_RESPONSE = 2
# struct exec_event after its conn_event: exe_id (inode, dev, generation), path_len, then the path
EXEC_EXTRA = struct.Struct("<QIIH6x")
EXE_PATH_MAX = 256
# resp_end_ns of the exchange in a conn_state value: the idle sweep reads it before decoding
RESP_END_IN_STATE = struct.Struct(f"<{CONN_STATE.size + struct.calcsize('<BBBBIIIQ3Q')}xQ")


class EventType(IntEnum):
    EXCHANGE = 1
    CONN_OPEN = 2
    CONN_CLOSE = 3
    # process lifecycle, for discover/ (ids and comm only)
    PROCESS_EXEC = 4
    PROCESS_FORK = 5
    PROCESS_EXIT = 6
    PROCESS_LISTEN = 7
    H2_CHUNK = 8  # a stretch of one direction of an HTTP/2 connection



PROCESS_EVENTS = frozenset((EventType.PROCESS_EXEC, EventType.PROCESS_FORK, EventType.PROCESS_EXIT,
                            EventType.PROCESS_LISTEN))
FLAG_TLS = 1
FLAG_TRACEPARENT = 2
FLAG_TRUNCATED = 4
FLAG_PENDING = 8  # the process's selection waits for user space's verdict on its executable
FLAG_CONTEXT = 16  # trace_id/span_id: the context the kernel gave the exchange (propagation)
FLAG_CONTEXT_REMOTE = 32  # server: trace_id/span_id are the caller's, from a TCP option
ExeId = tuple[int, int, int]  # struct exe_id: inode, dev (kernel dev_t), generation


class Role(IntEnum):
    UNKNOWN = 0
    SERVER = 1
    CLIENT = 2


class End(IntEnum):
    """Why an exchange ended."""

    NEXT_REQUEST = 1  # the next request began on the connection
    CLOSE = 2  # the connection closed
    SWEEP = 3  # user space found it idle in the kernel's connection state


class ConnTuple(NamedTuple):
    """Local and remote endpoint of a TCP connection, addresses as text."""

    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int


NO_TUPLE = ConnTuple("", 0, "", 0)


class Event(NamedTuple):
    """A connection (CONN_OPEN, CONN_CLOSE) or process (PROCESS_*) event."""

    type: EventType
    ts_ns: int
    sock_id: int
    pid: int  # host tgid
    tid: int
    ns_pid: int  # tgid in its own PID namespace
    ns_tid: int
    role: Role
    tuple: ConnTuple
    comm: str  # task name (16 bytes max), for processes gone before /proc could be read
    tls: bool = False  # CONN_OPEN: a TLS library drives the connection (plaintext follows)
    # CONN_OPEN, PROCESS_EXEC, PROCESS_FORK: the process's selection waits for user space's verdict
    # (PROCESS_FORK: tid and ns_tid are the parent's tgid)
    pending: bool = False
    exe: ExeId | None = None  # PROCESS_EXEC with the selection made at exec: the executable
    path: str = ""  # ... and, when pending, its path as /proc/<pid>/exe shows it ("" unknown)


class ExchangeRecord(NamedTuple):
    """One request and its response as the kernel saw them (times: CLOCK_MONOTONIC ns)."""

    sock_id: int
    pid: int
    ns_pid: int
    tid: int  # host tid that received (server) or sent (client) the request
    role: Role
    end: End
    flags: int
    req_start_ns: int
    req_end_ns: int
    resp_start_ns: int  # 0: no response
    resp_end_ns: int  # without a response: when the connection closed (End.CLOSE), else 0
    req_bytes: int  # exact, captured or not
    resp_bytes: int
    parent: tuple[int, int] | None  # client: (sock_id, req_start_ns) of the server exchange being served
    req_head: int  # head length found by the kernel; 0: not found
    resp_head: int
    request: bytes  # prefix
    response: bytes  # prefix
    traceparent: bytes  # FLAG_TRACEPARENT: bytes from "traceparent:" on, found past the prefix
    # FLAG_CONTEXT (propagation on): client: the ids written into the request; server: its trace
    # id (FLAG_CONTEXT_REMOTE: the caller's trace and span ids, from a TCP option); else 0
    trace_id: int = 0
    span_id: int = 0
    # asyncio (probes/asyncio.h): client, the Task (address) that sent the request and the Tasks
    # that created it, innermost first; server, the Task that began the response; else ()
    tasks: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[int, int]:
        """Identity of the exchange: its connection and the start of its request."""
        return self.sock_id, self.req_start_ns

    @property
    def tls(self) -> bool:
        return bool(self.flags & FLAG_TLS)


class H2Chunk(NamedTuple):
    """A stretch of one direction of an HTTP/2 connection (probes/h2.h): the bytes a run of transfers
    moved, frame headers and payloads kept, except the payloads of DATA frames and of frame types
    above CONTINUATION (9), which only their header's length accounts for. Left out altogether: the
    client's preface, and PRIORITY, PING and WINDOW_UPDATE frames, whole (neither kept nor covered).
    Each direction's first chunk (seq 0) starts at a frame header; a frame header the transfers cut
    comes whole in the chunk of the transfer that completes it."""

    sock_id: int
    pid: int
    ns_pid: int
    tid: int  # host tid of the transfer
    role: Role
    recv: bool  # the bytes went into the process (else out of it)
    flags: int  # FLAG_TLS; FLAG_TRUNCATED: bytes could not be read: the framing is lost after `data`
    seq: int  # per connection and direction, from 0: a gap is a record the full ring refused
    ts_ns: int  # when the transfer that ends the chunk happened
    moved: int  # bytes of the direction's stream the chunk covers (skipped payloads included)
    data: bytes  # those bytes without the skipped payloads

    @property
    def tls(self) -> bool:
        return bool(self.flags & FLAG_TLS)


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_TYPES: tuple[EventType | None, ...] = (None, *EventType)  # value -> member without Enum.__call__
_EXCHANGE = int(EventType.EXCHANGE)  # an Enum member looked up on its class runs Python code (3.11)
_ROLES = tuple(Role)
_ENDS: tuple[End | None, ...] = (None, *End)
CACHE_LIMIT = 4096  # distinct addresses / task names remembered before a cache starts over
_TUPLE_NEW = tuple.__new__


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        if raw[:12] == _V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


def exchange_fields(record: bytes | memoryview) -> tuple[Any, ...] | None:
    """The EXCHANGE fields of a ring record or a conns map value's `rec`, in struct order; None
    when they do not describe a well-formed exchange (decode_exchange's checks, bar its end)."""
    if len(record) < EXCHANGE_DATA or record[0] != _EXCHANGE:
        return None
    fields = EXCHANGE.unpack_from(record)
    if (fields[2] > 2 or fields[18] > REQ_CAPTURE_MAX
            or fields[19] > RESP_CAPTURE_MAX or EXCHANGE_DATA + fields[20] + fields[19] > len(record)
            or fields[18] > fields[20]):
        return None
    return fields


def decode_exchange(record: bytes | memoryview, end: End | None = None,
                    fields: tuple[Any, ...] | None = None) -> ExchangeRecord | None:
    """An exchange from a ring record or a conns map value's `rec`; None when malformed.
    `fields`: exchange_fields(record), when the caller has them already."""
    if fields is None:
        fields = exchange_fields(record)
    if fields is None:
        return None
    (_, flags, role, end_code, pid, ns_pid, tid, sock_id, req_start, req_end, resp_start, resp_end,
     req_bytes, resp_bytes, parent_sock, parent_start, req_head, resp_head, req_len, resp_len,
     resp_off, trace_id, span_id, t0, t1, t2, t3) = fields
    if end is None:
        end = _ENDS[end_code] if end_code < len(_ENDS) else None
        if end is None:
            return None
    data = EXCHANGE_DATA
    tp = bytes(record[EXCHANGE.size:data]) if flags & FLAG_TRACEPARENT else b""
    trace, span = (int.from_bytes(trace_id, "big"), int.from_bytes(span_id, "big")) if flags & FLAG_CONTEXT else (0, 0)
    tasks = _chain(t0, t1, t2, t3) if t0 else ()
    return _TUPLE_NEW(ExchangeRecord, (  # not ExchangeRecord(...): its __new__ is one more Python call
        sock_id, pid, ns_pid, tid, _ROLES[role], end, flags, req_start, req_end, resp_start, resp_end,
        req_bytes, resp_bytes, (parent_sock, parent_start) if parent_sock else None, req_head, resp_head,
        bytes(record[data:data + req_len]), bytes(record[data + resp_off:data + resp_off + resp_len]), tp,
        trace, span, tasks))


def _chain(*tasks: int) -> tuple[int, ...]:
    """The Tasks up to the first unknown one."""
    end = tasks.index(0) if 0 in tasks else len(tasks)
    return tasks[:end]


def decode_h2_chunk(record: bytes | memoryview) -> H2Chunk | None:
    """An HTTP/2 chunk from a ring record; None when malformed."""
    if len(record) < H2_CHUNK.size:
        return None
    etype, flags, role, recv, pid, ns_pid, tid, sock_id, ts, seq, moved, length = H2_CHUNK.unpack_from(record)
    if role > 2 or recv > 1 or length > H2_CHUNK_MAX or H2_CHUNK.size + length > len(record) or length > moved:
        return None
    return H2Chunk(sock_id, pid, ns_pid, tid, _ROLES[role], bool(recv), flags, seq, ts, moved,
                   bytes(record[H2_CHUNK.size:H2_CHUNK.size + length]))


class Decoder:
    """Decodes records; remembers the text of addresses and task names, which repeat
    from connection to connection, so each is formatted only once."""

    def __init__(self) -> None:
        self._addrs: dict[tuple[int, bytes], str] = {}
        self._comms: dict[bytes, str] = {}

    def _address(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        text = self._addrs.get(key)
        if text is None:
            if len(self._addrs) >= CACHE_LIMIT:
                self._addrs.clear()
            text = self._addrs[key] = _addr(family, raw)
        return text

    def _comm(self, raw: bytes) -> str:
        text = self._comms.get(raw)
        if text is None:
            if len(self._comms) >= CACHE_LIMIT:
                self._comms.clear()
            text = self._comms[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return text

    def decode(self, record: bytes | memoryview) -> ExchangeRecord | H2Chunk | Event | None:
        """Decode one record; None when it is too short or malformed."""
        if not len(record):
            return None
        if record[0] == EventType.EXCHANGE:
            return decode_exchange(record)
        if record[0] == EventType.H2_CHUNK:
            return decode_h2_chunk(record)
        if len(record) < CONN_EVENT.size:
            return None
        (etype, role, flags, pid, tid, ns_pid, ns_tid, ts, sock_id, saddr, daddr, sport, dport, family,
         comm) = CONN_EVENT.unpack_from(record)
        if not 2 <= etype <= 7 or role > 2:
            return None
        exe: ExeId | None = None
        path = ""
        if etype == EventType.PROCESS_EXEC and len(record) >= CONN_EVENT.size + EXEC_EXTRA.size:
            ino, dev, gen, path_len = EXEC_EXTRA.unpack_from(record, CONN_EVENT.size)
            exe = (ino, dev, gen)
            at = CONN_EVENT.size + EXEC_EXTRA.size
            if path_len > EXE_PATH_MAX or at + path_len > len(record):
                return None
            path = bytes(record[at:at + path_len]).decode("utf-8", "surrogateescape")
        return Event(
            _TYPES[etype], ts, sock_id, pid, tid, ns_pid, ns_tid, _ROLES[role],  # type: ignore[arg-type]
            ConnTuple(self._address(family, saddr), sport, self._address(family, daddr), dport),
            self._comm(comm), bool(flags & FLAG_TLS), bool(flags & FLAG_PENDING), exe, path)
