"""HTTP/1.0 and HTTP/1.1 from captured socket chunks.

Each `feed` gets the first bytes of one send/recv (`data`) and the exact number of bytes
the kernel moved (`size`). Bytes past the capture are never seen but still count: they
advance Content-Length bodies and chunked-encoding chunks, so framing survives large
bodies. Only what a span needs is kept from a head (method, target, version, status,
Host, traceparent and the framing headers); every other header, Authorization and
Cookie included, is looked at by nobody and dropped with the chunk.

Sizes: `Message.header_size` is the start line plus headers plus the empty line;
`Message.size` is every byte after that up to the end of the message as it went over the
wire (for chunked bodies that includes the chunk-size lines and trailers), so
`header_size + size` is the message's length on the wire.

Failures (`stats.failures`) count events, not bytes: one each time the stream loses its
place (a chunk that is not a valid start line where one must be, a malformed head,
Content-Length or chunk-size line, a head larger than MAX_HEAD, a head or chunk-size line
that fell into bytes the probe did not capture, a message cut short by the close).
After a failure the stream skips chunks, without counting more failures, until one
starts with a valid start line; the skipped byte count is in `skipped_bytes`.
What happens to the message whose framing got lost:
- a request is returned at once (its end is not needed: the span ends with the response);
- a response keeps counting bytes until the next response starts, the close, or a
  captured chunk that ends with a chunked body's last-chunk `0\\r\\n\\r\\n`; its end_ns is
  the timestamp of the last chunk that belonged to it.

Bodiless responses: 1xx, 204, 304 and answers to HEAD. The response stream learns the
request methods through `expect()`, which the tracker calls with each request of the same
connection in order; without it a HEAD answer that carries a Content-Length would swallow
the next response (the next start line then resyncs the stream). Interim 1xx responses
(100 Continue, 103 Early Hints) are consumed and not returned; 101 and 2xx answers to
CONNECT are returned, after which the connection is a tunnel that is skipped quietly
until something parses as HTTP again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .base import Message, Protocol, SpanDescription, SpanKind, Stream

MAX_HEAD = 8192  # longest head (start line + headers) buffered across reads
MAX_LINE = 1024  # longest chunk-size or trailer line buffered across reads
MAX_METHOD = 24
MAX_EXPECTED = 64  # request methods remembered by a response stream

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
_METHOD_PREFIXES = tuple(m.encode() + b" " for m in sorted(KNOWN_METHODS))
_METHOD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
_TARGET_CHARS = bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100))  # visible, no space/CTL
_HEX = b"0123456789abcdefABCDEF"
_TRACEPARENT_CHARS = b"0123456789abcdef-"
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_LAST_CHUNK = b"\r\n0\r\n\r\n"

# stream states
_HEAD = 0  # expecting a start line; a partial head may be buffered
_BODY = 1  # Content-Length body, `_rem` bytes left
_CHUNK_SIZE = 2  # expecting a chunk-size line
_CHUNK_DATA = 3  # `_rem` bytes of chunk data plus its CRLF left
_TRAILER = 4  # after the last chunk: trailer lines up to an empty line
_UNTIL_CLOSE = 5  # response body delimited by the connection close
_LOST = 6  # skipping chunks until one starts with a start line
_LOST_BODY = 7  # same, counting them into the pending response


@dataclass(slots=True)
class HttpRequest(Message):
    method: str = ""
    path: str = ""
    query: str = ""  # without the '?', '' when none
    version: str = ""  # "1.1" or "1.0"
    host: str | None = None  # Host header (or absolute-form authority), port included


@dataclass(slots=True)
class HttpResponse(Message):
    status_code: int = 0
    version: str = ""


def _head_end(b: bytes | bytearray, s: int, search_from: int) -> int:
    """Index just past the empty line ending the head that starts at `s`, or -1.

    The line ending of the start line decides CRLF or bare-LF framing.
    """
    nl = b.find(b"\n", s)
    if nl < 0:
        return -1
    if nl > s and b[nl - 1] == 13:
        i = b.find(b"\r\n\r\n", max(nl - 1, search_from))
        return i + 4 if i >= 0 else -1
    i = b.find(b"\n\n", max(nl, search_from))
    return i + 2 if i >= 0 else -1


def _line_end(b: bytes | bytearray, s: int, nl: int) -> int:
    return nl - 1 if nl > s and b[nl - 1] == 13 else nl


def _request_line(b: bytes | bytearray, s: int, e: int) -> tuple[bytes, bytes, str] | None:
    """(method, target, version) of `b[s:e]` (no line ending), None when not a request line."""
    sp1 = b.find(b" ", s, e)
    sp2 = b.rfind(b" ", s, e)
    if sp1 <= s or sp2 <= sp1 + 1 or sp1 - s > MAX_METHOD:
        return None
    version = _VERSIONS.get(bytes(b[sp2 + 1:e]))
    if version is None:
        return None
    method = bytes(b[s:sp1])
    target = bytes(b[sp1 + 1:sp2])
    if method.translate(None, _METHOD_CHARS) or target.translate(None, _TARGET_CHARS):
        return None
    return method, target, version


def _status_line(b: bytes | bytearray, s: int, e: int) -> tuple[int, str] | None:
    """(status code, version) of `b[s:e]`, None when not a status line."""
    if e - s < 12 or b[s + 8] != 32 or (e - s > 12 and b[s + 12] != 32):
        return None
    version = _VERSIONS.get(bytes(b[s:s + 8]))
    code = b[s + 9:s + 12]
    if version is None or not code.isdigit() or code[0] == 48:  # '0xx' is no status
        return None
    return int(code), version


def _header(low: bytes, name: bytes) -> bytes | None:
    """Value of header `name` (b"\\nname:") in the lowercased head section `low`."""
    i = low.find(name)
    if i < 0:
        return None
    i += len(name)
    return low[i:low.find(b"\n", i)].strip()


def _content_length(v: bytes) -> int | None:
    return int(v) if v.isdigit() and len(v) <= 18 else None


def _traceparent(v: bytes | None) -> str | None:
    """A syntactically valid W3C traceparent, else None."""
    if v is None or len(v) < 55 or v[2] != 45 or v[35] != 45 or v[52] != 45:
        return None
    if v[:2] == b"ff" or (v[:2] == b"00" and len(v) != 55) or (len(v) > 55 and v[55] != 45):
        return None
    v = v[:55]
    if (v.translate(None, _TRACEPARENT_CHARS) or v.count(b"-") != 3
            or v[3:35] == b"0" * 32 or v[36:52] == b"0" * 16):
        return None
    return v.decode("ascii")


def _split_target(target: bytes) -> tuple[str, str, str | None]:
    """(path, query, authority) of a request target; authority only for absolute-form."""
    authority = None
    if target[:1] != b"/":
        low = target[:8].lower()
        if low.startswith(b"http://") or low == b"https://":
            a = target.find(b"//") + 2
            end = len(target)
            for sep in (b"/", b"?", b"#"):
                i = target.find(sep, a)
                if 0 <= i < end:
                    end = i
            authority = target[a:end].rpartition(b"@")[2].decode("utf-8", "replace")  # no userinfo
            target = target[end:]
            if target[:1] != b"/":
                target = b"/" + target
    path, _, query = target.partition(b"?")
    query = query.partition(b"#")[0]
    return path.decode("utf-8", "replace"), query.decode("utf-8", "replace"), authority


class HttpStream(Stream):
    """Requests (`is_request`) or responses of one direction of one connection."""

    def __init__(self, is_request: bool) -> None:
        super().__init__()
        self.is_request = is_request
        self.skipped_bytes = 0  # bytes of chunks skipped while resynchronising
        self._state = _HEAD
        self._after = _HEAD  # state once the current message completes (_LOST: tunnel)
        self._buf = bytearray()  # partial head or line; never more than MAX_HEAD
        self._buf_ts = 0  # ts of the chunk the buffered head started in
        self._msg: HttpRequest | HttpResponse | None = None
        self._rem = 0
        self._chunked = False
        self._expected: deque[str] = deque(maxlen=MAX_EXPECTED)

    def expect(self, request: Message | str) -> None:
        """Response streams: the next request of this connection (or its method) was seen.

        Answers are matched to requests in order; this is what makes HEAD answers
        bodiless and turns the connection into a tunnel after a successful CONNECT.
        """
        if not self.is_request:
            self._expected.append(request if isinstance(request, str)
                                  else getattr(request, "method", ""))

    def feed(self, data: bytes, size: int, ts_ns: int) -> list[Message]:
        try:
            return self._feed(data, size, ts_ns)
        except Exception:  # noqa: BLE001 - a parser bug must cost a message, not the pipeline
            self.stats.failures += 1
            self._buf.clear()
            self._msg = None
            self._state = _LOST
            self._after = _HEAD
            return []

    def close(self, ts_ns: int) -> list[Message]:
        out: list[Message] = []
        if self._msg is not None and self._state in (_UNTIL_CLOSE, _LOST_BODY):
            self._complete(out, None)
        elif self._msg is not None or self._buf:
            self.stats.failures += 1  # cut short by the close
        self._buf.clear()
        self._msg = None
        self._state = self._after = _HEAD
        self._expected.clear()
        return out

    # -- internals -------------------------------------------------------------------

    def _feed(self, data: bytes, size: int, ts: int) -> list[Message]:
        out: list[Message] = []
        n = len(data)
        extra = size - n if size > n else 0  # moved by the kernel, not captured
        st = self._state
        if st >= _LOST:
            if not self._resyncs(data):
                if st == _LOST_BODY:
                    self._lost_body(data, n + extra, extra, ts, out)
                else:
                    self.skipped_bytes += n + extra
                return out
            if st == _LOST_BODY:
                self._complete(out, None)
            self._state = _HEAD
        pos = 0
        while pos < n or extra:
            st = self._state
            mark = (st, pos, extra)
            if st == _BODY or st == _CHUNK_DATA:
                msg = self._msg
                rem = self._rem
                if pos < n:
                    take = min(rem, n - pos)
                    pos += take
                else:
                    take = min(rem, extra)
                    extra -= take
                rem -= take
                self._rem = rem
                msg.size += take
                msg.end_ns = ts
                if rem == 0:
                    if st == _BODY:
                        self._complete(out, ts)
                    else:
                        self._state = _CHUNK_SIZE
            elif st == _HEAD:
                pos, extra = self._head(data, pos, n, extra, ts, out)
            elif st == _CHUNK_SIZE or st == _TRAILER:
                if pos == n:
                    # only uncaptured bytes left: exactly the rest of the last chunk is a safe bet
                    if not self._buf and extra == (5 if st == _CHUNK_SIZE else 2):
                        self._msg.size += extra
                        extra = 0
                        self._complete(out, ts)
                    else:
                        self._lose(out, extra, ts)
                        extra = 0
                    continue
                line, pos = self._line(data, pos, n, extra, ts, out)
                if line is None:
                    break
                if st == _TRAILER:
                    if not line or line == b"\r":
                        self._complete(out, ts)
                    continue
                hexsize = line.partition(b";")[0].strip()
                if not hexsize or len(hexsize) > 15 or hexsize.translate(None, _HEX):
                    self._lose(out, n - pos + extra, ts)
                    break
                csize = int(hexsize, 16)
                if csize:
                    self._rem = csize + 2
                    self._state = _CHUNK_DATA
                else:
                    self._state = _TRAILER
            elif st == _UNTIL_CLOSE:
                self._msg.size += n - pos + extra
                self._msg.end_ns = ts
                pos, extra = n, 0
            else:  # lost (or tunnelling) from the middle of this chunk on: skip the rest
                if st == _LOST_BODY:
                    self._msg.size += n - pos + extra
                else:
                    self.skipped_bytes += n - pos + extra
                break
            if (self._state, pos, extra) == mark:  # cannot happen; never spin
                self._lose(out, n - pos + extra, ts)
                break
        return out

    def _head(self, data: bytes, pos: int, n: int, extra: int, ts: int,
              out: list[Message]) -> tuple[int, int]:
        """Parse (or buffer) the head starting at `pos`; returns the new (pos, extra)."""
        buf = self._buf
        if buf:
            old = len(buf)
            take = min(n - pos, MAX_HEAD - old)
            buf += data[pos:pos + take]
            e = _head_end(buf, 0, old - 3 if old > 3 else 0)
            if e < 0:
                pos += take
                if pos < n or extra or len(buf) >= MAX_HEAD or not self._plausible(buf):
                    self._lose(out, n - pos + extra, ts)
                    return n, 0
                return pos, extra
            src = bytes(buf[:e])
            s = 0
            pos += e - old
            start_ts = self._buf_ts
            buf.clear()
        else:
            while pos < n and (data[pos] == 13 or data[pos] == 10):
                pos += 1  # empty lines between messages are allowed (RFC 9112 2.2)
            if pos == n:
                if extra:  # the next message starts in bytes that were not captured
                    self._lose(out, extra, ts)
                return n, 0
            e = _head_end(data, pos, pos)
            if e < 0:
                if extra or n - pos >= MAX_HEAD or not self._plausible(data[pos:]):
                    self._lose(out, n - pos + extra, ts)
                    return n, 0
                buf += data[pos:]
                self._buf_ts = ts
                return n, extra
            src, s, start_ts = data, pos, ts
            pos = e
        if self.is_request:
            ok = self._parse_request(src, s, e, start_ts, ts, out)
        else:
            ok = self._parse_response(src, s, e, start_ts, ts, out)
        if not ok:
            self._lose(out, n - pos + extra, ts)
            return n, 0
        return pos, extra

    def _parse_request(self, b: bytes, s: int, e: int, start_ts: int, ts: int,
                       out: list[Message]) -> bool:
        nl = b.find(b"\n", s, e)
        parts = _request_line(b, s, _line_end(b, s, nl))
        if parts is None:
            return False
        method_b, target, version = parts
        method = method_b.decode("ascii")
        low = b[nl:e].lower()
        if method == "CONNECT" or (method == "OPTIONS" and target == b"*"):
            path, query, authority = target.decode("utf-8", "replace"), "", None
        else:
            path, query, authority = _split_target(target)
        host_b = _header(low, b"\nhost:")
        host = host_b.decode("utf-8", "replace") if host_b else authority
        if host is None and method == "CONNECT":
            host = path
        traceparent = _traceparent(_header(low, b"\ntraceparent:"))
        msg = HttpRequest(True, start_ts, ts, 0, e - s, traceparent,
                          method, path, query, version, host)
        self._msg = msg
        self._after = _LOST if method == "CONNECT" else _HEAD  # a tunnel follows, if accepted
        te = _header(low, b"\ntransfer-encoding:")
        if te is not None:
            if not te.endswith(b"chunked"):
                return self._bad_framing(out, ts)  # RFC 9112 6.3: the server must reject it
            self._chunked = True
            self._state = _CHUNK_SIZE
            return True
        cl = _header(low, b"\ncontent-length:")
        if cl is not None:
            length = _content_length(cl)
            if length is None:
                return self._bad_framing(out, ts)
            if length:
                self._chunked = False
                self._rem = length
                self._state = _BODY
                return True
        self._complete(out, ts)
        return True

    def _parse_response(self, b: bytes, s: int, e: int, start_ts: int, ts: int,
                        out: list[Message]) -> bool:
        nl = b.find(b"\n", s, e)
        parts = _status_line(b, s, _line_end(b, s, nl))
        if parts is None:
            return False
        status, version = parts
        if status < 200 and status != 101:
            self._state = _HEAD  # interim response: the final one follows
            return True
        method = self._expected.popleft() if self._expected else None
        msg = HttpResponse(False, start_ts, ts, 0, e - s, None, status, version)
        self._msg = msg
        if status == 101 or (method == "CONNECT" and status < 300):
            self._after = _LOST  # protocol switch or tunnel: not HTTP any more
            self._complete(out, ts)
            return True
        if method == "HEAD" or status == 204 or status == 304:
            self._complete(out, ts)
            return True
        low = b[nl:e].lower()
        te = _header(low, b"\ntransfer-encoding:")
        if te is not None:
            self._chunked = te.endswith(b"chunked")
            self._state = _CHUNK_SIZE if self._chunked else _UNTIL_CLOSE
            return True
        self._chunked = False
        cl = _header(low, b"\ncontent-length:")
        if cl is None:
            self._state = _UNTIL_CLOSE
            return True
        length = _content_length(cl)
        if length is None:
            return self._bad_framing(out, ts)
        if length:
            self._rem = length
            self._state = _BODY
        else:
            self._complete(out, ts)
        return True

    def _bad_framing(self, out: list[Message], ts: int) -> bool:
        """Head parsed but its body framing is unusable: keep the message, lose the place."""
        self._chunked = False
        self._lose(out, 0, ts)
        return True

    def _line(self, data: bytes, pos: int, n: int, extra: int, ts: int,
              out: list[Message]) -> tuple[bytes | None, int]:
        """Next line of a chunked body (without its LF), or None when it is not complete."""
        msg = self._msg
        buf = self._buf
        j = data.find(b"\n", pos)
        if j < 0:
            if extra or len(buf) + n - pos > MAX_LINE:
                self._lose(out, n - pos + extra, ts)
            else:
                buf += data[pos:]
                msg.size += n - pos
                msg.end_ns = ts
            return None, n
        msg.size += j + 1 - pos
        msg.end_ns = ts
        if buf:
            buf += data[pos:j]
            line = bytes(buf)
            buf.clear()
            if len(line) > MAX_LINE:
                self._lose(out, n - j - 1 + extra, ts)
                return None, n
        else:
            line = data[pos:j]
        return line, j + 1

    def _complete(self, out: list[Message], ts: int | None) -> None:
        msg = self._msg
        if ts is not None:
            msg.end_ns = ts
        self._msg = None
        self.stats.messages += 1
        out.append(msg)
        self._state = self._after
        self._after = _HEAD

    def _lose(self, out: list[Message], skipped: int, ts: int) -> None:
        """Framing lost: count a failure; `skipped` bytes of the current chunk are not parsed."""
        self.stats.failures += 1
        self._buf.clear()
        msg = self._msg
        if msg is None:
            self.skipped_bytes += skipped
            self._state = _LOST
        elif self.is_request:
            self.skipped_bytes += skipped
            self._after = _LOST
            self._complete(out, ts)
        else:
            msg.size += skipped
            msg.end_ns = ts
            self._state = _LOST_BODY
            self._after = _HEAD

    def _lost_body(self, data: bytes, total: int, extra: int, ts: int, out: list[Message]) -> None:
        msg = self._msg
        msg.size += total
        msg.end_ns = ts
        if self._chunked and not extra and (data.endswith(_LAST_CHUNK) or data == _LAST_CHUNK[2:]):
            self._complete(out, ts)  # the last chunk of a body whose chunk sizes were not seen

    def _plausible(self, head: bytes | bytearray) -> bool:
        """Can this incomplete head still become a valid one?"""
        nl = head.find(b"\n")
        if nl >= 0:
            e = _line_end(head, 0, nl)
            if self.is_request:
                return _request_line(head, 0, e) is not None
            return _status_line(head, 0, e) is not None
        if self.is_request:
            sp = head.find(b" ")
            method = bytes(head[:sp if sp >= 0 else MAX_METHOD + 1])
            return (sp != 0 and len(method) <= MAX_METHOD
                    and not method.translate(None, _METHOD_CHARS))
        pre = bytes(head[:9])
        return b"HTTP/1.1 ".startswith(pre) or b"HTTP/1.0 ".startswith(pre)

    def _resyncs(self, data: bytes) -> bool:
        """Does this chunk, met while lost, start a message?"""
        nl = data.find(b"\n")
        if nl < 0:  # start line longer than the capture: the prefix must do
            return data.startswith(_METHOD_PREFIXES if self.is_request else b"HTTP/1.")
        e = _line_end(data, 0, nl)
        if self.is_request:
            return _request_line(data, 0, e) is not None
        return _status_line(data, 0, e) is not None


def span_name(method: str, route: str | None) -> str:
    """`METHOD route`, or `METHOD` alone without a route (never the raw path: cardinality)."""
    name = method if method in KNOWN_METHODS else "HTTP"
    return f"{name} {route}" if route else name


def _host_only(host: str) -> str:
    """Host header value without its port; IPv6 literals without brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host[1:]
    return host.partition(":")[0]


