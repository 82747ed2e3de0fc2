"""Redis (RESP2 and RESP3) from exchange records.

A request is a RESP array of bulk strings (`*3\\r\\n$3\\r\\nSET\\r\\n$1\\r\\nk\\r\\n$1\\r\\nv\\r\\n`, what every
client library and redis-cli send), or an inline command (`PING\\r\\n`, what health checkers and
telnet send). A connection is recognised from its first request's bytes, never by port: an array
whose first element is a command name, or an inline line starting with a well-known command
(INLINE_COMMANDS) answered by a RESP reply. RESP3 (after `HELLO 3`) changes only the replies'
types, which the reply walk knows (maps, sets, pushes, attributes, blob errors, ...).

Spans follow the OpenTelemetry Redis conventions: name and `db.operation.name` = the command in
upper case (`GET`; Redis commands are case-insensitive, so `get` and `GET` make one series),
`db.system.name=redis`, `db.namespace` = the database index once a successful `SELECT` (or
`RESET`: 0) was seen on the connection (unknown before: a connection may have selected its
database before the sidecar started, so none is guessed), `db.query.text` per BEYLA_DB_QUERY_TEXT,
and on an error reply (`-ERR ...`, `-WRONGTYPE ...`, RESP3 `!` blob errors) its prefix as
`db.response.status_code` and `error.type` (`_OTHER` when the error has no upper-case prefix);
`incomplete` when the connection closed before any reply. `server.*`/`network.*` come from the
connection (export/spans.py).

Query text (`db.query.text`): `sanitized` (default) keeps the command, the subcommand of container
commands (`CONFIG GET ?`, `CLIENT SETNAME ?`) and one `?` per argument (at most MAX_TEXT_ARGS);
`raw` the arguments too, as redis-cli prints them (quoted when not plain), as far as the prefix
holds them (`...` marks what it cut); `off` none. The arguments of SECRET_COMMANDS (AUTH, HELLO,
ACL, CONFIG, MIGRATE, SENTINEL: passwords) are never exported, not even in `raw`.

Pipelines: the kernel cuts a connection's bytes by direction, so commands written before the
first reply make one exchange (N commands, then N replies). Per-command times do not exist in
that record, so such an exchange is one span, a batch per the conventions: `db.operation.name`
`BATCH <CMD>` when all its commands are seen and share one name, else `BATCH`, and
`db.operation.batch.size` = the number of commands when the request prefix shows where every one
ends (the request fits, or its last command's declared lengths reach its exact byte count);
a batch running past the prefix has no size (only a lower bound is known, which is not the
attribute's meaning). Its `db.query.text` lists the commands seen, `; `-separated, `; ...` when more
follow. Its error is the first top-level error reply in the response prefix. A single command larger
than its prefix whose end cannot be computed (e.g. `SET k <large value> EX 10`) counts as one.

Pub/sub (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`), `MONITOR` and replication (`SYNC`, `PSYNC`)
turn the connection into a stream: that exchange gets its span (lasting while messages flow), then
the connection is no longer traced (`Parsed.ends_protocol`); those spans record no metric, their
duration being the stream's.

Metric: `db.client.operation.duration` (seconds; the conventions' buckets 1 ms ... 10 s) for
CLIENT exchanges, with `db.system.name`, `db.operation.name`, `db.namespace`, `error.type`,
`server.address`, `server.port`, `db.response.status_code`. SERVER exchanges (a redis-server in
the pod) get spans but no metric: the conventions define no database server metric, and recording
them in the client histogram would count each operation twice when both ends are in the pod.

Inline commands whose first word is GET are taken by the HTTP/1 module (tried first, by the
`GET ` prefix) and count as its parse failures; RESP arrays, what clients send, are unaffected.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from ..bpf.events import End, ExchangeRecord
from .base import Message, Parsed, SpanDescription, SpanKind
from .database import PARSE_CACHE, Database, error_attributes

MAX_TEXT_ARGS = 64  # `?` placeholders in a sanitized command; more show as ` ...`
MAX_NAME = 32  # longest command name accepted (module commands: `FT._ALIASADDIFNX`)
MAX_DB_CONNECTIONS = 16384  # connections whose selected database is remembered (then forgotten at once)

# Commands an inline request may start with to be recognised (what health checkers and people type).
INLINE_COMMANDS = frozenset((
    "PING", "ECHO", "INFO", "QUIT", "AUTH", "HELLO", "SELECT", "GET", "SET", "DEL", "EXISTS", "INCR", "DECR",
    "INCRBY", "MGET", "MSET", "KEYS", "SCAN", "TYPE", "TTL", "EXPIRE", "HGET", "HSET", "HGETALL", "LPUSH",
    "RPUSH", "LPOP", "RPOP", "LRANGE", "LLEN", "SADD", "SMEMBERS", "ZADD", "ZRANGE", "DBSIZE", "FLUSHDB",
    "FLUSHALL", "CLIENT", "CONFIG", "COMMAND", "ROLE", "TIME", "SLOWLOG", "MULTI", "EXEC", "PUBLISH",
    "SUBSCRIBE", "MONITOR", "CLUSTER", "SENTINEL", "REPLCONF", "LASTSAVE", "SAVE", "BGSAVE"))
# Commands whose arguments may hold passwords: only ever exported sanitized.
SECRET_COMMANDS = frozenset(("AUTH", "HELLO", "ACL", "CONFIG", "MIGRATE", "SENTINEL"))
# Commands whose first argument is a subcommand, kept in the sanitized text.
CONTAINER_COMMANDS = frozenset((
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SENTINEL", "SLOWLOG", "XGROUP", "XINFO"))
# After these the connection streams (pub/sub messages, MONITOR lines, the replication stream).
STREAM_COMMANDS = frozenset(("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "SYNC", "PSYNC"))

_NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-|:"
_SUB_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = b"0123456789"
_RESP_TYPES = frozenset(b"+-:$*_#,(!=%~>|")
_SIMPLE = frozenset(b"+-:_#,(")  # a line
_BLOBS = frozenset(b"$!=")  # a length line, then that many bytes and CRLF
_AGGREGATES = frozenset(b"*~>")  # a count, then that many values
_ARRAY_START = re.compile(rb"\*[1-9][0-9]{0,7}\r\n\$[1-9][0-9]{0,2}\r\n[A-Za-z]")
_INLINE_START = re.compile(rb"[ \t]*([A-Za-z]{2,16})(?:[ \t\r\n]|\Z)")
_ERROR_CODE = re.compile(rb"([A-Z][A-Z0-9_]{0,31})(?:[ \r\n]|\Z)")
_HEADER = 22  # longest length line looked for: type byte, up to 19 digits and sign, CRLF
_MAX_BULK = 1 << 40
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in b"\"'\\")
_REPR = {0x5C: "\\\\", 0x22: '\\"', 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x07: "\\a", 0x08: "\\b"}
_ESCAPED = tuple(_REPR.get(c, chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}") for c in range(256))

# Where the request's end stands after the walk of its prefix.
EXACT = 0  # the commands seen are all of the request
MORE = 1  # more commands follow beyond the prefix
UNKNOWN = 2  # the last command seen runs past the prefix, where it ends is unknown
_FORGET = ""  # a request after which the connection's database is unknown


class Command(NamedTuple):
    """One command of a request prefix."""

    name: str | None  # upper case; None: cut by the prefix
    argc: int  # arguments after the name, seen or not
    args: list[bytes]  # the arguments the prefix shows, the last one possibly cut
    cut: bool  # the last of `args` is cut


# A request's shape: operation, batch size, query text, namespace.
RequestShape = tuple[str, int, "str | None", "str | None"]


class RequestFields(NamedTuple):
    """What a request prefix says, for its shape and the connection's state."""

    shape: RequestShape  # without the namespace: the connection's, not the prefix's
    db: str | None  # database index the connection has after a successful answer; _FORGET; None: same
    stream: bool  # the connection streams after this request


