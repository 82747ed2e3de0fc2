"""HTTP/2 (h2c with prior knowledge, and h2 over TLS) from the kernel's `H2Chunk` records.

The kernel recognises an HTTP/2 connection by the client preface and then sends, per direction, the
byte stream without DATA payloads (and without the payloads of extension frames, types above 9):
frame headers and every other frame whole (bpf/events.py `H2Chunk`). Here each direction's frames
are reassembled across chunks (frames and header blocks may be cut anywhere), header blocks
(HEADERS/PUSH_PROMISE + CONTINUATION) are decoded with one `hpack` decoder per connection and
direction, whose table size limit follows the SETTINGS_HEADER_TABLE_SIZE the decoding side
advertised, and every stream becomes one exchange:

- request: the client's HEADERS (+ CONTINUATION), DATA and trailers until END_STREAM; starts with
  the chunk holding its HEADERS frame's first byte;
- response: the server's final HEADERS (1xx are skipped), DATA and trailers; it ends, and the stream
  is reported, in the chunk holding the last byte of its END_STREAM frame; a RST_STREAM from either
  side ends the stream as an error (`H2Response.reset`, the RFC 9113 error code), unless the body
  its content-length announced was in (clients reset streams they are done with);
- a connection that closes ends its streams in flight (`ended`): with what came of their response,
  or unanswered.

Sizes: `size` sums the DATA frames' lengths (padding included: the pad length byte is in the elided
payload); `header_size` the HEADERS/CONTINUATION frames, frame headers included (compressed bytes).
Only :method, :path (path and query), :authority, :scheme, :status, content-type, content-length,
grpc-status and a valid W3C traceparent are kept; every other header (Authorization, Cookie...) is decoded, since
HPACK's table needs it, and dropped at once. Streams whose request content-type is
application/grpc (`+proto`, `;...`) are described by protocols/grpc.py (`HTTP2.grpc`); gRPC-Web
stays plain HTTP/2.

Desynchronisation: a `seq` gap (a chunk the full ring refused), FLAG_TRUNCATED or any framing
inconsistency loses the framing, and with it HPACK's dynamic table: the connection is counted in
`desyncs` by reason, its in-flight streams are dropped and nothing more is decoded on it until it
closes, so no wrong header is ever reported. Bounds: MAX_STREAMS in flight per connection,
MAX_CONNECTIONS, MAX_HEADER_BLOCK, MAX_TABLE_SIZE (a larger dynamic table desyncs); streams
forgotten (bounds, desyncs, connections closed with streams in flight) are counted in `stream_drops`.
A SETTINGS_HEADER_TABLE_SIZE larger than 4096 must be seen before the peer's first header block that
uses it (it is: the peer answers the SETTINGS frame), else the block counts as an hpack desync.

h2c via `Upgrade`: the request, an HTTP/1.1 one answered 101, is stream 1 (`upgraded`); the kernel
walks HTTP/2 from the end of the 101 head on. Not supported: server push (promised streams are
decoded for HPACK and otherwise ignored), and connections opened before the sidecar started (no
preface seen: they come as exchange records, `guess_protocol` counts them as unrecognised
"http2"). Exchange records never match (`detect`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

import structlog
from hpack import Decoder

from ..bpf.events import FLAG_TRUNCATED, ConnTuple, ExchangeRecord, H2Chunk, Role
from .base import Message, Parsed, Protocol, SpanDescription, SpanKind
from .grpc import GRPC
from .http1 import HTTP1, HttpRequest, HttpResponse, _traceparent
from .instruments import AttributeValue, InstrumentSet

log = structlog.get_logger(__name__)

MAX_STREAMS = 1024  # in flight per connection (servers allow 100-250 concurrent streams)
MAX_CONNECTIONS = 16384  # the oldest is forgotten past it (a close event lost)
MAX_HEADER_BLOCK = 256 * 1024  # compressed; a larger block cannot be kept: the connection desyncs
DECODED_BLOCKS = 64  # per direction: header blocks remembered with what they decode to
MAX_HEADER_LIST = 1 << 20  # decoded, what hpack accepts (its default 64 KiB is below real use)
MAX_TABLE_SIZE = 1 << 20  # dynamic table allowed whatever a peer advertises: memory per connection

FRAME_HEADER = struct.Struct(">HBBBI")  # length (16 + 8 bits), type, flags, stream id (R bit + 31)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
SETTINGS_HEADER_TABLE_SIZE = 1
_KEPT = frozenset((HEADERS, CONTINUATION, PUSH_PROMISE, SETTINGS, RST_STREAM))  # payloads read here
_STREAM_FRAMES = frozenset((DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION))
_FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
_WANTED = frozenset((b":method", b":path", b":authority", b":scheme", b":status", b"content-type",
                     b"content-length", b"grpc-status", b"traceparent"))
ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
               "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")


@dataclass(slots=True)
class H2Response(HttpResponse):
    """An HTTP/2 response: `HttpResponse` plus what ended its stream. `status_code` is 0 when the
    stream was reset before any response HEADERS; shape (status, "2", grpc_status, reset)."""

    grpc_status: int | None = None  # from the trailers (or a trailers-only response)
    reset: int | None = None  # RST_STREAM error code, when a reset ended the stream


class StreamDone(NamedTuple):
    """A stream that ended, as one exchange."""

    protocol: Protocol  # HTTP2, or its `grpc` for gRPC streams: describes the exchange
    parsed: Parsed
    tid: int  # tid of the chunk holding the first byte of the request's HEADERS frame
    stream_id: int


class _Stream:
    """One stream in flight: what its frames said so far (header values raw)."""

    __slots__ = ("tid", "req_start", "req_end", "req_size", "req_hsize", "fields", "resp_start", "resp_end",
                 "resp_size", "resp_hsize", "status", "grpc_status", "resp_length")

    def __init__(self, tid: int, start: int, fields: dict[bytes, bytes], hsize: int) -> None:
        self.tid = tid
        self.req_start = self.req_end = start
        self.req_size = 0
        self.req_hsize = hsize
        self.fields = fields
        self.resp_start = 0  # 0: no final response HEADERS yet
        self.resp_end = 0
        self.resp_size = 0
        self.resp_hsize = 0
        self.status = 0
        self.grpc_status: int | None = None
        self.resp_length: int | None = None  # the response's content-length


class _Direction:
    """Reassembly state of one direction: the frame being read and the header block being gathered."""

    __slots__ = ("client", "seq", "decoder", "hdr", "ftype", "fflags", "fsid", "flen", "left", "payload",
                 "fts", "ftid", "block", "block_sid", "block_flags", "block_ts", "block_tid", "block_size",
                 "block_push", "decoded")

    def __init__(self, client: bool) -> None:
        self.client = client  # carries requests
        self.seq = 0
        self.decoder = Decoder(MAX_HEADER_LIST)
        self.hdr = b""  # a frame header cut by a chunk end (< 9 bytes)
        self.ftype = self.fflags = self.fsid = self.flen = 0
        self.left = 0  # payload bytes of the current frame still to come (0: a frame header is next)
        self.payload = bytearray()  # the current frame's payload, for _KEPT types
        self.fts = self.ftid = 0  # chunk ts and tid of the current frame's first byte
        self.block: bytearray | None = None  # a header block waiting for CONTINUATION
        self.block_sid = self.block_flags = self.block_ts = self.block_tid = self.block_size = 0
        self.block_push = False
        # header block -> the fields it gave, for blocks whose decoding left the dynamic table as it
        # was: valid until the table changes (a client repeating the same headers sends the same
        # indexed block every time, and decoding it in pure Python is most of a stream's cost)
        self.decoded: dict[bytes, dict[bytes, bytes]] = {}


class _Conn:
    __slots__ = ("dirs", "streams", "max_sid", "dead")

    def __init__(self) -> None:
        self.dirs = (_Direction(False), _Direction(True))  # indexed by `client`
        self.streams: dict[int, _Stream] = {}
        self.max_sid = 0  # the highest request stream id seen: lower unknown ids are finished streams
        self.dead = False  # desynchronised: ignored until closed


class _Desync(Exception):
    """The framing of a direction is lost (reason in args[0])."""


def _frame_error(ftype: int, flags: int, sid: int, length: int) -> bool:
    """Is this frame header impossible (a sign the framing is lost)?"""
    if ftype > CONTINUATION:
        return False
    if (sid != 0) != (ftype in _STREAM_FRAMES) and ftype != WINDOW_UPDATE:
        return True
    fixed = _FIXED_LENGTH.get(ftype)
    if fixed is not None:
        return length != fixed
    if ftype == SETTINGS:
        return length % 6 != 0 or (flags & ACK and length != 0)
    return ftype == GOAWAY and length < 8


_GUESS_FLAGS = (0x09, 0x2D, 0x00, 0x00, 0x01, 0x0C, 0x01, 0x00, 0x00, 0x04)  # defined flags by type
GUESS_MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's default: what request directions use


def frames_prefix(prefix: bytes) -> bool:
    """Is `prefix` (a request prefix of an exchange record) a run of well-formed HTTP/2 frames, as a
    connection opened before the kernel could see its preface sends? At least two frame headers,
    or one frame and at most the first bytes of a next header; known types with only defined flags, stream ids and
    lengths as the frame type requires. Only for naming unrecognised traffic."""
    at = count = 0
    while at + 9 <= len(prefix):
        hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(prefix, at)
        length = (hi << 8) | lo
        if (ftype > CONTINUATION or flags & ~_GUESS_FLAGS[ftype] or sid >> 31 or length > GUESS_MAX_FRAME
                or _frame_error(ftype, flags, sid, length)):
            return False
        at += 9 + length
        count += 1
    if count != 1 or at > len(prefix):
        return count >= 2
    # one frame, then nothing or the start of the next header (a send of several iovecs, of which
    # the prefix holds the first): what there is of it must fit
    tail = prefix[at:]
    return (len(tail) < 3 or int.from_bytes(tail[:3], "big") <= GUESS_MAX_FRAME) and (len(tail) < 4 or tail[3] <= CONTINUATION)


def _grpc_content(ctype: bytes | None) -> bool:
    """application/grpc, application/grpc+proto, application/grpc;... (not gRPC-Web)."""
    return ctype is not None and ctype[:16].lower() == b"application/grpc" and ctype[16:17] in (b"", b"+", b";")


def _text(v: bytes | None) -> str:
    return v.decode("utf-8", "replace") if v else ""


def _int(v: bytes | None) -> int | None:
    return int(v) if v is not None and v.isdigit() and len(v) <= 9 else None


class HTTP2(Protocol):
    """HTTP/2 streams from H2Chunk records; spans and metrics exactly as HTTP/1's (version "2")."""

    name = "http2"
    size_attributes = HTTP1.size_attributes

    def __init__(self, grpc: GRPC | None = None) -> None:
        self.grpc = grpc or GRPC()  # describes the gRPC streams
        self._http1 = HTTP1()  # describes and measures like HTTP/1
        self._conns: dict[int, _Conn] = {}
        self.desyncs: dict[str, int] = {}  # by reason: gap, truncated, framing, hpack, limit, role
        self.stream_drops = 0

    # -- exchange records: never HTTP/2 (the kernel sends chunks for recognised connections)
    def detect(self, request: bytes, response: bytes) -> bool:
        return False

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        return None

    def closed(self, sock_id: int) -> None:
        conn = self._conns.pop(sock_id, None)
        if conn is not None:
            self.stream_drops += len(conn.streams)

    def ended(self, sock_id: int, ts_ns: int) -> list[StreamDone]:
        """Connection `sock_id` closed at `ts_ns`: its streams in flight end with it, as HTTP/1
        exchanges do. An answered one with what came of its response (a client may close once the
        body its content-length announced is in, before the server's END_STREAM); an unanswered one
        without a response, lasting until the close."""
        conn = self._conns.pop(sock_id, None)
        done: list[StreamDone] = []
        if conn is None:
            return done
        for sid, s in list(conn.streams.items()):
            if s.resp_start:
                self._finish(conn, sid, s, s.resp_end or s.resp_start, None, done)
            else:
                s.req_end = max(s.req_end, ts_ns)
                self._finish(conn, sid, s, ts_ns, None, done)
        return done

    def upgraded(self, sock_id: int, request: Message, tid: int) -> None:
        """An HTTP/1.1 request with `Upgrade: h2c` was answered 101 (RFC 7540 3.2): it is stream 1 of
        the connection, whose response comes in HTTP/2 (kernel chunks from the 101 on)."""
        self.closed(sock_id)
        conn = self._conns[sock_id] = _Conn()
        if not isinstance(request, HttpRequest):
            return
        path = request.path + ("?" + request.query if request.query else "")
        fields = {b":method": request.method.encode(), b":path": path.encode(), b":scheme": b"http"}
        if request.host:
            fields[b":authority"] = request.host.encode()
        if request.traceparent:
            fields[b"traceparent"] = request.traceparent.encode()
        s = conn.streams[1] = _Stream(tid, request.start_ns, fields, request.header_size)
        s.req_end, s.req_size = request.end_ns, request.size or 0
        conn.max_sid = 1

    def chunk(self, c: H2Chunk) -> list[StreamDone]:
        """Feed one chunk; the streams it ended, in the order they ended."""
        conn = self._conns.get(c.sock_id)
        if conn is None:
            if len(self._conns) >= MAX_CONNECTIONS:
                self.closed(next(iter(self._conns)))
            conn = self._conns[c.sock_id] = _Conn()
        if conn.dead:
            return []
        if c.role is Role.UNKNOWN:
            self._desync(conn, "role")
            return []
        d = conn.dirs[(c.role is Role.SERVER) == c.recv]
        done: list[StreamDone] = []
        if c.seq != d.seq:
            self._desync(conn, "gap")
            return done
        d.seq += 1
        try:
            self._feed(conn, d, c, done)
        except _Desync as e:
            self._desync(conn, "truncated" if c.flags & FLAG_TRUNCATED else e.args[0])
            return done
        if c.flags & FLAG_TRUNCATED:
            self._desync(conn, "truncated")
        return done

    def _desync(self, conn: _Conn, reason: str) -> None:
        self.desyncs[reason] = self.desyncs.get(reason, 0) + 1
        self.stream_drops += len(conn.streams)
        conn.streams.clear()
        conn.dead = True
        log.debug("http2 desync", reason=reason)

    def _feed(self, conn: _Conn, d: _Direction, c: H2Chunk, done: list[StreamDone]) -> None:
        """Walk the chunk frame by frame: kept bytes advance both `data` and the stream, an elided
        payload only the stream (as far as `moved` goes)."""
        data = c.data
        n = len(data)
        i = 0
        moved = c.moved  # stream bytes of the chunk not yet accounted for
        truncated = c.flags & FLAG_TRUNCATED
        if moved < n:
            raise _Desync("framing")
        while True:
            if d.left:
                if d.ftype == DATA or d.ftype > CONTINUATION:
                    take = min(d.left, moved - (n - i))  # the kept bytes after it are in the chunk too
                    if take < 0:
                        raise _Desync("framing")
                else:
                    take = min(d.left, n - i)
                    if d.ftype in _KEPT:
                        d.payload += data[i:i + take]
                    i += take
                moved -= take
                d.left -= take
                if d.left:
                    break  # the chunk ends inside the payload
                self._frame(conn, d, c, done)
                continue
            if i == n:
                break
            if not d.hdr:
                d.fts, d.ftid = c.ts_ns, c.tid
            if d.hdr or n - i < 9:
                take = min(9 - len(d.hdr), n - i)
                d.hdr += data[i:i + take]
                i += take
                moved -= take
                if len(d.hdr) < 9:
                    break
                hi, lo, ftype, flags, sid = FRAME_HEADER.unpack(d.hdr)
                d.hdr = b""
            else:
                hi, lo, ftype, flags, sid = FRAME_HEADER.unpack_from(data, i)
                i += 9
                moved -= 9
            self._header(d, (hi << 8) | lo, ftype, flags, sid & 0x7FFFFFFF)
            if not d.left:
                self._frame(conn, d, c, done)
        if not truncated and (i != n or moved != 0):
            raise _Desync("framing")

    def _header(self, d: _Direction, length: int, ftype: int, flags: int, sid: int) -> None:
        """A complete frame header: check it, then expect its payload."""
        if _frame_error(ftype, flags, sid, length) or ((d.block is not None) != (ftype == CONTINUATION)):
            raise _Desync("framing")
        if ftype in _KEPT and length > MAX_HEADER_BLOCK:
            raise _Desync("limit")
        d.ftype, d.fflags, d.fsid, d.flen, d.left = ftype, flags, sid, length, length
        if ftype in _KEPT:
            d.payload = bytearray()

    def _frame(self, conn: _Conn, d: _Direction, c: H2Chunk, done: list[StreamDone]) -> None:
        """A frame whose last byte is in chunk `c`."""
        ftype, flags, sid = d.ftype, d.fflags, d.fsid
        if ftype == DATA:
            s = conn.streams.get(sid)
            if s is None:
                return
            if d.client:
                s.req_size += d.flen
                s.req_end = c.ts_ns
            elif s.resp_start:
                s.resp_size += d.flen
                s.resp_end = c.ts_ns
                if flags & END_STREAM:
                    self._finish(conn, sid, s, c.ts_ns, None, done)
        elif ftype in (HEADERS, PUSH_PROMISE):
            p = d.payload
            pad = p[0] if flags & PADDED and p else 0
            start = (1 if flags & PADDED else 0) + (5 if ftype == HEADERS and flags & PRIORITY_FLAG else 0)
            start += 4 if ftype == PUSH_PROMISE else 0
            if start + pad > len(p):
                raise _Desync("framing")
            d.block = bytearray(p[start:len(p) - pad])
            d.block_sid, d.block_flags, d.block_ts, d.block_tid = sid, flags, d.fts, d.ftid
            d.block_size, d.block_push = d.flen + 9, ftype == PUSH_PROMISE
            if flags & END_HEADERS:
                self._block(conn, d, c, done)
        elif ftype == CONTINUATION:
            assert d.block is not None  # _header allows CONTINUATION only after an open block
            if sid != d.block_sid:
                raise _Desync("framing")
            d.block += d.payload
            d.block_size += d.flen + 9
            if len(d.block) > MAX_HEADER_BLOCK:
                raise _Desync("limit")
            if flags & END_HEADERS:
                self._block(conn, d, c, done)
        elif ftype == RST_STREAM:
            s = conn.streams.get(sid)
            if s is not None:
                self._finish(conn, sid, s, c.ts_ns, int.from_bytes(d.payload, "big"), done)
        elif ftype == SETTINGS and not flags & ACK:
            # the sender's table size is the limit for what the other direction may encode
            for key, value in struct.iter_unpack(">HI", d.payload):
                if key == SETTINGS_HEADER_TABLE_SIZE:
                    conn.dirs[not d.client].decoder.max_allowed_table_size = min(value, MAX_TABLE_SIZE)

    def _block(self, conn: _Conn, d: _Direction, c: H2Chunk, done: list[StreamDone]) -> None:
        """A complete header block: decode it (always: HPACK's table), then keep what a span needs."""
        block, d.block = bytes(d.block or b""), None
        fields = d.decoded.get(block)
        if fields is None:
            fields = self._decode(d, block)
        if d.block_push:
            return
        sid, flags, ts = d.block_sid, d.block_flags, c.ts_ns
        s = conn.streams.get(sid)
        if d.client:
            if s is None:
                if sid <= conn.max_sid:
                    return  # trailers of a stream already reported
                conn.max_sid = sid
                if len(conn.streams) >= MAX_STREAMS:
                    self.stream_drops += 1
                    return
                s = conn.streams[sid] = _Stream(d.block_tid, d.block_ts, fields, d.block_size)
            else:
                s.req_hsize += d.block_size
            s.req_end = ts
            return
        if s is None:
            return
        if not s.resp_start:
            status = _int(fields.get(b":status")) or 0
            if status < 200 and not flags & END_STREAM:
                return  # informational (100, 103): the final response follows
            s.resp_start, s.status = d.block_ts, status
            s.resp_length = _int(fields.get(b"content-length"))
        s.resp_hsize += d.block_size
        s.resp_end = ts
        grpc_status = _int(fields.get(b"grpc-status"))
        if grpc_status is not None:
            s.grpc_status = grpc_status
        if flags & END_STREAM:
            self._finish(conn, sid, s, ts, None, done)

    @staticmethod
    def _decode(d: _Direction, block: bytes) -> dict[bytes, bytes]:
        """Decode a header block (its table updates included); remember what it gave while the
        dynamic table stays as it is."""
        table = d.decoder.header_table
        entries = table.dynamic_entries
        # an insertion puts a new entry first (allocated while the old first is alive: a new id)
        before = (id(entries[0]) if entries else 0, len(entries), table._current_size)
        try:
            headers = d.decoder.decode(block, raw=True)
        except Exception as e:  # hpack raises several types, and more on garbage; the table is lost
            log.debug("hpack error", error=repr(e))
            raise _Desync("hpack") from None
        fields = {k: v for k, v in headers if k in _WANTED}  # type: ignore[misc]
        if (id(entries[0]) if entries else 0, len(entries), table._current_size) != before:
            d.decoded.clear()
        elif len(d.decoded) < DECODED_BLOCKS:
            d.decoded[block] = fields
        return fields

    def _finish(self, conn: _Conn, sid: int, s: _Stream, ts: int, reset: int | None,
                done: list[StreamDone]) -> None:
        """The stream ended (its response's END_STREAM, or a reset): report it."""
        del conn.streams[sid]
        if reset is not None and s.resp_length is not None and s.resp_size >= s.resp_length:
            reset = None  # the body its content-length announced was in: the reset only closed the stream
        f = s.fields
        method = _text(f.get(b":method"))
        path, _, query = _text(f.get(b":path")).partition("?")
        query = query.partition("#")[0]
        host = _text(f.get(b":authority")) or None
        tp = f.get(b"traceparent")
        shape = (method, path, query, "2", host)
        request = HttpRequest(True, s.req_start, s.req_end, s.req_size, s.req_hsize,
                              _traceparent(tp.strip().lower()) if tp else None, method, path, query, "2", host, shape)
        if s.resp_start:
            response = H2Response(False, s.resp_start, ts, s.resp_size, s.resp_hsize, None, s.status, "2",
                                  (s.status, "2", s.grpc_status, reset), s.grpc_status, reset)
        elif reset is not None:  # reset before any response HEADERS: no body size
            response = H2Response(False, ts, ts, None, 0, None, 0, "2", (0, "2", None, reset), None, reset)
        else:  # the connection closed before an answer
            response = None
        proto: Protocol = self.grpc if _grpc_content(f.get(b"content-type")) else self
        done.append(StreamDone(proto, Parsed(request, response), s.tid, sid))

    def path(self, request: Message) -> str | None:
        return self._http1.path(request)

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """As HTTP/1 (network.protocol.version "2"); a reset stream's error.type is its RST_STREAM
        error code name (`CANCEL`, `REFUSED_STREAM`...), without a status code when none came; a
        NO_ERROR reset after the response began is no error."""
        desc = self._http1.describe(request, response, kind, with_query, route=route, tls=tls)
        reset = getattr(response, "reset", None)
        if reset is None:
            return desc
        answered = getattr(response, "status_code", 0)
        if not answered:
            desc.attributes.pop("http.response.status_code", None)
        # NO_ERROR after a response began: the peer only stopped the stream (a client whose body is
        # in, a server that needs no more of the request): the status code tells
        if not answered or reset:
            desc.error_type = ERROR_CODES[reset] if reset < len(ERROR_CODES) else "_OTHER"
        return desc

    def instruments(self, kind: SpanKind) -> InstrumentSet:
        return self._http1.instruments(kind)

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]]:
        return self._http1.metric_attributes(kind, conn, desc, route, extra)

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        return self._http1.metric_values(request, response)