class HTTP1(Protocol):
    """HTTP/1.0 and HTTP/1.1, over plain TCP or TLS (plaintext from the TLS library probes)."""

    name = "http"

    def detect(self, data: bytes, is_request_side: bool) -> bool:
        if is_request_side:
            return data.startswith(_METHOD_PREFIXES)
        return data.startswith(b"HTTP/1.")

    def new_stream(self, is_request_side: bool) -> HttpStream:
        return HttpStream(is_request_side)

    def path(self, request: Message) -> str | None:
        return getattr(request, "path", None) or None

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """OpenTelemetry HTTP semantic conventions.

        Unknown methods are `_OTHER` (original in `http.request.method_original`) and
        name the span `HTTP <route>`. Errors: 5xx on SERVER, 4xx and 5xx on CLIENT give
        `error.type` = the status code; no response at all gives `incomplete`.
        Body sizes are wire bytes after the head (see the module doc), when non-zero.
        """
        method = getattr(request, "method", "") or "_OTHER"
        path = getattr(request, "path", "") or "/"
        attrs: dict[str, str | int | float | bool] = {}
        if method in KNOWN_METHODS:
            attrs["http.request.method"] = method
        else:
            attrs["http.request.method"] = "_OTHER"
            attrs["http.request.method_original"] = method
        attrs["url.path"] = path
        if route:
            attrs["http.route"] = route
        query = getattr(request, "query", "")
        if with_query and query:
            attrs["url.query"] = query
        attrs["url.scheme"] = "https" if tls else "http"
        attrs["network.protocol.version"] = getattr(request, "version", "") or "1.1"
        if request.size:
            attrs["http.request.body.size"] = request.size
        host = getattr(request, "host", None)
        if kind is SpanKind.CLIENT and host:
            address = _host_only(host)
            if address:
                attrs["server.address"] = address
        error_type = None
        if response is None:
            error_type = "incomplete"
        else:
            status = getattr(response, "status_code", 0)
            attrs["http.response.status_code"] = status
            if response.size:
                attrs["http.response.body.size"] = response.size
            if status >= 500 or (status >= 400 and kind is SpanKind.CLIENT):
                error_type = str(status)
        return SpanDescription(span_name(method, route), attrs, error_type)