@dataclass(slots=True)
class RedisRequest(Message):
    operation: str = ""  # db.operation.name: the command, or BATCH [<command>] for a pipeline
    batch_size: int = 0  # commands of a pipeline (>= 2); 0: one command; -1: a pipeline of unknown size
    query_text: str | None = None  # per BEYLA_DB_QUERY_TEXT; None: off
    namespace: str | None = None  # the connection's database index when known
    shape: Hashable = field(default=None, compare=False)  # (operation, batch_size, query_text, namespace)


@dataclass(slots=True)
class RedisResponse(Message):
    error: str = ""  # the error reply's prefix (`ERR`, `WRONGTYPE`), `_OTHER`; "": no error reply
    shape: Hashable = field(default=None, compare=False)  # error


def _int(b: bytes, s: int, e: int) -> int | None:
    """The decimal number `b[s:e]` (a leading `-` allowed), None when not one."""
    negative = b[s:s + 1] == b"-"
    digits = b[s + negative:e]
    if not digits.isdigit() or len(digits) > 19:  # bytes.isdigit: ASCII digits only, False when empty
        return None
    return -int(digits) if negative else int(digits)


def _name(raw: bytes) -> str | None:
    """A command name in upper case, None when `raw` cannot be one."""
    if not 0 < len(raw) <= MAX_NAME or raw[0] not in _LETTERS or raw.translate(None, _NAME_CHARS):
        return None
    return raw.decode("ascii").upper()


