"""MySQL and MariaDB (client/server protocol 4.1) from exchange records.

Every message is a packet: a 3-byte little-endian payload length, a sequence id, the payload. A
command's first packet has sequence id 0 and starts with the command byte; its answer starts at
sequence id 1. The server speaks first (its greeting), which the kernel drops as bytes received
before any request, so a connection's first exchange is the client's HandshakeResponse (sequence
id 1, or 2 after an SSLRequest) with the server's answer. Recognised from the bytes, never by port:
a HandshakeResponse41 or SSLRequest (CLIENT_PROTOCOL_41 set, 19 zero filler bytes), or, for a
connection older than the sidecar, a known command with sequence id 0 answered by a packet with
sequence id 1 that can start an answer.

Spans: COM_QUERY and COM_STMT_PREPARE read their SQL (protocols/sql.py): `db.operation.name` its
first keyword (`SELECT`), `db.collection.name` its single table, `db.query.text` per
BEYLA_DB_QUERY_TEXT (`sanitized` by default: every literal `?`); a PREPARE's operation is `PREPARE`
(a round trip of its own, kept apart from the statement's executions), with the statement's table
and text. The statement id in the server's COM_STMT_PREPARE_OK is remembered per connection with
what the statement says, so COM_STMT_EXECUTE (and COM_STMT_FETCH `FETCH`, MariaDB's
COM_STMT_BULK_EXECUTE `BATCH <op>`) is described like the statement; `EXECUTE` alone for a statement
prepared before the sidecar started or forgotten. In `raw` mode an execution shows the statement
with its `?` markers: the parameter values travel in binary and are never exported. Other commands
are spans named after them: COM_INIT_DB `USE`, COM_PING `PING`, COM_STATISTICS `STATISTICS`, ...
The span name is `{db.operation.name} {db.collection.name}`, the operation alone without a table,
or `mysql` when the text starts with no keyword.

`db.system.name` is `mysql` for MariaDB servers too: the conventions have `mariadb`, but only the
greeting names the server (`5.5.5-10.11.6-MariaDB`), and the kernel drops it; a value guessed from
each client's capability flags would split one server's operations between two systems.

Housekeeping (no span, no metric, not a failure): the handshake and authentication round trips
(HandshakeResponse, SSLRequest, auth switch and more data: every request whose sequence id is not
0), LOAD DATA LOCAL INFILE's file packets (the query's span ends at the server's file request),
COM_QUIT, COM_STMT_CLOSE and COM_STMT_SEND_LONG_DATA (no answer), COM_STMT_RESET, COM_SET_OPTION,
COM_CHANGE_USER, COM_RESET_CONNECTION and the replication commands (a replica's binlog stream).

Answers: ERR (0xff) gives `db.response.status_code` and `error.type` = the server's error number as
text (`1146`; MariaDB's progress reports, 0xff with number 0xffff, are skipped); OK, a result set
(its column count first) and a PREPARE_OK are successes. No answer before the close: `incomplete`.

`db.namespace` is the connection's default database, known from the HandshakeResponse
(CLIENT_CONNECT_WITH_DB), a successful COM_INIT_DB, `USE db` or COM_CHANGE_USER; unknown on a
connection older than the sidecar (none is guessed). Session-state tracking in OK packets is not read.

Per connection, at most MAX_STATEMENTS prepared statements (the oldest forgotten first) and state for
at most MAX_CONNECTIONS connections (the oldest connection's forgotten); each forgotten statement,
database or compression/TLS mark counts in `state_drops` (beyla_sidecar_protocol_state_dropped_total).

Not supported: the compressed protocol (CLIENT_COMPRESS: its exchanges count as parse failures,
never as spans); several commands sent before the first answer (MariaDB's pipelined
PREPARE + EXECUTE, bulk pipelines: counted as pipelined, no span); COM_QUERY with query attributes
bound (MySQL 8 CLIENT_QUERY_ATTRIBUTES with parameters: a parse failure; without parameters it is
read); the pre-4.1 protocol; a COM_STMT_SEND_LONG_DATA running past the prefix hides the command
after it (a parse failure). TLS (an SSLRequest, then TLS): a client or server using OpenSSL is read
again in plaintext by the TLS probes (its in-flight SSLRequest dropped, the HandshakeResponse then
with sequence id 2); with another TLS library the SSLRequest and all that follows on the connection
is housekeeping (that library is reported by the TLS probes, unsupported_tls_total).

Metric: `db.client.operation.duration` for CLIENT exchanges (protocols/instruments.py), like Redis;
a server in the pod gets SERVER spans and no metric.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from ..bpf.events import End, ExchangeRecord
from .base import Message, Parsed, SpanDescription, SpanKind
from .database import Database, error_attributes
from .sql import Statement, statement

MAX_STATEMENTS = 256  # prepared statements remembered per connection
MAX_CONNECTIONS = 4096  # connections whose state (database, statements) is remembered
MAX_DATABASE = 64  # longest database name remembered (MySQL's identifier limit)

# Capability flags (HandshakeResponse41).
CLIENT_CONNECT_WITH_DB = 0x8
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_SECURE_CONNECTION = 0x8000
CLIENT_PLUGIN_AUTH_LENENC = 0x200000

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_FETCH = 0x1C
COM_RESET_CONNECTION = 0x1F
COM_STMT_BULK_EXECUTE = 0xFA  # MariaDB

# What a command is to us.
SPAN = 0  # an operation: a span
HOUSEKEEPING = 1  # answered, but the protocol's own business
NO_ANSWER = 2  # housekeeping the server does not answer

# Command byte -> (operation, what it is). COM_QUERY, COM_STMT_* take theirs from the statement.
COMMANDS: dict[int, tuple[str, int]] = {
    COM_QUIT: ("QUIT", NO_ANSWER), COM_INIT_DB: ("USE", SPAN), COM_QUERY: ("QUERY", SPAN),
    0x04: ("FIELD_LIST", SPAN), 0x05: ("CREATE_DB", SPAN), 0x06: ("DROP_DB", SPAN), 0x07: ("REFRESH", SPAN),
    0x08: ("SHUTDOWN", SPAN), 0x09: ("STATISTICS", SPAN), 0x0A: ("PROCESS_INFO", SPAN),
    0x0C: ("PROCESS_KILL", SPAN), 0x0D: ("DEBUG", SPAN), 0x0E: ("PING", SPAN),
    COM_CHANGE_USER: ("CHANGE_USER", HOUSEKEEPING), 0x12: ("BINLOG_DUMP", HOUSEKEEPING),
    0x15: ("REGISTER_SLAVE", HOUSEKEEPING), COM_STMT_PREPARE: ("PREPARE", SPAN),
    COM_STMT_EXECUTE: ("EXECUTE", SPAN), COM_STMT_SEND_LONG_DATA: ("SEND_LONG_DATA", NO_ANSWER),
    COM_STMT_CLOSE: ("STMT_CLOSE", NO_ANSWER), 0x1A: ("STMT_RESET", HOUSEKEEPING),
    0x1B: ("SET_OPTION", HOUSEKEEPING), COM_STMT_FETCH: ("FETCH", SPAN), 0x1E: ("BINLOG_DUMP_GTID", HOUSEKEEPING),
    COM_RESET_CONNECTION: ("RESET_CONNECTION", HOUSEKEEPING), COM_STMT_BULK_EXECUTE: ("BATCH", SPAN),
}
_STATEMENT_IDS = frozenset((COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_BULK_EXECUTE))  # described by their statement
_SQL = frozenset((COM_QUERY, COM_STMT_PREPARE))
_SPACE = frozenset(b" \t\r\n")
_MAX_PACKET = 0xFFFFFF  # a payload this long continues in the next packet
_USE = re.compile(r"\s*use\s+(`(?:[^`]|``)+`|[A-Za-z0-9_$]+)\s*;?\s*\Z", re.I)
_FORGET = ""  # the connection's database becomes unknown
_LENENC_SIZES = {0xFC: 2, 0xFD: 3, 0xFE: 8}  # first byte -> bytes of the integer after it


class RequestFields(NamedTuple):
    """What a request prefix whose first packet has sequence id 0 says (cached by its bytes)."""

    command: int  # the byte of the first command expecting an answer (else of the last one)
    kind: int  # SPAN, HOUSEKEEPING, NO_ANSWER; -1: several answered commands (pipelined)
    sql: Statement | None  # COM_QUERY, COM_STMT_PREPARE: what the statement says
    statement_id: int  # COM_STMT_EXECUTE / FETCH / BULK_EXECUTE: the statement; else -1
    closes: tuple[int, ...]  # statements closed by COM_STMT_CLOSE packets before it
    database: str | None  # the default database after a successful answer; _FORGET; None: unchanged


# A request's shape: operation (None: unknown), collection, query text, namespace.
RequestShape = tuple["str | None", "str | None", "str | None", "str | None"]


@dataclass(slots=True)
class MySQLRequest(Message):
    operation: str | None = None  # db.operation.name; None: the text starts with no keyword
    collection: str | None = None  # db.collection.name
    query_text: str | None = None  # per BEYLA_DB_QUERY_TEXT; None: off or none
    namespace: str | None = None  # the connection's default database when known
    shape: Hashable = field(default=None, compare=False)  # (operation, collection, query_text, namespace)


@dataclass(slots=True)
class MySQLResponse(Message):
    error: str = ""  # the ERR packet's error number as text ("1146"); "": no error
    shape: Hashable = field(default=None, compare=False)  # error


# What a connection's packets are after its handshake.
PLAIN = 0
COMPRESSED = 1  # CLIENT_COMPRESS: not read
ENCRYPTED = 2  # TLS after an SSLRequest, not seen in plaintext (the TLS probes would have re-opened it)


class _Connection:
    """What is remembered of one connection."""

    __slots__ = ("database", "statements", "packets")

    def __init__(self) -> None:
        self.database: str | None = None
        self.statements: dict[int, Statement] = {}  # statement id -> its statement, oldest first
        self.packets = PLAIN

    def items(self) -> int:
        return len(self.statements) + (self.database is not None) + (self.packets != PLAIN)


def _u24(b: bytes, p: int) -> int:
    return b[p] | b[p + 1] << 8 | b[p + 2] << 16


def _u32(b: bytes, p: int) -> int:
    return b[p] | b[p + 1] << 8 | b[p + 2] << 16 | b[p + 3] << 24


def _lenenc(b: bytes, p: int) -> tuple[int, int]:
    """The length-encoded integer at `b[p]` and the offset past it; (-1, p) when not one or cut."""
    if p >= len(b):
        return -1, p
    c = b[p]
    if c < 0xFB:
        return c, p + 1
    size = _LENENC_SIZES.get(c)
    if size is None or p + 1 + size > len(b):
        return -1, p
    return int.from_bytes(b[p + 1:p + 1 + size], "little"), p + 1 + size


def _database(raw: bytes) -> str | None:
    """A database name as remembered, None when empty, too long or not text."""
    if not 0 < len(raw) <= MAX_DATABASE * 4:  # up to 4 bytes per character
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if len(name) <= MAX_DATABASE and name.isprintable() else None


def handshake_response(b: bytes) -> tuple[int, str | None] | None:
    """(capability flags, database or None) of a HandshakeResponse41 or SSLRequest packet
    (sequence id 1 or 2) at the start of `b`; None when `b` is not one."""
    if len(b) < 36 or b[3] not in (1, 2):
        return None
    length = _u24(b, 0)
    caps = _u32(b, 4)
    if length < 32 or not caps & CLIENT_PROTOCOL_41 or b[13:32].count(0) != 19:
        return None
    if length == 32:  # an SSLRequest: the capabilities alone
        return (caps, None) if caps & CLIENT_SSL else None
    payload = b[4:4 + length]
    p = payload.find(b"\0", 32)  # the user name's end
    if p < 0 or not caps & CLIENT_CONNECT_WITH_DB:
        return caps, None
    p += 1
    if caps & CLIENT_PLUGIN_AUTH_LENENC:
        n, p = _lenenc(payload, p)
        if n < 0:
            return caps, None
        p += n
    elif caps & CLIENT_SECURE_CONNECTION:
        if p >= len(payload):
            return caps, None
        p += 1 + payload[p]
    else:
        e = payload.find(b"\0", p)
        if e < 0:
            return caps, None
        p = e + 1
    e = payload.find(b"\0", p)
    return caps, (_database(payload[p:e]) if e >= 0 else None)


def _text_start(payload: bytes) -> bool:
    """Can a COM_QUERY or COM_STMT_PREPARE payload (after the command byte) start so?"""
    if payload[:2] == b"\0\1":  # MySQL 8 query attributes: none bound, one set
        return True
    return not payload or payload[0] >= 0x20 or payload[0] in _SPACE


def _use(s: Statement, text: str, cut: bool) -> str | None:
    """The database `USE db` makes the default; None for any other statement."""
    if s.operation != "USE":
        return None
    m = _USE.match(text) if not cut else None
    if m is None:
        return _FORGET
    name = m.group(1)
    if name[0] == "`":
        name = name[1:-1].replace("``", "`")
    return _database(name.encode()) or _FORGET


def _change_user_database(payload: bytes) -> str:
    """The database of a COM_CHANGE_USER payload (after the command byte), _FORGET when unseen.
    Assumes CLIENT_SECURE_CONNECTION (a length byte before the auth data), as every 4.1 client."""
    p = payload.find(b"\0")
    if p < 0 or p + 1 >= len(payload):
        return _FORGET
    p += 2 + payload[p + 1]
    e = payload.find(b"\0", p)
    return (_database(payload[p:e]) or _FORGET) if e >= 0 else _FORGET


def _answered(b: bytes, total: int) -> tuple[int, list[int]] | None:
    """Where the first command expecting an answer starts in `b` (after COM_STMT_CLOSE and
    COM_STMT_SEND_LONG_DATA packets, or the last command when none expects one) and the
    statements closed before it; None when the bytes are not commands."""
    n = len(b)
    p = 0
    closes: list[int] = []
    while True:
        if p + 5 > n or b[p + 3] != 0:
            return None
        length = _u24(b, p)
        command = b[p + 4]
        described = COMMANDS.get(command)
        if length == 0 or described is None:
            return None
        if described[1] != NO_ANSWER:
            return p, closes
        if command == COM_STMT_CLOSE and length == 5 and p + 9 <= n:
            closes.append(_u32(b, p + 5))
        end = p + 4 + length
        if end >= total:
            return p, closes
        p = end


def request_fields(b: bytes, total: int, mode: str) -> RequestFields | None:
    """What the request prefix `b` of a `total`-byte request says, its first packet having
    sequence id 0; None when the bytes are not MySQL commands."""
    found = _answered(b, total)
    if found is None:
        return None
    p, closes = found
    length = _u24(b, p)
    command = b[p + 4]
    kind = COMMANDS[command][1]
    end = p + 4 + length
    if end < total and length != _MAX_PACKET:  # another command follows the answered one
        kind = -1
    cut = end > len(b)
    payload = b[p + 5:end]
    sql = None
    statement_id = -1
    database = None
    if command in _SQL:
        if not _text_start(payload):
            return None  # query attributes bound: their values come before the text
        text = payload[2:] if payload[:2] == b"\0\1" else payload
        decoded = text.decode("utf-8", "replace")
        sql = statement(decoded, cut, mode, "mysql")
        if command == COM_QUERY:
            database = _use(sql, decoded, cut)
    elif command in _STATEMENT_IDS:
        if len(payload) < 4:
            return None
        statement_id = _u32(payload, 0)
    elif command == COM_INIT_DB:
        database = _FORGET if cut else (_database(payload) or _FORGET)
    elif command == COM_CHANGE_USER:
        database = _change_user_database(payload)
    return RequestFields(command, kind, sql, statement_id, tuple(closes), database)


def answer_start(r: bytes) -> bool:
    """Can the response prefix `r` start the answer to a command (sequence id 1)?"""
    if len(r) < 5 or r[3] != 1:
        return False
    length = _u24(r, 0)
    first = r[4]
    if first == 0x00:  # OK, PREPARE_OK
        return length >= 7
    if first == 0xFF:  # ERR
        return length >= 3
    if first == 0xFE:  # EOF
        return length < 9
    return first == 0xFB or length <= 9  # LOCAL INFILE request; a result set's column count


def error_code(r: bytes) -> str | None:
    """The error number of an ERR answer as text, "" for any other answer, None when `r` is no
    answer (MariaDB's progress reports before the answer are skipped)."""
    p = 0
    n = len(r)
    while True:
        if p + 5 > n:
            return None
        if r[p + 4] != 0xFF:
            return ""
        if p + 7 > n:
            return "_OTHER"  # an ERR cut before its number
        code = r[p + 5] | r[p + 6] << 8
        if code != 0xFFFF:
            return str(code)
        p += 4 + _u24(r, p)  # a progress report


class MySQL(Database[RequestFields]):
    """MySQL/MariaDB commands and their answers, prepared statements by id per connection."""

    name = "mysql"
    system = "mysql"

    def __init__(self, query_text: str = "sanitized") -> None:
        super().__init__(query_text)
        self._connections: dict[int, _Connection] = {}  # sock_id -> its state, oldest first

    def detect(self, request: bytes, response: bytes) -> bool:
        if len(request) < 5:
            return False
        seq = request[3]
        if seq:
            found = handshake_response(request)
            if found is None:
                return False
            if _u24(request, 0) == 32 or not response:  # SSLRequest: TLS (or nothing) follows
                return True
            return len(response) >= 5 and response[3] == seq + 1 and response[4] in (0x00, 0x01, 0xFE, 0xFF)
        described = COMMANDS.get(request[4])
        if described is None or described[1] == NO_ANSWER or not answer_start(response):
            return False
        if request[4] in _SQL and not _text_start(request[5:7]):
            return False
        return 0 < len(request) - 4 <= _u24(request, 0)  # one command (its end may be past the prefix)

    def _request(self, rec: ExchangeRecord) -> RequestFields | None:
        b, total = rec.request, rec.req_bytes
        key: bytes | tuple[bytes, int]
        if b[4] in _STATEMENT_IDS:  # parameter values follow the statement id: keyed without them
            if len(b) < 9 or _u24(b, 0) + 4 != total:  # not one packet: rare, not cached
                return request_fields(b, total, self.query_text)
            key = b[:9]  # length, sequence id, command, statement id
        else:
            key = b if len(b) >= total else (b, total)
        return self._remembered(key, b, total)

    def request_fields(self, b: bytes, total: int) -> RequestFields | None:
        return request_fields(b, total, self.query_text)

    def _connection(self, sock: int) -> _Connection:
        """The state of connection `sock`, made when missing (the oldest one forgotten beyond the bound)."""
        conns = self._connections
        c = conns.get(sock)
        if c is None:
            if len(conns) >= MAX_CONNECTIONS:
                oldest = next(iter(conns))
                self.state_drops += conns.pop(oldest).items()
            c = conns[sock] = _Connection()
        return c

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        b = rec.request
        if len(b) < 5:
            return None
        conn = self._connections.get(rec.sock_id)
        if conn is not None and conn.packets:
            # TLS negotiation and ciphertext are housekeeping (unsupported TLS stacks are reported
            # by the TLS probes); compressed packets are not read: counted as failures
            parsed = self._housekeeping(rec) if conn.packets == ENCRYPTED else None
        elif b[3]:
            parsed = self._handshake(rec)
        else:
            parsed = self._command(rec, conn)
        if rec.end is End.CLOSE:
            self._connections.pop(rec.sock_id, None)
        return parsed

    def _handshake(self, rec: ExchangeRecord) -> Parsed | None:
        """A request whose sequence id is not 0: the HandshakeResponse (or SSLRequest), an
        authentication packet, or LOCAL INFILE data. Housekeeping."""
        b, r = rec.request, rec.response
        seq = b[3]
        length = _u24(b, 0)
        if length + 4 > rec.req_bytes:
            return None
        if rec.resp_start_ns and length + 4 == rec.req_bytes and length != 32 and (len(r) < 5 or r[3] != (seq + 1) & 0xFF):
            return None  # one packet, answered by something that does not follow it
        found = handshake_response(b) if seq <= 2 else None
        if found is not None and r[4:5] != b"\xff":  # a new session, unless refused
            self._connections.pop(rec.sock_id, None)
            caps, database = found
            if length == 32:  # an SSLRequest: TLS follows
                self._connection(rec.sock_id).packets = ENCRYPTED
            elif caps & CLIENT_COMPRESS:
                self._connection(rec.sock_id).packets = COMPRESSED
            elif database is not None:
                self._connection(rec.sock_id).database = database
        return self._housekeeping(rec)

    def _housekeeping(self, rec: ExchangeRecord) -> Parsed:
        return Parsed(self._message(rec, None, None, None), None, housekeeping=True)

    def _message(self, rec: ExchangeRecord, sql: Statement | None, namespace: str | None,
                 operation: str | None) -> MySQLRequest:
        collection = text = None
        if sql is not None:
            collection, text = sql.collection, sql.text
        return MySQLRequest(True, rec.req_start_ns, rec.req_end_ns, rec.req_bytes, 0, None,
                            operation, collection, text, namespace, (operation, collection, text, namespace))

    def _command(self, rec: ExchangeRecord, conn: _Connection | None) -> Parsed | None:
        fields = self._request(rec)
        if fields is None:
            return None
        response = None
        if rec.resp_start_ns:
            r = rec.response
            error = error_code(r) if len(r) >= 5 and r[3] == 1 else None
            if error is None:
                return None
            response = MySQLResponse(False, rec.resp_start_ns, rec.resp_end_ns, rec.resp_bytes, 0, None, error, error)
            if not error:
                conn = self._remember(rec, fields, conn)
        if fields.closes and conn is not None:
            for statement_id in fields.closes:
                conn.statements.pop(statement_id, None)
        namespace = conn.database if conn is not None else None
        if fields.database is not None and conn is not None and response is not None and not response.error:
            conn.database = fields.database or None  # after: the request ran in the one before
        command = fields.command
        kind = fields.kind
        if kind != SPAN:
            request = self._message(rec, None, namespace, COMMANDS[command][0])
            return Parsed(request, response, pipelined=kind < 0, housekeeping=kind > 0)
        sql = fields.sql
        if command == COM_QUERY:
            operation = sql.operation if sql is not None else None
        elif command == COM_STMT_PREPARE:
            operation = "PREPARE"
        elif command in _STATEMENT_IDS:
            sql = conn.statements.get(fields.statement_id) if conn is not None else None
            operation = sql.operation if sql is not None else "EXECUTE"
            if command == COM_STMT_FETCH:
                operation = "FETCH"
            elif command == COM_STMT_BULK_EXECUTE:
                operation = f"BATCH {operation}" if sql is not None and operation else "BATCH"
        else:
            operation = COMMANDS[command][0]
        return Parsed(self._message(rec, sql, namespace, operation), response)

    def _remember(self, rec: ExchangeRecord, fields: RequestFields, conn: _Connection | None) -> _Connection | None:
        """The connection's state after a successful answer to `fields` (made when there is
        something to remember): a prepared statement's id, a new database, statements gone."""
        command = fields.command
        if command == COM_STMT_PREPARE:
            r = rec.response
            if len(r) >= 9 and r[4] == 0 and fields.sql is not None:
                conn = conn or self._connection(rec.sock_id)
                statements = conn.statements
                if len(statements) >= MAX_STATEMENTS:
                    del statements[next(iter(statements))]
                    self.state_drops += 1
                statements[_u32(r, 5)] = fields.sql
        elif fields.database:
            conn = conn or self._connection(rec.sock_id)
        if command in (COM_RESET_CONNECTION, COM_CHANGE_USER) and conn is not None:
            conn.statements.clear()  # the server deallocated them
        return conn

    def closed(self, sock_id: int) -> None:
        self._connections.pop(sock_id, None)

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Reads only the shapes: operation, collection, query text and namespace of the
        request, the error number of the response. `with_query` (url.query) is HTTP's."""
        operation, collection, text, namespace = cast(RequestShape, request.shape)
        attrs: dict[str, str | int | float | bool] = {"db.system.name": "mysql"}
        if operation is not None:
            attrs["db.operation.name"] = operation
        if collection is not None:
            attrs["db.collection.name"] = collection
        if namespace is not None:
            attrs["db.namespace"] = namespace
        if text is not None:
            attrs["db.query.text"] = text
        if operation is None:
            name = "mysql"
        elif collection is None:
            name = operation
        else:
            name = f"{operation} {collection}"
        if response is None:
            error_type: str | None = "incomplete"
        else:
            error_type = error_attributes(cast(str, response.shape), attrs)
        return SpanDescription(name, attrs, error_type)
