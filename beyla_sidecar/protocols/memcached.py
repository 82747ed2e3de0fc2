"""memcached (text protocol) from exchange records.

A request is one or more command lines, each storage command (`set`, `add`, `replace`, `append`,
`prepend`, `cas`) and meta `ms` followed by a data block of the length its line declares, which is
how the walk finds where the command ends (never by looking for a CRLF inside the data). Supported:
retrieval (`get`, `gets`, `gat`, `gats`, several keys), storage, `delete`, `incr`, `decr`, `touch`,
`flush_all`, `version`, `stats`, `verbosity`, `quit`, the admin commands (`slabs`, `lru`,
`lru_crawler`, `cache_memlimit`, `shutdown`, `watch`) and the meta commands of memcached 1.6 (`mg`,
`ms`, `md`, `ma`, `mn`, `me`; `ms <key> <datalen> <flags>*`). Commands are case-sensitive (memcached
answers `GET` with `ERROR`): a line starting with another word is named `_OTHER`.

Recognised from the bytes, never by port: the first line must be a well-formed command (COMMANDS,
arguments checked) and the first reply line one that command can get (`get` -> `VALUE` or `END`,
`set` -> `STORED`..., any command -> `ERROR`, `CLIENT_ERROR`, `SERVER_ERROR`); a storage command whose
data block ends where its line says is recognised without a reply. HTTP/1 methods are upper case
(`GET /`), memcached commands lower case, and a Redis inline command is answered in RESP (`$`, `:`,
`+`, `-`), a byte no memcached reply starts with, and vice versa: the three never claim each other's
connections. The binary protocol (deprecated by memcached) is not parsed: its connections count as
unrecognised (guess `memcached-binary`).

Spans: name and `db.operation.name` = the command as the protocol spells it (`get`, `mg`),
`db.system.name=memcached`, `db.query.text` per BEYLA_DB_QUERY_TEXT: `sanitized` keeps the command
and `?` for each argument (`set ? ? ? ?`), the keyword `noreply`, the flags of meta commands (their
tokens as `?`: `ms ? ? T?`) and the subcommand of `stats`/`slabs`/`lru`/`lru_crawler` (`stats
slabs`); `raw` the command line as sent (keys and numbers, as far as the prefix holds them, `...`
marking a cut); `off` none. The data block is never exported (it is the cached value; with
memcached's text-protocol authentication, a `set` whose data is the user name and password). An `ERROR`, `CLIENT_ERROR` or `SERVER_ERROR` reply sets
`db.response.status_code` and `error.type` to that keyword. Misses and refused writes are the normal
life of a cache, not errors: `NOT_FOUND`, `NOT_STORED`, `EXISTS` and the meta `EN`, `NF`, `NS`, `EX`
set `db.response.status_code` only (so the metric separates them from hits). A single `get`/`gets`/
`gat`/`gats` gets `db.response.returned_rows`, the number of values returned (0: a miss), when the
captured reply shows it (its `END`, or the last value's declared length reaching its byte count).

Pipelines and `noreply`: the kernel cuts a connection's bytes by direction, so commands written
before the first reply are one exchange. So are commands that get no reply (`noreply`, meta `q`)
and the commands after them up to one that is answered: pymemcache's default `noreply` sets are
one exchange with the next `get`. Per-command times do not exist in that record, so such an
exchange is one span, a batch as for Redis: `db.operation.name` `BATCH <command>` when all its
commands share one name (`BATCH set` for set_many), else `BATCH`, `db.operation.batch.size` when the
prefix shows where every command ends, `db.query.text` the commands `; `-separated (`; ...` when
more follow), and the first error reply among the replies seen. Its span starts with its first
command: after a `noreply` command the wait until the next command is in it. A request that expects
no reply (`noreply`, `quit`) and gets none is no error; any other unanswered request is `incomplete`.
`watch` turns the connection into a log stream: its span lasts while it streams, then the
connection is no longer traced.

Metric: `db.client.operation.duration` for CLIENT exchanges (as protocols/redis.py): a memcached
server in the pod gets SERVER spans but no metric. No per-connection state is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from ..bpf.events import ExchangeRecord
from .base import Message, Parsed, SpanDescription, SpanKind
from .database import PARSE_CACHE, Database

MAX_TEXT_ARGS = 64  # `?` placeholders in a sanitized command; more show as ` ...`
MAX_KEY = 250  # memcached's longest key
OTHER = "_OTHER"  # the name of a command memcached does not know

RETRIEVAL = frozenset((b"get", b"gets", b"gat", b"gats"))
STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))
META = frozenset((b"mg", b"ms", b"md", b"ma", b"me"))  # a key, then flags (`ms`: a key, a length, flags)
# Commands whose first argument is a subcommand, kept in the sanitized text.
SUBCOMMANDS = frozenset((b"stats", b"slabs", b"lru", b"lru_crawler"))
ADMIN = frozenset((b"quit", b"shutdown", b"cache_memlimit", b"watch", b"flush_all", b"version", b"verbosity",
                   b"mn")) | SUBCOMMANDS
COMMANDS = RETRIEVAL | STORAGE | META | ADMIN | frozenset((b"delete", b"incr", b"decr", b"touch"))
# Never answered: `quit` closes the connection, a successful `shutdown` stops the server.
NO_REPLY = frozenset((b"quit", b"shutdown"))
STREAM_COMMANDS = frozenset((b"watch",))  # the connection streams log lines afterwards

ERRORS = frozenset(("ERROR", "CLIENT_ERROR", "SERVER_ERROR"))
# Replies that are no error but worth a db.response.status_code: misses and refused writes.
NEGATIVE = frozenset(("NOT_FOUND", "NOT_STORED", "EXISTS", "EN", "NF", "NS", "EX"))
NUMBER = b"0"  # what _first_reply() says of an `incr`/`decr` result
_ERROR_REPLIES = frozenset(e.encode() for e in ERRORS)
_STORED = frozenset((b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND"))
# The first reply line each command can get (besides the errors), for detection.
FIRST_REPLIES: dict[bytes, frozenset[bytes]] = {
    **{c: frozenset((b"VALUE", b"END")) for c in RETRIEVAL},
    **{c: _STORED for c in STORAGE},
    b"delete": frozenset((b"DELETED", b"NOT_FOUND")),
    b"incr": frozenset((NUMBER, b"NOT_FOUND")),
    b"decr": frozenset((NUMBER, b"NOT_FOUND")),
    b"touch": frozenset((b"TOUCHED", b"NOT_FOUND")),
    b"flush_all": frozenset((b"OK",)),
    b"verbosity": frozenset((b"OK",)),
    b"version": frozenset((b"VERSION",)),
    b"stats": frozenset((b"STAT", b"END")),
    b"mg": frozenset((b"VA", b"HD", b"EN")),
    b"ms": frozenset((b"HD", b"NS", b"EX", b"NF")),
    b"md": frozenset((b"HD", b"NF", b"EX")),
    b"ma": frozenset((b"HD", b"VA", b"NF", b"NS", b"EX")),
    b"mn": frozenset((b"MN",)),
}
REPLIES = frozenset().union(*FIRST_REPLIES.values()) | _ERROR_REPLIES | frozenset((b"ME",))

_REPLY_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_FIRST_REPLY = re.compile(rb"([A-Z_]{2,12}|[0-9]{1,20})(?:\r\n| |:)")
_KEYWORD = re.compile(rb"[A-Z_]{2,12}")
_WORD = re.compile(rb"[A-Za-z][A-Za-z0-9_]{0,31}\Z")
_FLAG = re.compile(rb"[A-Za-z][^\x00-\x20\x7f]*\Z")
_SUB = re.compile(rb"[a-z_]{1,32}\Z")
_NOREPLY = b"noreply"
_PLAIN = bytes(range(0x21, 0x7F))
_CONTROL = bytes(range(0x20)) + b"\x7f"
_ESCAPED = tuple(chr(c) if 0x21 <= c < 0x7F else f"\\x{c:02x}" for c in range(256))

# Where the request's end stands after the walk of its prefix.
EXACT = 0  # the commands seen are all of the request
MORE = 1  # more commands follow beyond the prefix
UNKNOWN = 2  # the last command seen runs past the prefix (or past the request), where it ends is unknown

# How the reply to a request is read.
SINGLE = 0  # one command: its first reply line
ROWS = 1  # one retrieval command: its first line, and the values it returned
BATCH = 2  # several commands: the first error among the replies


class Command(NamedTuple):
    """One command of a request prefix."""

    name: bytes  # as sent; b"" when cut by the prefix
    args: list[bytes]  # the arguments the prefix shows, the last one possibly cut
    cut: bool  # the line runs past the prefix
    quiet: bool  # answered only on failure (`noreply`, meta `q`) or never (`quit`)


# A request's shape: operation, batch size, query text, whether an answer is due.
RequestShape = tuple[str, int, "str | None", bool]
# A response's shape: db.response.status_code ("": none), returned rows (-1: unknown or not a retrieval).
ResponseShape = tuple[str, int]


class RequestFields(NamedTuple):
    """What a request prefix says."""

    shape: RequestShape
    reply: int  # SINGLE, ROWS or BATCH
    stream: bool  # the connection streams after this request


@dataclass(slots=True)
class MemcachedRequest(Message):
    shape: Hashable = field(default=None, compare=False)  # RequestShape


@dataclass(slots=True)
class MemcachedResponse(Message):
    shape: Hashable = field(default=None, compare=False)  # ResponseShape


def _uint(token: bytes) -> int | None:
    return int(token) if token.isdigit() and len(token) <= 20 else None  # bytes.isdigit: ASCII only


def _is_int(token: bytes) -> bool:
    return _uint(token.removeprefix(b"-")) is not None


def _is_key(token: bytes) -> bool:
    """A key as the text protocol allows it: no spaces or control characters (the split saw to
    spaces), at most MAX_KEY bytes."""
    return 0 < len(token) <= MAX_KEY and len(token.translate(None, _CONTROL)) == len(token)


def _noreply_tail(args: list[bytes], fixed: int) -> bool:
    """`fixed` arguments, then optionally `noreply`."""
    return len(args) == fixed or (len(args) == fixed + 1 and args[-1] == _NOREPLY)


def _storage_line(args: list[bytes], fixed: int) -> bool:
    return (len(args) >= fixed and _noreply_tail(args, fixed) and _is_key(args[0]) and _uint(args[1]) is not None
            and _is_int(args[2]) and all(_uint(a) is not None for a in args[3:fixed]))


def _meta_line(args: list[bytes], fixed: int) -> bool:
    return (len(args) >= fixed and _is_key(args[0]) and all(_uint(a) is not None for a in args[1:fixed])
            and all(_FLAG.match(a) for a in args[fixed:]))


# Strict checks of a first command line's arguments, for detection (parsing is lenient).
LINE_CHECKS: dict[bytes, Callable[[list[bytes]], bool]] = {
    **{c: (lambda a: bool(a) and all(map(_is_key, a))) for c in (b"get", b"gets")},
    **{c: (lambda a: len(a) >= 2 and _is_int(a[0]) and all(map(_is_key, a[1:]))) for c in (b"gat", b"gats")},
    **{c: (lambda a: _storage_line(a, 4)) for c in STORAGE - {b"cas"}},
    b"cas": lambda a: _storage_line(a, 5),
    b"delete": lambda a: 1 <= len(a) <= 3 and _is_key(a[0]) and all(x in (b"0", _NOREPLY) for x in a[1:]),
    b"incr": lambda a: _noreply_tail(a, 2) and _is_key(a[0]) and _uint(a[1]) is not None,
    b"decr": lambda a: _noreply_tail(a, 2) and _is_key(a[0]) and _uint(a[1]) is not None,
    b"touch": lambda a: _noreply_tail(a, 2) and _is_key(a[0]) and _is_int(a[1]),
    b"flush_all": lambda a: (_noreply_tail(a, 0) or (_noreply_tail(a, 1) and _is_int(a[0]))),
    b"verbosity": lambda a: _noreply_tail(a, 1) and _is_int(a[0]),
    b"version": lambda a: not a,
    b"stats": lambda a: len(a) <= 3 and all(_SUB.match(x) or x.isdigit() for x in a),
    b"mg": lambda a: _meta_line(a, 1),
    b"md": lambda a: _meta_line(a, 1),
    b"ma": lambda a: _meta_line(a, 1),
    b"ms": lambda a: _meta_line(a, 2),
    b"mn": lambda a: not a,
}


def _data_length(name: bytes, args: list[bytes]) -> int | None:
    """The declared length of the data block after this command's line; None: no block (or a
    line memcached refuses, whose next line it reads as a command)."""
    if name in STORAGE:
        return _uint(args[3]) if len(args) > 3 else None
    if name == b"ms":
        return _uint(args[1]) if len(args) > 1 else None
    return None


def _quiet(name: bytes, args: list[bytes]) -> bool:
    if name in NO_REPLY:
        return True
    if name in META:
        return b"q" in args[1:]
    return bool(args) and args[-1] == _NOREPLY


def _command(line: bytes, cut: bool) -> Command | None:
    """The command on `line` (`cut`: the prefix ends inside it); None when it starts with no word."""
    words = line.split()
    if not words:
        return None
    name, args = words[0], words[1:]
    if cut and not args and not line[len(line.rstrip()):]:  # the name itself may be cut
        return Command(b"", [], True, False) if _WORD.match(name) else None
    if not _WORD.match(name):
        return None
    return Command(name, args, cut, not cut and _quiet(name, args))


def walk(b: bytes, total: int) -> tuple[list[Command], int] | None:
    """The commands of a request prefix `b` (the request has `total` bytes) and where the
    request's end stands (EXACT, MORE, UNKNOWN); None when the bytes are not memcached requests."""
    commands: list[Command] = []
    n = len(b)
    p = 0
    while p < n:
        nl = b.find(b"\n", p)
        cut = nl < 0
        command = _command(b[p:n] if cut else b[p:nl], cut)
        if command is None or (not command.name and not commands):
            return None  # not a command, or not even the first command's name
        commands.append(command)
        if cut:
            return commands, UNKNOWN
        p = nl + 1
        length = _data_length(command.name, command.args)
        if length is not None:
            p += length + 2
            if p <= n and b[p - 2:p] != b"\r\n":
                return None  # the block is not where its line says (memcached: `bad data chunk`)
    if not commands:
        return None
    return commands, (EXACT if p == total else MORE if p < total else UNKNOWN)