def _array_command(b: bytes, p: int, count: int) -> tuple[Command, int] | None:
    """The command whose elements start at `b[p]` (the array had `count` of them) and the offset
    just past it (-1: not known from the prefix); None when the bytes are no array of bulk strings."""
    n = len(b)
    name: str | None = None
    args: list[bytes] = []
    for i in range(count):
        if p >= n:  # this element's length line is past the prefix
            return Command(name, count - 1, args, False), -1
        if b[p] != 36:  # '$'
            return None
        e = b.find(b"\r\n", p + 1, p + _HEADER)
        if e < 0:
            return (Command(name, count - 1, args, False), -1) if n - p < _HEADER else None
        length = _int(b, p + 1, e)
        if length is None or not 0 <= length <= _MAX_BULK:
            return None
        s = e + 2
        end = s + length
        whole = end + 2 <= n
        if whole and b[end:end + 2] != b"\r\n":
            return None
        value = b[s:end] if whole else b[s:n]
        if i == 0:
            name = _name(value) if whole else None
            if whole and name is None:
                return None
        else:
            args.append(value)
        p = end + 2
        if not whole:  # its end is known only when it is the last element
            return Command(name, count - 1, args, i > 0), p if i == count - 1 else -1
    return Command(name, count - 1, args, False), p


def _inline_command(b: bytes, p: int, total: int) -> tuple[Command, int] | None:
    """The inline command line at `b[p]` and the offset past it (-1: not known)."""
    nl = b.find(b"\n", p)
    end = nl + 1 if nl >= 0 else (len(b) if total <= len(b) else -1)
    line = b[p:nl if nl >= 0 else len(b)]
    words = line.split()
    name = _name(words[0]) if words else None
    if name is None:
        return None
    args = words[1:]
    return Command(name, len(args), args, end < 0 and bool(args)), end


def _whole_commands(b: bytes) -> tuple[list[Command], int]:
    """The whole array commands `b` starts with, read off one split (what clients send, when no
    argument holds a CRLF), and the offset past them; walk() reads the rest byte by byte."""
    commands: list[Command] = []
    parts = b.split(b"\r\n")
    last = len(parts) - 1  # parts[last] follows the last CRLF: not a whole line
    i = p = 0
    while i < last:
        head = parts[i]
        if head[:1] != b"*" or not 1 < len(head) <= 8 or not head[1:].isdigit():
            break
        count = int(head[1:])
        if count < 1 or i + 2 * count >= last:
            break
        values = parts[i + 2:i + 2 * count + 1:2]
        size = len(head) + 2
        for length, value in zip(parts[i + 1:i + 2 * count:2], values):
            if length != b"$%d" % len(value):
                return commands, p
            size += len(length) + len(value) + 4
        name = _name(values[0])
        if name is None:
            break
        commands.append(Command(name, count - 1, values[1:], False))
        i += 2 * count + 1
        p += size
    return commands, p


def walk(b: bytes, total: int) -> tuple[list[Command], int] | None:
    """The commands of a request prefix `b` (the request has `total` bytes) and where the
    request's end stands (EXACT, MORE, UNKNOWN); None when the bytes are not Redis requests."""
    commands, p = _whole_commands(b) if b[:1] == b"*" else ([], 0)
    n = len(b)
    while p < n:
        c = b[p]
        if c == 42:  # '*'
            e = b.find(b"\r\n", p + 1, p + _HEADER)
            if e < 0:
                if n - p < _HEADER and commands:
                    return commands, MORE
                return None
            count = _int(b, p + 1, e)
            if count is None or count < 1:
                return None
            found = _array_command(b, e + 2, count)
        elif c in (13, 10, 32):  # blank line between inline commands
            p += 1
            continue
        elif c in _LETTERS:
            found = _inline_command(b, p, total)
        else:
            return None
        if found is None:
            return None
        command, end = found
        if command.name is None and not commands:
            return None  # not even the first command's name
        commands.append(command)
        if end < 0:
            return commands, UNKNOWN
        p = end
    if not commands:
        return None
    return commands, (MORE if p < total else EXACT)


