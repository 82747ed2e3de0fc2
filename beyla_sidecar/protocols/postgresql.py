"""PostgreSQL (frontend/backend protocol v3) from exchange records.

Recognised from the bytes, never by port: a StartupMessage (its length, then protocol 3.x), an
SSLRequest or GSSENCRequest (answered `N`, `S` or `G`), a CancelRequest, or, for a connection
opened before the sidecar started, frontend messages (`Q`, `P`, `B`, `E`, `D`, `C`, `S`, `H`, `X`)
whose type bytes and lengths frame the request (the first under 16 MiB), answered (if at all) by
valid backend messages.

Housekeeping (`Parsed.housekeeping`: no span, no metric, not a failure): the SSL/GSS negotiation
answered `N`, the StartupMessage and authentication (`p` messages: passwords, SASL; even when
refused), CancelRequest, Terminate (`X`, never answered), and requests that run no statement
(Describe, Close, Bind, Sync or Flush alone). The StartupMessage's `database` becomes the
connection's `db.namespace` (`user` is never kept; without `database` it stays unknown, as on a
connection opened before the sidecar started). An SSLRequest answered `S` (`G` for GSSENCRequest)
switches the connection to TLS (GSSAPI) (`Parsed.upgrade`): its bytes are no longer PostgreSQL's;
the OpenSSL probes, when they see the connection, trace its plaintext as a new connection.

Statements (text per sql.py, BEYLA_DB_QUERY_TEXT; raw text holding the word `password`, e.g.
`ALTER ROLE ... PASSWORD '...'`, is exported sanitized):
- Simple query `Q`: its statements, split at top-level `;`. One statement: one operation. Several
  (`BEGIN; INSERT ...; COMMIT`): one span, a batch as in redis.py.
- Extended protocol: each Execute runs the statement bound to its portal (Bind) from a statement
  (Parse), in the same request or an earlier one: statement texts are remembered per connection and
  name (the unnamed statement and portal too, until a `Q` destroys them or a Close forgets them),
  at most MAX_STATEMENTS per connection (least recently used forgotten first) and MAX_CONNECTIONS
  connections (oldest forgotten first); each forgotten item counts in `state_drops`. An Execute whose
  statement is unknown (forgotten, or prepared before the sidecar started) is `EXECUTE`. A request that
  parses without executing (Parse + Sync: a client preparing a statement) is `PREPARE` with the
  statement's table and text. Several Executes in one request (pipeline mode, executemany): a batch.
- Batches: `db.operation.name` `BATCH <OP>` when all are seen and share one operation, else `BATCH`;
  `db.operation.batch.size` when the prefix shows every execution; `db.collection.name` when the ones
  naming a table name the same; `db.query.text` the common text, else the texts `; `-joined (`; ...`:
  more follow). Executions past the request prefix: a Bind seen without its Execute counts one when
  the rest of the request can hold an Execute (10 bytes); a Parse alone, one when the rest can hold a
  Bind and an Execute (23 bytes), else it is a PREPARE; room for another Bind and Execute after the
  executions counted makes a batch of unknown size (a large Bind cut by the prefix is one execution).

Responses: the first ErrorResponse's SQLSTATE (field `C`) is `db.response.status_code` and
`error.type` (`_OTHER` when the prefix cut it); the CommandComplete tag is not read (it may lie beyond
the prefix). `incomplete` when no answer came. In pipeline mode an exchange's response may answer an
earlier request: errors are those its bytes show. A response gone quiet before its ReadyForQuery
(rows of a slow query still to come), or inside a message, is not ended by the idle sweep (finished()).

COPY: `COPY ... TO STDOUT` is one exchange (one span). `COPY ... FROM STDIN` is answered by
CopyInResponse (`G`) before the client sends the data: that exchange is housekeeping and the data's
exchange (CopyData ... CopyDone/CopyFail, answered by CommandComplete or an error) gets the COPY span
with the statement's table and text (`COPY` alone when the statement was not seen). Replication
(`START_REPLICATION`, answered CopyBothResponse `W`): that exchange's span (lasting while the stream
flows, no metric), then the connection is no longer traced (`Parsed.ends_protocol`).
LISTEN/NOTIFY: `LISTEN` is a statement; NotificationResponse (`A`), NoticeResponse and ParameterStatus
sent between requests add to the current exchange's response bytes (never an error) or, once it
ended, are orphan bytes the kernel counts and drops. Not supported: the FunctionCall sub-protocol
(`F`, counted as a parse failure), direct TLS (PostgreSQL 17 `sslnegotiation=direct`: TLS from the
first byte), protocol 2.

Spans: `{db.operation.name} {db.collection.name}` (`SELECT orders`), the operation alone without a
table, `postgresql` without an operation (an empty query); `db.system.name=postgresql`,
`server.*`/`network.*` from the connection (export/spans.py). Metric `db.client.operation.duration`
(instruments.DB_CLIENT_METRICS) for CLIENT exchanges only: a postgres server in the pod gets SERVER
spans, no metric (the conventions define none, and both ends in the pod would count twice).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from ..bpf.events import ExchangeRecord
from .base import Message, Parsed, SpanDescription, SpanKind
from .database import PARSE_CACHE, Database, error_attributes
from .sql import Statement, statement

MAX_STATEMENTS = 512  # statements and portals remembered per connection (pgx caches 512, JDBC 256)
MAX_CONNECTIONS = 1024  # connections whose state (database, statements, a COPY under way) is remembered

SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
MAX_MESSAGE = 1 << 30  # the server's own limit on a message (MaxAllocSize)
MAX_STARTUP = 10000  # the server's limit on a startup packet
_FRONTEND = frozenset(b"QPBEDCSHXFpdcf")
_BACKEND = frozenset(b"RK23CdcGHWDIEVvnNAtS1sZT")
_FIRST = frozenset(b"QPBEDCSHX")  # what a request may start with mid-connection
_AUTH_ANSWERS = frozenset(b"REv")  # what a StartupMessage is answered with
_MIN_EXECUTE = 10  # bytes of the smallest Execute (type, length, empty portal, row limit)
_MIN_BIND_EXECUTE = 23  # ... of the smallest Bind and Execute
_SQLSTATE = re.compile(rb"[0-9A-Z]{5}\Z")
_PASSWORD = re.compile(rb"password", re.I)
# Where a top-level `;` is not: strings (E'' with escapes), quoted identifiers, dollar quotes,
# comments; words first, so that `$` inside an identifier (`a$b$`) starts no dollar quote.
_SPLIT = re.compile(r"""
  [Ee]'(?:[^'\\]|''|\\.)*(?:'|\Z)
| [A-Za-z_][\w$]*
| '(?:[^']|'')*(?:'|\Z)
| "(?:[^"]|"")*(?:"|\Z)
| \$\$.*?(?:\$\$|\Z)
| \$([A-Za-z_]\w*)\$.*?(?:\$\1\$|\Z)
| --[^\n]*
| /\*.*?(?:\*/|\Z)
| (?P<semicolon>;)
""", re.X | re.S)

# What a request is, for what parse() does with it.
SQL = 0  # statements run (or prepared): a span
STARTUP = 1  # StartupMessage: housekeeping, the database remembered
NEGOTIATE = 2  # SSLRequest, GSSENCRequest: housekeeping, or a switch to TLS/GSSAPI
HOUSEKEEPING = 3  # authentication, Terminate, CancelRequest, Describe/Close/Sync/Flush alone
COPY_DATA = 4  # CopyData, CopyDone, CopyFail: a COPY FROM STDIN's data

UNKNOWN_EXECUTE = Statement("EXECUTE", None, None)

# A request's shape: operation, collection, query text, batch size (0: one operation, -1: a batch
# of unknown size), namespace.
RequestShape = tuple["str | None", "str | None", "str | None", int, "str | None"]
# A statement as a request refers to it: known, a memory key (b"S" or b"P" + name) whose statement
# an earlier request parsed or bound, or None (unknown, or forgotten).
Ref = Statement | bytes | None
_COPY: RequestShape = ("COPY", None, None, 0, None)  # COPY data whose statement was not seen


class RequestFields(NamedTuple):
    """What a request prefix says, before the connection's memory is consulted."""

    kind: int
    items: tuple[Ref, ...]  # one per execution (SQL)
    size: int  # batch size: 0 one execution, -1 unknown, else len(items)
    shape: RequestShape | None  # when no item needs the memory (without the namespace)
    effects: tuple[tuple[bytes, Ref], ...]  # the memory after the request: key -> statement (None: forget)
    stores: bool  # some effect remembers a statement (else they only forget)
    sync: bool  # a ReadyForQuery is due (Q, Sync, CopyDone, CopyFail)
    database: str | None = None  # STARTUP
    code: int = 0  # NEGOTIATE: the request code


@dataclass(slots=True)
class PostgresRequest(Message):
    shape: Hashable = field(default=None, compare=False)  # RequestShape


@dataclass(slots=True)
class PostgresResponse(Message):
    shape: Hashable = field(default=None, compare=False)  # SQLSTATE of the first error, `_OTHER`; "": none


class _Conn:
    """What is remembered of one connection."""

    __slots__ = ("database", "memory", "copy")

    def __init__(self) -> None:
        self.database: str | None = None
        self.memory: dict[bytes, Statement] = {}  # b"S"/b"P" + name -> statement, least recently used first
        self.copy: RequestShape | None = None  # the COPY FROM STDIN whose data comes next

    def items(self) -> int:
        return len(self.memory) + (self.database is not None) + (self.copy is not None)


def split(text: str) -> list[str]:
    """The statements of a simple query, cut at top-level `;` (empty ones kept)."""
    parts = []
    start = 0
    for m in _SPLIT.finditer(text):
        if m.lastgroup == "semicolon":
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    return parts


def _cstring(b: bytes, s: int, e: int) -> tuple[bytes, int] | None:
    """The NUL-terminated string at b[s] before e and the offset past its NUL; None when cut."""
    z = b.find(b"\0", s, e)
    return None if z < 0 else (b[s:z], z + 1)


def _frames(b: bytes, total: int) -> tuple[list[tuple[int, int, int]], int] | None:
    """(type, body start, declared end) of the frontend messages whose header the prefix holds,
    and the request bytes after the last of them; None when the bytes are not frontend messages."""
    messages = []
    n = len(b)
    p = 0
    while p + 5 <= n:
        t = b[p]
        length = int.from_bytes(b[p + 1:p + 5], "big")
        end = p + 1 + length
        if t not in _FRONTEND or length < 4 or length > MAX_MESSAGE or end > total:
            return None
        messages.append((t, p + 5, end))
        p = end
    if p < n and b[p] not in _FRONTEND:
        return None
    return messages, total - p


def _backend(r: bytes) -> bool:
    """Do the bytes (a response prefix) frame as backend messages?"""
    n = len(r)
    p = 0
    while p < n:
        if r[p] not in _BACKEND:
            return False
        if p + 5 > n:
            return True
        length = int.from_bytes(r[p + 1:p + 5], "big")
        if length < 4 or length > MAX_MESSAGE:
            return False
        p += 1 + length
    return True


def _sqlstate(r: bytes, s: int, e: int) -> str:
    """The `C` field of the ErrorResponse body r[s:e], `_OTHER` when cut or absent."""
    while s < e and r[s]:
        found = _cstring(r, s + 1, e)
        if found is None:
            break
        value, nxt = found
        if r[s] == 67 and _SQLSTATE.match(value):  # 'C'
            return value.decode("ascii")
        s = nxt
    return "_OTHER"


def first_error(r: bytes) -> str:
    """The SQLSTATE of the first ErrorResponse in a response prefix ("": none seen)."""
    n = len(r)
    p = 0
    while p < n:
        t = r[p]
        if t not in _BACKEND:
            return ""
        if p + 5 > n:
            return "_OTHER" if t == 69 else ""
        length = int.from_bytes(r[p + 1:p + 5], "big")
        if length < 4:
            return ""
        if t == 69:  # 'E'
            return _sqlstate(r, p + 5, min(p + 1 + length, n))
        p += 1 + length
    return ""


def _types(r: bytes) -> list[int]:
    """The types of the backend messages whose header a response prefix holds."""
    types = []
    n = len(r)
    p = 0
    while p + 5 <= n:
        types.append(r[p])
        p += 1 + int.from_bytes(r[p + 1:p + 5], "big")
    return types


def _batch(items: tuple[Statement, ...], size: int) -> RequestShape:
    """The shape of several executions (a batch)."""
    known = size > 0
    ops = {s.operation for s in items}
    op = next(iter(ops)) if len(ops) == 1 else None
    operation = f"BATCH {op}" if known and op else "BATCH"
    tables = {s.collection for s in items if s.collection}
    collection = tables.pop() if known and len(tables) == 1 else None
    texts = [s.text for s in items if s.text is not None]
    text = None
    if texts:
        text = texts[0] if texts.count(texts[0]) == len(texts) else "; ".join(texts)
        if not known:
            text += "; ..."
    return (operation, collection, text, size, None)


def shape_of(items: tuple[Statement | None, ...], size: int) -> RequestShape:
    """The shape (without namespace) of a request's executions, None standing for unknown ones."""
    statements = tuple(UNKNOWN_EXECUTE if s is None else s for s in items)
    if not statements:  # a query of no statement (empty, or a comment: a health check)
        return (None, None, None, 0, None)
    if size == 0:
        s = statements[0]
        return (s.operation, s.collection, s.text, 0, None)
    return _batch(statements, size)


class _Walk:
    """One request's messages read in order: what they run and leave in the connection's memory."""

    def __init__(self, sql: Callable[[bytes, bool, bool], tuple[Statement, ...]], b: bytes) -> None:
        self.sql = sql
        self.b = b
        self.items: list[Ref] = []  # one per Execute, or per statement of a Q
        self.parses: list[Statement | None] = []
        self.local: dict[bytes, Ref] = {}  # memory keys this request sets (None: forgets)
        self.bound: Ref = None  # the statement of the last Bind
        self.bind_pending = False  # a Bind seen after the last Execute
        self.executes = 0
        self.queries = 0
        self.query_cut = False  # a Q's text went past the prefix: more statements may follow
        self.sync = False

    def message(self, t: int, s: int, e: int) -> bool:
        """Read one message (body b[s:e], cut by the prefix when e > len(b)); False: invalid."""
        if t == 68 or t == 72:  # 'D' Describe, 'H' Flush: nothing to remember
            return True
        b = self.b
        cut = e > len(b)
        end = min(e, len(b))
        if t == 81:  # 'Q': the query text, NUL-terminated
            text = b[s:end] if cut else b[s:e - 1]
            if not cut and (b[e - 1] != 0 or 0 in text):
                return False
            self.items.extend(self.sql(text, cut, True))
            self.queries += 1
            self.query_cut |= cut
            self.local[b"S"] = self.local[b"P"] = None  # a simple query destroys the unnamed ones
            self.sync = True
        elif t == 80:  # 'P': statement name, query text, parameter types
            name = _cstring(b, s, end)
            query = _cstring(b, name[1], end) if name is not None else None
            if query is None and not cut:
                return False
            stmt = None
            if name is not None:
                found = self.sql(b[name[1]:end] if query is None else query[0], query is None, False)
                stmt = found[0] if found else None
                self.local[b"S" + name[0]] = stmt
            self.parses.append(stmt)
        elif t == 66:  # 'B': portal, statement name, parameters
            self.bind_pending = True
            portal = _cstring(b, s, end)
            source = _cstring(b, portal[1], end) if portal is not None else None
            if source is None:
                self.bound = None
                return cut
            key = b"S" + source[0]
            self.bound = self.local[b"P" + portal[0]] = self.local.get(key, key)
        elif t == 69:  # 'E': portal, row limit
            self.executes += 1
            self.bind_pending = False
            portal = _cstring(b, s, end)
            if portal is None and not cut:
                return False
            key = b"P" + portal[0] if portal is not None else b""
            self.items.append(self.local.get(key, key) if key else None)
        elif t == 67:  # 'C' Close: 'S' or 'P', then the name
            name = _cstring(b, s + 1, end)
            kind = b[s:s + 1]
            if name is not None and kind in (b"S", b"P"):
                self.local[kind + name[0]] = None
        elif t == 83:  # 'S' Sync
            self.sync = True
        return True

    def fields(self, rest: int) -> RequestFields:
        """What the request runs; `rest`: its bytes after the last message header the prefix holds."""
        items = self.items
        executions = self.executes
        if self.bind_pending and rest >= _MIN_EXECUTE:  # the last Bind's Execute lies past the prefix
            items = [*items, self.bound]
            executions += 1
            rest -= _MIN_EXECUTE
        elif not items and self.parses and rest >= _MIN_BIND_EXECUTE:  # so do its Bind and Execute,
            items = [self.parses[-1]]  # of sizes unknown: one execution
            executions, rest = 1, 0
        elif not items:  # parsed, not executed: prepared
            items = [Statement("PREPARE", p.collection, p.text) if p else Statement("PREPARE", None, None)
                     for p in self.parses]
        more_executions = executions > 0 and rest >= _MIN_BIND_EXECUTE
        if len(items) > 1:
            size = -1 if self.query_cut or more_executions else len(items)
        else:
            size = -1 if more_executions else 0
        effects = tuple(self.local.items())
        stores = any(v is not None for v in self.local.values())
        if not items and not self.queries:  # Describe, Close, Sync, Flush: no statement runs
            return RequestFields(HOUSEKEEPING, (), 0, None, effects, stores, self.sync)
        refs = tuple(items)
        shape = None
        if not any(type(i) is bytes for i in refs):
            shape = shape_of(cast(tuple[Statement | None, ...], refs), size)
        return RequestFields(SQL, refs, size, shape, effects, stores, self.sync)


def _startup(b: bytes, total: int) -> RequestFields | None:
    """A request without a type byte: StartupMessage, SSLRequest, GSSENCRequest, CancelRequest."""
    if len(b) < 8:
        return None
    length = int.from_bytes(b[:4], "big")
    code = int.from_bytes(b[4:8], "big")
    if length != total:
        return None
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return RequestFields(NEGOTIATE, (), 0, None, (), False, False, None, code) if length == 8 else None
    if code == CANCEL_REQUEST:
        return RequestFields(HOUSEKEEPING, (), 0, None, (), False, False) if length == 16 else None
    if code >> 16 != 3 or code & 0xFFFF > 0xFF or not 8 < length <= MAX_STARTUP:
        return None
    database = None
    params = b[8:length].split(b"\0")[:-1]  # NUL-terminated keys and values (the last part: cut or empty)
    for i in range(0, len(params) - 1, 2):
        if params[i] == b"database" and 0 < len(params[i + 1]) <= 63:  # NAMEDATALEN - 1
            database = params[i + 1].decode("utf-8", "replace")
    return RequestFields(STARTUP, (), 0, None, (), False, False, database)


class PostgreSQL(Database[RequestFields]):
    """PostgreSQL frontend/backend protocol v3: simple and extended queries and their answers."""

    name = "postgresql"
    system = "postgresql"
    streams = frozenset(("START_REPLICATION",))

    def __init__(self, query_text: str = "sanitized") -> None:
        super().__init__(query_text)
        self._statements: dict[tuple[bytes, bool, bool], tuple[Statement, ...]] = {}
        self._errors: dict[bytes, str] = {}  # response prefix holding an `E` byte -> its first error
        self._conns: dict[int, _Conn] = {}  # sock_id -> what is remembered of it, oldest first

    # --- requests ------------------------------------------------------------------------------

    def _sql(self, text: bytes, cut: bool, several: bool) -> tuple[Statement, ...]:
        """The statements of a query text (`several`: a simple query's, split at `;`; else one
        Parse's); `cut`: the prefix ended inside it. Statements that start with no keyword are left out."""
        key = (text, cut, several)
        found = self._statements.get(key)
        if found is None:
            if len(self._statements) >= PARSE_CACHE:
                self._statements.clear()
            mode = self.query_text
            if mode == "raw" and _PASSWORD.search(text):
                mode = "sanitized"
            decoded = text.decode("utf-8", "replace")
            parts = split(decoded) if several else [decoded]
            last = len(parts) - 1
            found = ()
            for i, part in enumerate(parts):
                s = statement(part, cut and i == last, mode, "postgresql")
                if s.operation is not None:  # empty statements (`;;`, a comment) run nothing
                    found += (s,)
            self._statements[key] = found
        return found

    def request_fields(self, b: bytes, total: int) -> RequestFields | None:
        """What a request prefix `b` of `total` bytes says; None when it is not PostgreSQL."""
        if not b:
            return None
        if b[0] == 0:
            return _startup(b, total)
        framed = _frames(b, total)
        if framed is None:
            return None
        messages, rest = framed
        first = b[0]
        if first in b"pX":  # authentication, Terminate
            return RequestFields(HOUSEKEEPING, (), 0, None, (), False, False)
        if first in b"dcf":
            return RequestFields(COPY_DATA, (), 0, None, (), False, any(t in b"cf" for t, _, _ in messages))
        if first == 70:  # 'F' FunctionCall: not supported
            return None
        walk = _Walk(self._sql, b)
        for t, s, e in messages:
            if t in b"pXdcfF" or not walk.message(t, s, e):
                return None
        return walk.fields(rest)


    # --- per-connection state ------------------------------------------------------------------

    def _state(self, sock: int) -> _Conn:
        conns = self._conns
        state = conns.get(sock)
        if state is None:
            if len(conns) >= MAX_CONNECTIONS:
                self.state_drops += conns.pop(next(iter(conns))).items()
            state = conns[sock] = _Conn()
        return state

    def _remember(self, sock: int, state: _Conn | None, effects: tuple[tuple[bytes, Ref], ...]) -> None:
        """Apply a request's effects to the connection's memory (its references read before)."""
        memory = state.memory if state is not None else None
        values = [(k, (memory.get(v) if memory else None) if type(v) is bytes else v) for k, v in effects]
        if memory is None:
            if all(v is None for _, v in values):
                return
            memory = self._state(sock).memory
        for key, value in values:
            memory.pop(key, None)
            if value is not None:
                memory[key] = cast(Statement, value)  # last: the most recently used
        while len(memory) > MAX_STATEMENTS:
            del memory[next(iter(memory))]
            self.state_drops += 1

    def _recall(self, memory: dict[bytes, Statement] | None, ref: Ref) -> Statement | None:
        if type(ref) is not bytes:
            return cast(Statement | None, ref)
        if not memory:
            return None
        found = memory.pop(ref, None)
        if found is not None:
            memory[ref] = found  # most recently used
        return found

    def closed(self, sock_id: int) -> None:
        self._conns.pop(sock_id, None)

    # --- exchanges -----------------------------------------------------------------------------

    def detect(self, request: bytes, response: bytes) -> bool:
        if len(request) < 5:
            return False
        if request[0] == 0:
            fields = _startup(request, int.from_bytes(request[:4], "big")) if len(request) >= 8 else None
            if fields is None:
                return False
            if fields.kind == NEGOTIATE:
                return response in (b"", b"N", b"S" if fields.code == SSL_REQUEST else b"G") or \
                    (response[:1] == b"E" and _backend(response))
            return not response or (fields.kind == STARTUP and response[0] in _AUTH_ANSWERS and _backend(response))
        # mid-connection: a first message under 16 MiB, whose length's top byte no text protocol has
        if request[0] not in _FIRST or request[1] != 0 or (len(response) >= 2 and response[1] != 0):
            return False
        if response:
            return self.request_fields(request, len(request) + MAX_MESSAGE) is not None and _backend(response)
        # unanswered: whole messages only (a Terminate, or a query still running)
        return self.request_fields(request, len(request)) is not None

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        fields = self._request(rec)
        if fields is None:
            return None
        r = rec.response
        kind = fields.kind
        sock = rec.sock_id
        if kind == NEGOTIATE:
            return self._negotiated(rec, fields.code)
        if r and (r[0] not in _BACKEND or (len(r) >= 5 and not 4 <= int.from_bytes(r[1:5], "big") <= MAX_MESSAGE)):
            return None
        state = self._conns.get(sock) if self._conns else None
        request = PostgresRequest(True, rec.req_start_ns, rec.req_end_ns, rec.req_bytes)
        response = None
        if rec.resp_start_ns:
            response = PostgresResponse(False, rec.resp_start_ns, rec.resp_end_ns, rec.resp_bytes)
        if kind == STARTUP:
            if fields.database is not None:
                self._state(sock).database = fields.database
            return Parsed(request, response, housekeeping=True)
        if kind == HOUSEKEEPING:
            if fields.stores or (state is not None and state.memory):
                self._remember(sock, state, fields.effects)
            return Parsed(request, response, housekeeping=True)
        if kind == COPY_DATA:
            shape = state.copy if state is not None and state.copy is not None else _COPY
        else:
            if state is not None:
                state.copy = None
            shape = fields.shape
            if shape is None:
                memory = state.memory if state is not None else None
                shape = shape_of(tuple(self._recall(memory, i) for i in fields.items), fields.size)
            if fields.stores or (state is not None and state.memory):
                self._remember(sock, state, fields.effects)
            if shape[0] == "COPY" and 71 in _types(r):  # 'G': its data comes in the next request
                self._state(sock).copy = shape
                return Parsed(request, response, housekeeping=True)
        error = ""
        if r:
            error = self._error(r)
        if response is not None:
            response.shape = error
        if state is not None and state.database is not None:
            shape = (shape[0], shape[1], shape[2], shape[3], state.database)
        request.shape = shape
        streams = shape[0] == "START_REPLICATION" and 87 in _types(r)  # 'W' CopyBothResponse
        return Parsed(request, response, streams)

    def _negotiated(self, rec: ExchangeRecord, code: int) -> Parsed | None:
        request = PostgresRequest(True, rec.req_start_ns, rec.req_end_ns, rec.req_bytes)
        r = rec.response
        response = PostgresResponse(False, rec.resp_start_ns, rec.resp_end_ns, rec.resp_bytes) if rec.resp_start_ns \
            else None
        if r == b"S" and code == SSL_REQUEST:
            return Parsed(request, response, upgrade="tls")
        if r == b"G" and code == GSSENC_REQUEST:
            return Parsed(request, response, upgrade="gssapi")
        if r in (b"", b"N") or (r[:1] == b"E" and _backend(r)):  # declined, or an old server's error
            return Parsed(request, response, housekeeping=True)
        return None

    def _error(self, r: bytes) -> str:
        if 69 not in r:  # no 'E' byte at all: no ErrorResponse
            return ""
        errors = self._errors
        found = errors.get(r)
        if found is None:
            if len(errors) >= PARSE_CACHE:
                errors.clear()
            found = errors[r] = first_error(r)
        return found

    def finished(self, rec: ExchangeRecord) -> bool:
        """Unfinished when a message's declared length is not reached yet, or when the whole
        response is seen without a ReadyForQuery although one is due (rows still coming)."""
        r = rec.response
        if not r or r[0] not in _BACKEND:
            return True
        n = len(r)
        p = 0
        types = []
        while p + 5 <= n:
            types.append(r[p])
            p += 1 + int.from_bytes(r[p + 1:p + 5], "big")
        whole = rec.resp_bytes <= n
        if p > rec.resp_bytes or (whole and p < n):
            return False  # inside a message
        if not whole or 90 in types or types[-1] in (71, 87):  # unknown; 'Z'; 'G', 'W': the client's turn
            return True
        fields = self._request(rec)
        return fields is None or not fields.sync

    # --- description and metrics ---------------------------------------------------------------

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Reads only the shapes: operation, table, query text, batch size and namespace of the
        request, the SQLSTATE of the response. `with_query` (url.query) is HTTP's."""
        operation, collection, text, batch, namespace = cast(RequestShape, request.shape)
        attrs: dict[str, str | int | float | bool] = {"db.system.name": "postgresql"}
        if operation is not None:
            attrs["db.operation.name"] = operation
        if collection is not None:
            attrs["db.collection.name"] = collection
        if namespace is not None:
            attrs["db.namespace"] = namespace
        if text is not None:
            attrs["db.query.text"] = text
        if batch > 1:
            attrs["db.operation.batch.size"] = batch
        if response is None:
            error_type: str | None = "incomplete"
        else:
            error_type = error_attributes(cast(str, response.shape), attrs)
        if operation is None:
            name = "postgresql"
        else:
            name = f"{operation} {collection}" if collection is not None else operation
        return SpanDescription(name, attrs, error_type)