def _render(arg: bytes) -> str:
    if not arg.translate(None, _PLAIN):
        return arg.decode("ascii")
    return "".join([_ESCAPED[c] for c in arg])


def _sanitized(c: Command) -> str | None:
    if not c.name:  # cut by the prefix
        return "..."
    name = c.name
    if name not in COMMANDS:
        return None
    args = c.args
    parts = [name.decode("ascii")]
    if name in META:
        fixed = 2 if name == b"ms" else 1
        parts += ["?"] * min(fixed, len(args))
        parts += [a[:1].decode("latin-1") + ("?" if len(a) > 1 else "") for a in args[fixed:]]
    else:
        if name in SUBCOMMANDS and args and _SUB.match(args[0]) and not (c.cut and len(args) == 1):
            parts.append(args[0].decode("ascii"))
            args = args[1:]
        parts += ["noreply" if a == _NOREPLY else "?" for a in args]
    if len(parts) > MAX_TEXT_ARGS + 1:
        parts = [*parts[:MAX_TEXT_ARGS + 1], "..."]
    elif c.cut:
        parts.append("...")
    return " ".join(parts)


def _raw(c: Command) -> str | None:
    if not c.name or c.name not in COMMANDS:
        return _sanitized(c)
    text = " ".join([c.name.decode("ascii"), *map(_render, c.args)])
    return text + "..." if c.cut else text