def _render(arg: bytes) -> str:
    """An argument as redis-cli prints it: as is when plain, else double-quoted with escapes."""
    if arg and not arg.translate(None, _PLAIN):
        return arg.decode("ascii")
    return '"' + "".join([_ESCAPED[c] for c in arg]) + '"'


def _sanitized(c: Command) -> str:
    if c.name is None:  # cut by the prefix
        return "..."
    name = c.name
    argc = c.argc
    if name in CONTAINER_COMMANDS and c.args and not (c.cut and len(c.args) == 1):
        sub = c.args[0]
        if 0 < len(sub) <= 32 and not sub.translate(None, _SUB_CHARS):
            name = f"{name} {sub.decode('ascii').upper()}"
            argc -= 1
    if argc <= 0:
        return name
    if argc > MAX_TEXT_ARGS:
        return name + " ?" * MAX_TEXT_ARGS + " ..."
    return name + " ?" * argc


def _raw(c: Command) -> str:
    if c.name is None or c.name in SECRET_COMMANDS:
        return _sanitized(c)
    parts = [c.name, *(_render(a) for a in c.args)]
    if c.cut:
        parts[-1] += "..."
    if len(c.args) < c.argc:
        parts.append("...")
    return " ".join(parts)


def request_fields(b: bytes, total: int, mode: str) -> RequestFields | None:
    """What the request prefix `b` of a `total`-byte request says; None when it is not Redis."""
    walked = walk(b, total)
    if walked is None:
        return None
    commands, end = walked
    first = commands[0]
    name = first.name
    assert name is not None
    render = _raw if mode == "raw" else _sanitized
    if len(commands) == 1 and end != MORE:  # one command
        db: str | None = None
        if name == "SELECT":
            index = first.args[0] if first.argc == 1 and first.args and not first.cut else b""
            db = index.decode("ascii") if 0 < len(index) <= 5 and index.isdigit() else _FORGET
        elif name == "RESET":
            db = "0"
        text = None if mode == "off" else render(first)
        return RequestFields((name, 0, text, None), db, name in STREAM_COMMANDS)
    names = {c.name for c in commands}
    batch = len(commands) if end == EXACT else -1
    operation = f"BATCH {name}" if end == EXACT and len(names) == 1 else "BATCH"
    # a SELECT in a pipeline: which one applied, and whether it succeeded, is beyond the first reply
    db = _FORGET if names & {"SELECT", "RESET", None} else None
    text = None
    if mode != "off":
        text = "; ".join([render(c) for c in commands if c.name is not None])  # a name cut: `; ...`
        if end == MORE or end == UNKNOWN:  # more may follow what the prefix cut
            text += "; ..."
    return RequestFields((operation, batch, text, None), db, bool(names & STREAM_COMMANDS))


def _error_code(b: bytes, s: int) -> str:
    """The prefix of the error message at `b[s]`, `_OTHER` when it has none."""
    m = _ERROR_CODE.match(b, s)
    return m.group(1).decode("ascii") if m else "_OTHER"


def _skip(b: bytes, p: int) -> int:
    """Offset just past the RESP value at `b[p]` (nested values included); -1 when it goes past
    the prefix, -2 when the bytes are no RESP value."""
    n = len(b)
    pending = 1
    while pending:
        if p >= n:
            return -1
        t = b[p]
        e = b.find(b"\r\n", p + 1, p + _HEADER if t not in _SIMPLE else n)
        if e < 0:
            return -1 if t in _RESP_TYPES else -2
        pending -= 1
        if t in _SIMPLE:
            p = e + 2
            continue
        if b[p + 1:e] == b"?":  # RESP3 streamed string or aggregate: its end is not in a length
            return -1
        count = _int(b, p + 1, e)
        if count is None or t not in _RESP_TYPES:
            return -2
        p = e + 2
        if count < 0:  # null bulk string or array (RESP2)
            continue
        if t in _BLOBS:
            p += count + 2
        elif t in _AGGREGATES:
            pending += count
        elif t == 37:  # '%' map
            pending += 2 * count
        else:  # '|' attribute map, then the value it annotates
            pending += 2 * count + 1
    return p