def request_fields(b: bytes, total: int, mode: str) -> RequestFields | None:
    """What the request prefix `b` of a `total`-byte request says; None when it is not memcached."""
    walked = walk(b, total)
    if walked is None:
        return None
    commands, end = walked
    first = commands[0]
    render = _raw if mode == "raw" else _sanitized
    stream = any(c.name in STREAM_COMMANDS for c in commands)
    if len(commands) == 1 and end != MORE:  # one command
        known = first.name in COMMANDS
        text = None if mode == "off" else render(first)
        reply = ROWS if first.name in RETRIEVAL else SINGLE
        shape = (first.name.decode("ascii") if known else OTHER, 0, text, not first.quiet)
        return RequestFields(shape, reply, stream)
    names = {c.name for c in commands}
    batch = len(commands) if end == EXACT else -1
    name = first.name.decode("ascii") if first.name in COMMANDS else OTHER
    operation = f"BATCH {name}" if end == EXACT and len(names) == 1 else "BATCH"
    text = None
    if mode != "off":
        text = "; ".join([render(c) or OTHER for c in commands if c.name])  # a name cut: `; ...`
        if end != EXACT:
            text += "; ..."
    expects = end != EXACT or not all(c.quiet for c in commands)
    return RequestFields((operation, batch, text, expects), BATCH, stream)


def _first_reply(r: bytes) -> bytes | None:
    """The keyword of the first reply line (NUMBER for a number), None when it is not one."""
    m = _FIRST_REPLY.match(r)
    if m is None:
        return None
    word = m.group(1)
    return NUMBER if word[:1].isdigit() else word


def _value_length(line: bytes) -> int | None:
    """The data length a `VALUE <key> <flags> <bytes> [<cas>]` or `VA <bytes> <flags>*` line declares."""
    words = line.split()
    if words[0] == b"VALUE":
        return _uint(words[3]) if len(words) > 3 else None
    return _uint(words[1]) if len(words) > 1 else None


def reply_fields(r: bytes, total: int, reply: int) -> ResponseShape:
    """The status code and returned rows of a response prefix `r` (`total` bytes), read as `reply` says."""
    if reply != BATCH:  # one command: its first line says
        first = _first_reply(r)
        status = first.decode("ascii") if first is not None and first != NUMBER else ""
        if status in ERRORS or status in NEGATIVE:
            return status, -1
        if reply == SINGLE:
            return "", -1
    # walk the replies line by line, over the data blocks (a value may hold any bytes)
    values = 0
    n = len(r)
    p = 0
    while p < n:
        e = r.find(b"\n", p)
        if e < 0:
            break
        m = _KEYWORD.match(r, p)
        keyword = m.group() if m else b""
        if keyword in _ERROR_REPLIES:
            return keyword.decode("ascii"), -1
        line = r[p:e]
        p = e + 1
        if keyword == b"END" and reply == ROWS:
            return "", values
        if keyword in (b"VALUE", b"VA"):
            length = _value_length(line)
            if length is None:
                break
            values += 1
            p += length + 2
            if p > n:  # the block runs past the prefix: the last value when `END` ends the response
                return "", (values if reply == ROWS and p + 5 == total else -1)
    return "", -1