def first_error(b: bytes) -> str:
    """The prefix of the first top-level error reply in a response prefix ("": none seen)."""
    p = 0
    n = len(b)
    while p < n:
        t = b[p]
        if t == 45:  # '-'
            return _error_code(b, p + 1)
        if t == 33:  # '!' blob error: its length line, then the message
            e = b.find(b"\r\n", p + 1, p + _HEADER)
            return _error_code(b, e + 2) if e >= 0 else "_OTHER"
        p = _skip(b, p)
        if p < 0:
            return ""
    return ""


class Redis(Database[RequestFields]):
    """Redis RESP2/RESP3 requests (arrays of bulk strings, or inline) and replies."""

    name = "redis"
    system = "redis"
    streams = STREAM_COMMANDS

    def __init__(self, query_text: str = "sanitized") -> None:
        super().__init__(query_text)
        self._errors: dict[bytes, str] = {}  # response prefix of a pipeline -> its first error
        self._dbs: dict[int, str] = {}  # sock_id -> database index selected on it

    def detect(self, request: bytes, response: bytes) -> bool:
        if response and response[0] not in _RESP_TYPES:
            return False
        if request[:1] == b"*":
            return _ARRAY_START.match(request) is not None
        if not response:  # an inline line alone could be any text protocol
            return False
        m = _INLINE_START.match(request)
        return m is not None and m.group(1).upper().decode("ascii") in INLINE_COMMANDS

    def request_fields(self, b: bytes, total: int) -> RequestFields | None:
        return request_fields(b, total, self.query_text)

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        fields = self._request(rec)
        if fields is None:
            return None
        response = None
        error = ""
        if rec.resp_start_ns:
            r = rec.response
            if r:
                t = r[0]
                if t not in _RESP_TYPES:
                    return None
                if fields.shape[1]:  # a pipeline: the first error among the replies seen
                    errors = self._errors
                    found = errors.get(r)
                    if found is None:
                        if len(errors) >= PARSE_CACHE:
                            errors.clear()
                        found = errors[r] = first_error(r)
                    error = found
                elif t == 45 or t == 33:
                    error = first_error(r)
            response = RedisResponse(False, rec.resp_start_ns, rec.resp_end_ns, rec.resp_bytes, 0, None, error, error)
        sock = rec.sock_id
        dbs = self._dbs
        namespace = dbs.get(sock) if dbs else None
        db = fields.db
        if db is not None:
            if not db:  # _FORGET
                dbs.pop(sock, None)
            elif response is not None and not error:  # SELECT or RESET succeeded
                if len(dbs) >= MAX_DB_CONNECTIONS and sock not in dbs:
                    dbs.clear()  # unknown again rather than unbounded
                dbs[sock] = db
        if rec.end is End.CLOSE and dbs:
            dbs.pop(sock, None)
        shape = fields.shape
        operation, batch, text, _ = shape
        if namespace is not None:
            shape = (operation, batch, text, namespace)
        request = RedisRequest(True, rec.req_start_ns, rec.req_end_ns, rec.req_bytes, 0, None,
                               operation, batch, text, namespace, shape)
        return Parsed(request, response, fields.stream)

    def closed(self, sock_id: int) -> None:
        self._dbs.pop(sock_id, None)

    def finished(self, rec: ExchangeRecord) -> bool:
        """Unfinished only when the reply to a single command is one string whose declared
        length its bytes have not reached (a large GET paused by a slow reader)."""
        r = rec.response
        if not r or r[0] not in _BLOBS:
            return True
        fields = self._request(rec)
        if fields is None or fields.shape[1]:
            return True
        e = r.find(b"\r\n", 1, _HEADER)
        length = _int(r, 1, e) if e > 0 else None
        return length is None or length < 0 or rec.resp_bytes >= e + 2 + length + 2

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Reads only the shapes: the operation, batch size, query text and namespace of the
        request, the error of the response. `with_query` (url.query) is HTTP's."""
        operation, batch, text, namespace = cast(RequestShape, request.shape)
        attrs: dict[str, str | int | float | bool] = {"db.system.name": "redis", "db.operation.name": operation}
        if namespace is not None:
            attrs["db.namespace"] = namespace
        if text is not None:
            attrs["db.query.text"] = text
        if batch > 1:
            attrs["db.operation.batch.size"] = batch
        error_type = None
        if response is None:
            if operation != "SHUTDOWN":  # a successful SHUTDOWN closes without a reply
                error_type = "incomplete"
        else:
            error_type = error_attributes(cast(str, response.shape), attrs)
        return SpanDescription(operation, attrs, error_type)