def _due(r: bytes, total: int) -> bool:
    """Does a value's declared length reach beyond the `total` bytes of the response seen?"""
    n = len(r)
    p = 0
    while p < n:
        e = r.find(b"\n", p)
        if e < 0:
            return False
        line = r[p:e]
        p = e + 1
        if line.startswith((b"VALUE ", b"VA ")):
            length = _value_length(line)
            if length is None:
                return False
            p += length + 2
    return p > total


class Memcached(Database[RequestFields]):
    """memcached's text protocol (classic and meta commands), client and server side."""

    name = "memcached"
    system = "memcached"
    streams = frozenset(c.decode() for c in STREAM_COMMANDS)

    def __init__(self, query_text: str = "sanitized") -> None:
        super().__init__(query_text)
        self._replies: dict[tuple[bytes, int, int], ResponseShape] = {}

    def detect(self, request: bytes, response: bytes) -> bool:
        nl = request.find(b"\n")
        words = request[:nl].split() if nl > 0 else None
        if not words:
            return False
        name, args = words[0], words[1:]
        check = LINE_CHECKS.get(name)
        if check is None or not check(args):
            return False
        if not response:  # only a data block where its line says is specific enough alone
            length = _data_length(name, args)
            end = nl + 1 + (length or 0) + 2
            return length is not None and request[end - 2:end] == b"\r\n"
        first = _first_reply(response)
        if first is None:
            return False
        if first in _ERROR_REPLIES:
            return True
        # after a command that gets no answer, the reply is a later command's
        return first in (REPLIES if _quiet(name, args) else FIRST_REPLIES[name])

    def request_fields(self, b: bytes, total: int) -> RequestFields | None:
        return request_fields(b, total, self.query_text)

    def _reply(self, r: bytes, total: int, reply: int) -> ResponseShape:
        key = (r, total if reply == ROWS and len(r) < total else 0, reply)
        cache = self._replies
        shape = cache.get(key)
        if shape is None:
            if len(cache) >= PARSE_CACHE:
                cache.clear()
            shape = cache[key] = reply_fields(r, total, reply)
        return shape

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        fields = self._request(rec)
        if fields is None:
            return None
        response = None
        if rec.resp_start_ns:
            r = rec.response
            if r and r[0] not in _REPLY_START:
                return None
            shape = self._reply(r, rec.resp_bytes, fields.reply) if r else ("", -1)
            response = MemcachedResponse(False, rec.resp_start_ns, rec.resp_end_ns, rec.resp_bytes, 0, None, shape)
        request = MemcachedRequest(True, rec.req_start_ns, rec.req_end_ns, rec.req_bytes, 0, None, fields.shape)
        return Parsed(request, response, fields.stream)

    def finished(self, rec: ExchangeRecord) -> bool:
        """Unfinished only when the reply to a single command holds a value whose declared length
        its bytes have not reached (a large `get` paused by a slow reader)."""
        r = rec.response
        if r[:1] != b"V":  # no value: nothing has a declared length
            return True
        fields = self._request(rec)
        return fields is None or fields.reply == BATCH or not _due(r, rec.resp_bytes)

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Reads only the shapes: the request's operation, batch size, query text and whether an
        answer was due, the response's status code and rows. `with_query` (url.query) is HTTP's."""
        operation, batch, text, expects = cast(RequestShape, request.shape)
        attrs: dict[str, str | int | float | bool] = {"db.system.name": "memcached", "db.operation.name": operation}
        if text is not None:
            attrs["db.query.text"] = text
        if batch > 1:
            attrs["db.operation.batch.size"] = batch
        error_type = None
        if response is None:
            if expects:
                error_type = "incomplete"
        else:
            status, rows = cast(ResponseShape, response.shape)
            if status:
                attrs["db.response.status_code"] = status
                if status in ERRORS:
                    error_type = status
            if rows >= 0:
                attrs["db.response.returned_rows"] = rows
        return SpanDescription(operation, attrs, error_type)
