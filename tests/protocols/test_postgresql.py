"""PostgreSQL (frontend/backend protocol v3) from exchange records: detection, housekeeping, simple
and extended queries, prepared statements remembered per connection (and their bound), batches,
SQLSTATEs, COPY, query text sanitisation, and what the tracker does with it. Messages are built
byte-exact as libpq, psycopg and the server send them."""

from __future__ import annotations

import random
import struct

import pytest

from beyla_sidecar.bpf.events import ConnTuple, End, EventType, ExchangeRecord, Role
from beyla_sidecar.protocols import all_protocols, guess_protocol
from beyla_sidecar.protocols.base import Parsed, SpanDescription, SpanKind
from beyla_sidecar.protocols.instruments import DB_CLIENT_METRICS
from beyla_sidecar.protocols.postgresql import (MAX_CONNECTIONS, MAX_STATEMENTS, PostgreSQL, PostgresRequest,
                                                PostgresResponse, first_error, split)
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..tracker.records import conn_event

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 256  # BEYLA_RESPONSE_CAPTURE_SIZE default
REQ_START, REQ_END, RESP_START, RESP_END = 1_000, 2_000, 3_000, 1_503_000
SOCK = 0xFFFF0002
PG_CONN = ConnTuple("10.0.0.1", 50000, "10.0.0.9", 5432)
SECRET = "s3cr3t-w1dget"


# --- wire format -------------------------------------------------------------------------------

def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack(">I", len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def startup(**params: str) -> bytes:
    body = struct.pack(">I", 196608) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack(">I", len(body) + 4) + body


SSL_REQUEST = struct.pack(">II", 8, 80877103)
GSSENC_REQUEST = struct.pack(">II", 8, 80877104)
CANCEL_REQUEST = struct.pack(">IIII", 16, 80877102, 4242, 99)


def Q(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def P(name: str, sql: str, *oids: int) -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack(">H", len(oids)) + b"".join(struct.pack(">I", o) for o in oids))


def B(portal: str, name: str, *params: bytes) -> bytes:
    values = b"".join(struct.pack(">I", len(v)) + v for v in params)
    return msg(b"B", cstr(portal) + cstr(name) + b"\0\0" + struct.pack(">H", len(params)) + values + b"\0\0")


def D(kind: bytes, name: str = "") -> bytes:
    return msg(b"D", kind + cstr(name))


def E(portal: str = "", rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + struct.pack(">I", rows))


def C(kind: bytes, name: str) -> bytes:
    return msg(b"C", kind + cstr(name))


S, H, X = msg(b"S"), msg(b"H"), msg(b"X")
COPY_DONE = msg(b"c")


def run(sql: str, *params: bytes, statement: str = "") -> bytes:
    """What libpq's PQexecParams sends (the unnamed statement and portal)."""
    return P(statement, sql) + B("", statement, *params) + D(b"P") + E() + S


# backend
Z = msg(b"Z", b"I")
AUTH_OK = msg(b"R", b"\0\0\0\0")
PARSE_OK, BIND_OK, NO_DATA = msg(b"1"), msg(b"2"), msg(b"n")
AUTH_SASL = msg(b"R", struct.pack(">I", 10) + cstr("SCRAM-SHA-256") + b"\0")


def done(tag: str = "SELECT 1") -> bytes:
    return msg(b"C", cstr(tag))


def rows(*values: str) -> bytes:
    desc = msg(b"T", struct.pack(">H", 1) + cstr("qty") + b"\0" * 6 + struct.pack(">IhiH", 23, 4, -1, 0))
    return desc + b"".join(msg(b"D", struct.pack(">HI", 1, len(v)) + v.encode()) for v in values)


def error(code: str, message: str = "relation \"missing\" does not exist", severity: str = "ERROR") -> bytes:
    return msg(b"E", b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(message)
               + b"P" + cstr("15") + b"F" + cstr("parse_relation.c") + b"L" + cstr("1392") + b"\0")


SELECT_OK = rows("7") + done() + Z
STARTED = AUTH_OK + msg(b"S", cstr("server_version") + cstr("15.18")) + msg(b"K", b"\0" * 8) + Z


def record(request: bytes, response: bytes | None = SELECT_OK, *, sock: int = SOCK, role: Role = Role.CLIENT,
           end: End = End.NEXT_REQUEST, req_prefix: int = REQ_PREFIX, resp_prefix: int = RESP_PREFIX,
           ) -> ExchangeRecord:
    """The record the kernel sends for one exchange with these wire bytes (response None: the
    connection closed first): prefixes cut at the capture sizes, exact byte counts."""
    resp = b"" if response is None else response
    return ExchangeRecord(
        sock_id=sock, pid=1000, ns_pid=7, tid=1001, role=role, end=end, flags=0,
        req_start_ns=REQ_START, req_end_ns=REQ_END,
        resp_start_ns=0 if response is None else RESP_START, resp_end_ns=0 if response is None else RESP_END,
        req_bytes=len(request), resp_bytes=len(resp), parent=None, req_head=0, resp_head=0,
        request=request[:req_prefix], response=resp[:resp_prefix], traceparent=b"")


def parse(request: bytes, response: bytes | None = SELECT_OK, pg: PostgreSQL | None = None, **kw: object) -> Parsed:
    parsed = (pg or PostgreSQL()).parse(record(request, response, **kw))  # type: ignore[arg-type]
    assert parsed is not None
    return parsed


def describe(request: bytes, response: bytes | None = SELECT_OK, pg: PostgreSQL | None = None,
             kind: SpanKind = SpanKind.CLIENT, **kw: object) -> SpanDescription:
    pg = pg or PostgreSQL()
    parsed = parse(request, response, pg, **kw)
    assert not parsed.housekeeping
    return pg.describe(parsed.request, parsed.response, kind, False)


def span(desc: SpanDescription) -> tuple[str, dict[str, object], str | None]:
    return desc.name, desc.attributes, desc.error_type


def text(request: bytes, pg: PostgreSQL | None = None) -> object:
    return describe(request, pg=pg).attributes.get("db.query.text")


def test_registered_after_redis() -> None:
    names = [p.name for p in all_protocols()]
    assert names.index("postgresql") == names.index("redis") + 1
    assert [p.query_text for p in all_protocols("raw") if isinstance(p, PostgreSQL)] == ["raw"]
    with pytest.raises(ValueError):
        PostgreSQL("full")


# --- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("request_, response", [
    (SSL_REQUEST, b"N"), (SSL_REQUEST, b"S"), (SSL_REQUEST, b""), (GSSENC_REQUEST, b"N"), (GSSENC_REQUEST, b"G"),
    (startup(user="app", database="shop"), AUTH_SASL),
    (startup(user="app", database="shop", application_name="psql"), STARTED),
    (startup(user="app", database="nope"), error("3D000", "database \"nope\" does not exist", "FATAL")),
    (startup(user="app"), b""),
    (CANCEL_REQUEST, b""),
    # a connection opened before the sidecar started: its first request seen mid-way
    (Q("SELECT 1"), SELECT_OK),
    (run("SELECT $1", b"1"), PARSE_OK + BIND_OK + SELECT_OK),
    (B("", "_pg3_0", b"x") + D(b"P") + E() + S, BIND_OK + SELECT_OK),
    (X, b""),
    (Q("SELECT pg_sleep(10)"), b""),  # still running
])
def test_detect(request_: bytes, response: bytes) -> None:
    assert PostgreSQL().detect(request_, response)


MYSQL_QUERY = struct.pack("<I", 0x1051)[:3] + b"\0\x03SELECT" + b" " * 80  # length byte 0x51 'Q'


@pytest.mark.parametrize("request_, response", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
    (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
    (b"QUIT\r\n", b"+OK\r\n"), (b"PING\r\n", b"+PONG\r\n"), (b"HELO mail\r\n", b"250 ok\r\n"),
    (b"D 1234 5678\r\n", b"DATA\r\n"), (b"get k\r\n", b"END\r\n"),
    (bytes.fromhex("16030100a5010000a10303"), b"\x16\x03\x03"),  # TLS
    (b"\x00\x00\x00\x10\x00\x12\x00\x03\x00\x00\x00\x01\x00\x02id", b"\x00\x00\x00\x08"),  # Kafka
    (MYSQL_QUERY, b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
    (SSL_REQUEST, b"HTTP/1.1 400"), (SSL_REQUEST, b"G"), (GSSENC_REQUEST, b"S"),
    (startup(user="app"), b"HTTP/1.1 400 Bad Request\r\n"),
    (struct.pack(">II", 8, 196608), b"R"),  # a startup packet holds parameters
    (struct.pack(">II", 30, 131072) + b"x" * 22, b"R"),  # protocol 2
    (Q("SELECT 1")[:-1] + b"x", SELECT_OK),  # no NUL where the length says the text ends
    (msg(b"Q", b"SELECT\0 1\0"), SELECT_OK),  # a NUL inside
    (Q("SELECT 1"), b"HTTP/1.1 200 OK\r\n"),
    (Q("SELECT 1") + b"\x01\x02", b""),  # unanswered: whole messages only
    (msg(b"p", b"SCRAM"), msg(b"R", b"\0\0\0\x0b")),  # authentication seen mid-way: not enough
])
def test_not_detected(request_: bytes, response: bytes) -> None:
    assert not PostgreSQL().detect(request_, response)


def test_guess_agrees() -> None:
    assert guess_protocol(SSL_REQUEST, b"N") == guess_protocol(Q("SELECT 1"), SELECT_OK) == "postgresql"


# --- housekeeping ------------------------------------------------------------------------------

def tracker() -> tuple[Tracker, list[Exchange]]:
    out: list[Exchange] = []
    return Tracker(all_protocols(), out.append), out


def test_connection_handshake_is_housekeeping_and_names_the_database() -> None:
    """What psql sends over TCP: SSLRequest (declined), StartupMessage, SCRAM (two `p` messages),
    a query, Terminate: one span, no failure, the database as db.namespace."""
    t, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, PG_CONN))
    t.exchange(record(SSL_REQUEST, b"N", sock=1))
    t.exchange(record(startup(user="app", database="shop", application_name="psql"), AUTH_SASL, sock=1))
    t.exchange(record(msg(b"p", cstr("SCRAM-SHA-256") + b"\0\0\0\x20" + b"n,,n=,r=" + b"x" * 24),
                      msg(b"R", struct.pack(">I", 11) + b"r=abc,s=salt,i=4096"), sock=1))
    t.exchange(record(msg(b"p", b"c=biws,r=abc,p=proof"), msg(b"R", struct.pack(">I", 12) + b"v=sig") + STARTED,
                      sock=1))
    t.exchange(record(Q("SELECT qty FROM orders"), SELECT_OK, sock=1))
    t.exchange(record(X, None, sock=1, end=End.CLOSE))
    assert [(e.protocol.name, e.request.shape) for e in out] == [
        ("postgresql", ("SELECT", "orders", "SELECT qty FROM orders", 0, "shop"))]
    assert t.stats.housekeeping == 5 and not t.stats.parse_failures and not t.stats.unrecognised_connections


def test_user_is_never_kept_and_no_database_means_unknown() -> None:
    pg = PostgreSQL()
    assert parse(startup(user="alice"), STARTED, pg).housekeeping
    assert describe(Q("SELECT 1"), pg=pg).attributes == {
        "db.system.name": "postgresql", "db.operation.name": "SELECT", "db.query.text": "SELECT ?"}
    # a replication connection's `replication database` pair: `database` is a value there, not a key
    pg = PostgreSQL()
    parse(startup(user="rep", replication="database"), STARTED, pg)
    assert "db.namespace" not in describe(Q("IDENTIFY_SYSTEM"), pg=pg).attributes


@pytest.mark.parametrize("request_, response", [
    (SSL_REQUEST, b"N"), (GSSENC_REQUEST, b"N"), (SSL_REQUEST, None),
    (startup(user="app", database="shop"), STARTED),
    (startup(user="app", database="nope"), error("3D000", severity="FATAL")),  # refused: still housekeeping
    (msg(b"p", cstr("wrong")), error("28P01", "password authentication failed", "FATAL")),
    (CANCEL_REQUEST, None), (X, None),
    (D(b"S", "s1") + S, msg(b"t", b"\0\0") + NO_DATA + Z),  # describe a statement
    (C(b"S", "s1") + S, msg(b"3") + Z),  # close a statement
    (S, Z), (H, b""),
])
def test_housekeeping(request_: bytes, response: bytes | None) -> None:
    p = parse(request_, response)
    assert p.housekeeping and p.upgrade is None


def test_tls_accepted_switches_the_connection() -> None:
    assert parse(SSL_REQUEST, b"S").upgrade == "tls"
    assert parse(GSSENC_REQUEST, b"G").upgrade == "gssapi"
    t, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, PG_CONN))
    t.exchange(record(SSL_REQUEST, b"S", sock=1))
    t.exchange(record(bytes.fromhex("16030100a5010000a10303"), b"\x16\x03\x03\x00\x5a", sock=1))  # ciphertext
    assert not out and not t.stats.parse_failures
    assert t.stats.unrecognised_connections == {("tls", 5432): 1}
    # the TLS library's plaintext of the same socket: a new connection, recognised from its startup
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, PG_CONN, tls=True))
    t.exchange(record(startup(user="app", database="shop"), STARTED, sock=1))
    t.exchange(record(Q("SELECT 1"), sock=1))
    assert [e.request.shape for e in out] == [("SELECT", None, "SELECT ?", 0, "shop")]


# --- simple query ------------------------------------------------------------------------------

def test_simple_query() -> None:
    wire = Q(f"SELECT qty FROM orders WHERE item = '{SECRET}' AND qty > 3")
    p = parse(wire)
    req, resp = p.request, p.response
    assert isinstance(req, PostgresRequest) and isinstance(resp, PostgresResponse)
    assert (req.start_ns, req.end_ns, req.size, resp.start_ns, resp.end_ns, resp.size) == \
        (REQ_START, REQ_END, len(wire), RESP_START, RESP_END, len(SELECT_OK))
    assert span(describe(wire)) == ("SELECT orders", {
        "db.system.name": "postgresql", "db.operation.name": "SELECT", "db.collection.name": "orders",
        "db.query.text": "SELECT qty FROM orders WHERE item = ? AND qty > ?"}, None)


def test_statements_of_one_query_are_a_batch() -> None:
    wire = Q(f"BEGIN; UPDATE orders SET qty = 1 WHERE item = '{SECRET}'; COMMIT;")
    ok = done("BEGIN") + done("UPDATE 1") + done("COMMIT") + Z
    assert span(describe(wire, ok)) == ("BATCH orders", {
        "db.system.name": "postgresql", "db.operation.name": "BATCH", "db.collection.name": "orders",
        "db.query.text": "BEGIN; UPDATE orders SET qty = ? WHERE item = ?; COMMIT", "db.operation.batch.size": 3}, None)
    same = describe(Q("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)"))
    assert (same.name, same.attributes["db.query.text"], same.attributes["db.operation.batch.size"]) == \
        ("BATCH INSERT t", "INSERT INTO t VALUES (?)", 2)
    tables = describe(Q("DELETE FROM a; DELETE FROM b"))
    assert (tables.name, "db.collection.name" in tables.attributes) == ("BATCH DELETE", False)
    assert describe(Q("SELECT 1;")).name == "SELECT"  # an empty statement after the `;` runs nothing
    assert describe(Q("SELECT 1; -- done")).name == "SELECT"


def test_query_without_statement() -> None:
    """pgx's Ping sends `-- ping`; an empty query is answered EmptyQueryResponse."""
    assert span(describe(Q("-- ping"), msg(b"I") + Z)) == ("postgresql", {"db.system.name": "postgresql"}, None)
    assert describe(Q(""), msg(b"I") + Z).name == "postgresql"


@pytest.mark.parametrize("sql, parts", [
    ("SELECT 1; SELECT 2", ["SELECT 1", " SELECT 2"]),
    ("SELECT ';'; SELECT 'it''s;'", ["SELECT ';'", " SELECT 'it''s;'"]),
    ("SELECT E'\\';'; SELECT 2", ["SELECT E'\\';'", " SELECT 2"]),
    ('SELECT "a;b" FROM t', ['SELECT "a;b" FROM t']),
    ("DO $$ BEGIN PERFORM 1; END $$; SELECT 2", ["DO $$ BEGIN PERFORM 1; END $$", " SELECT 2"]),
    ("DO $f$ x; $$ y; $f$", ["DO $f$ x; $$ y; $f$"]),
    ("SELECT a$b$ FROM t; SELECT 2", ["SELECT a$b$ FROM t", " SELECT 2"]),  # `$` inside a word
    ("SELECT $1; SELECT $2", ["SELECT $1", " SELECT $2"]),
    ("SELECT 1 -- a; b\n; SELECT /* ; */ 2", ["SELECT 1 -- a; b\n", " SELECT /* ; */ 2"]),
    ("SELECT 'unterminated; still", ["SELECT 'unterminated; still"]),
])
def test_split(sql: str, parts: list[str]) -> None:
    assert split(sql) == parts


# --- extended protocol -------------------------------------------------------------------------

def test_extended_query_in_one_request() -> None:
    wire = run("INSERT INTO orders (item, qty) VALUES ($1, $2)", SECRET.encode(), b"7")
    assert span(describe(wire, PARSE_OK + BIND_OK + NO_DATA + done("INSERT 0 1") + Z)) == ("INSERT orders", {
        "db.system.name": "postgresql", "db.operation.name": "INSERT", "db.collection.name": "orders",
        "db.query.text": "INSERT INTO orders (item, qty) VALUES ($1, $2)"}, None)


def test_prepared_statement_remembered_by_name() -> None:
    """psycopg with prepare=True: Parse of `_pg3_0` + Sync, then Bind of that name each time."""
    pg = PostgreSQL()
    sql = "SELECT qty FROM orders WHERE item = $1"
    assert span(describe(P("_pg3_0", sql) + S, PARSE_OK + Z, pg)) == ("PREPARE orders", {
        "db.system.name": "postgresql", "db.operation.name": "PREPARE", "db.collection.name": "orders",
        "db.query.text": sql}, None)
    execute = B("", "_pg3_0", SECRET.encode()) + D(b"P") + E() + S
    for _ in range(3):
        assert describe(execute, BIND_OK + SELECT_OK, pg).attributes["db.query.text"] == sql
    assert span(describe(execute, BIND_OK + SELECT_OK, pg, sock=SOCK + 1)) == (  # another connection
        "EXECUTE", {"db.system.name": "postgresql", "db.operation.name": "EXECUTE"}, None)
    assert parse(C(b"S", "_pg3_0") + S, msg(b"3") + Z, pg).housekeeping
    assert describe(execute, BIND_OK + SELECT_OK, pg).name == "EXECUTE"  # closed: forgotten


def test_prepare_with_describe_then_execute() -> None:
    """pgx: Parse + Describe statement + Sync, later Bind/Describe portal/Execute/Sync."""
    pg = PostgreSQL()
    describe(P("stmtcache_1", "DELETE FROM carts WHERE id = $1") + D(b"S", "stmtcache_1") + S,
             PARSE_OK + msg(b"t", b"\0\x01\0\0\0\x17") + NO_DATA + Z, pg)
    assert describe(B("", "stmtcache_1", b"4") + D(b"P") + E() + S, BIND_OK + NO_DATA + done("DELETE 1") + Z,
                    pg).name == "DELETE carts"


def test_unnamed_statement_lives_until_a_simple_query() -> None:
    pg = PostgreSQL()
    parse(P("", "SELECT * FROM orders") + S, PARSE_OK + Z, pg)
    assert describe(B("", "") + E() + S, BIND_OK + SELECT_OK, pg).name == "SELECT orders"
    parse(Q("SET search_path = shop"), done("SET") + Z, pg)  # destroys the unnamed statement
    assert describe(B("", "") + E() + S, BIND_OK + SELECT_OK, pg).name == "EXECUTE"


def test_named_portal_fetched_in_later_requests() -> None:
    """JDBC with a fetch size: Execute of portal C_1 with a row limit, PortalSuspended, more Executes."""
    pg = PostgreSQL()
    first = P("S_1", "SELECT * FROM events") + B("C_1", "S_1") + D(b"P", "C_1") + E("C_1", 50) + S
    assert describe(first, PARSE_OK + BIND_OK + rows("1") + msg(b"s") + Z, pg).name == "SELECT events"
    assert describe(E("C_1", 50) + S, rows("2") + msg(b"s") + Z, pg).name == "SELECT events"
    parse(C(b"P", "C_1") + S, msg(b"3") + Z, pg)
    assert describe(E("C_1", 50) + S, error("34000") + Z, pg).name == "EXECUTE"


def test_pipeline_is_a_batch() -> None:
    """psycopg's executemany: one Parse, then Bind/Describe/Execute per row, one Sync."""
    sql = "UPDATE orders SET qty = $1 WHERE qty = $2"
    wire = P("", sql) + b"".join(B("", "", b"%d" % n, b"%d" % (n - 1)) + D(b"P") + E() for n in (8, 9, 10)) + S
    reply = PARSE_OK + (BIND_OK + NO_DATA + done("UPDATE 1")) * 3 + Z
    assert span(describe(wire, reply)) == ("BATCH UPDATE orders", {
        "db.system.name": "postgresql", "db.operation.name": "BATCH UPDATE", "db.collection.name": "orders",
        "db.query.text": sql, "db.operation.batch.size": 3}, None)
    mixed = run("INSERT INTO a VALUES ($1)", b"1")[:-len(S)] + run("DELETE FROM b", statement="")
    assert span(describe(mixed)) == ("BATCH", {
        "db.system.name": "postgresql", "db.operation.name": "BATCH",
        "db.query.text": "INSERT INTO a VALUES ($1); DELETE FROM b", "db.operation.batch.size": 2}, None)


def test_pipeline_beyond_the_prefix_has_no_size() -> None:
    sql = "INSERT INTO events (kind, at) VALUES ($1, $2)"
    wire = P("", sql) + b"".join(B("", "", b"click", b"2024-01-01") + E() for _ in range(20)) + S
    assert describe(wire).attributes == {
        "db.system.name": "postgresql", "db.operation.name": "BATCH", "db.query.text": sql + "; ..."}
    # a second Bind cut by the prefix, and room for its Execute only: a batch of 2
    wire = P("", sql) + B("", "", b"x" * 150, b"y") + E() + B("", "", b"z" * 100, b"y") + E() + S
    assert describe(wire).attributes["db.operation.batch.size"] == 2
    # ... and room for more: a batch of unknown size
    wire = P("", sql) + B("", "", b"x" * 150, b"y") + E() + B("", "", b"z" * 100, b"y") + E() + \
        B("", "", b"z", b"y") + E() + S
    assert describe(wire).attributes == {
        "db.system.name": "postgresql", "db.operation.name": "BATCH", "db.query.text": sql + "; ..."}


def test_request_cut_before_its_execute() -> None:
    """A large parameter (or query) fills the prefix: what the rest of the request can hold decides."""
    big = b"v" * 1000
    assert describe(run("INSERT INTO docs (body) VALUES ($1)", big)).name == "INSERT docs"  # cut in the Bind
    long_sql = "SELECT " + ", ".join(f"c{i}" for i in range(80)) + " FROM wide WHERE id = $1"
    assert describe(run(long_sql, b"1")).attributes["db.operation.name"] == "SELECT"  # cut in the Parse
    # a Parse cut and only a Sync after it: prepared, not executed
    assert describe(P("s1", long_sql) + S, PARSE_OK + Z).attributes["db.operation.name"] == "PREPARE"
    # an Execute ending right where the request does: one
    assert describe(B("", "s", big) + E() + S).attributes["db.operation.name"] == "EXECUTE"


def test_server_side_describes_alike() -> None:
    for wire, reply in ((Q("SELECT * FROM missing"), error("42P01") + Z),
                        (run("SELECT qty FROM orders WHERE item = $1", b"x"), PARSE_OK + BIND_OK + SELECT_OK)):
        assert describe(wire, reply, kind=SpanKind.SERVER, role=Role.SERVER) == describe(wire, reply)


# --- responses ---------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, code", [
    (error("42P01") + Z, "42P01"),
    (PARSE_OK + BIND_OK + error("22P02", "invalid input syntax for type integer") + Z, "22P02"),
    (rows("1", "2") + error("22012", "division by zero") + Z, "22012"),  # after some rows
    (msg(b"N", b"SNOTICE\0C00000\0Mskipping\0\0") + error("23505") + Z, "23505"),  # a notice first
    (error("40001", severity="FATAL"), "40001"),
    (msg(b"E", b"SERROR\0MNo code\0\0") + Z, "_OTHER"),
    (error("42P01")[:12], "_OTHER"),  # the prefix cut it before its code
    (rows("1") + b"E\0\0", "_OTHER"),  # ... or inside its header
])
def test_sqlstate(reply: bytes, code: str) -> None:
    name, attrs, err = span(describe(Q("SELECT 1/0"), reply))
    assert err == code and attrs.get("db.response.status_code") == (None if code == "_OTHER" else code)
    assert first_error(reply) == code


@pytest.mark.parametrize("reply", [
    SELECT_OK, msg(b"N", b"SWARNING\0C01000\0Mcareful\0\0") + done() + Z, rows("EEEE") + done() + Z,
    msg(b"A", b"\0\0\0\x01ch\0payload\0") + Z, b"T",
])
def test_no_error(reply: bytes) -> None:
    assert describe(Q("SELECT 1"), reply).error_type is None


def test_error_beyond_the_response_prefix_is_not_seen() -> None:
    reply = rows(*["x" * 40] * 10) + error("22012") + Z
    assert describe(Q("SELECT 1/x FROM t"), reply).error_type is None  # the conventions' best effort


def test_no_answer_is_incomplete() -> None:
    desc = describe(Q("SELECT pg_sleep(60)"), None)
    assert desc.error_type == "incomplete" and "db.response.status_code" not in desc.attributes


def test_finished_waits_for_ready_for_query() -> None:
    pg = PostgreSQL()
    query = Q("SELECT pg_sleep(1) FROM generate_series(1, 3)")
    assert not pg.finished(record(query, rows("1")))  # rows still coming
    assert pg.finished(record(query, rows("1") + done() + Z))
    assert not pg.finished(record(query, rows("x" * 50)[:30]))  # inside a message
    assert not pg.finished(record(query, rows("x" * 1000)[:500]))  # a message beyond the prefix, not all in
    assert pg.finished(record(query, rows(*["x" * 50] * 8)))  # beyond the prefix, at a boundary: unknown
    assert pg.finished(record(Q("COPY t FROM STDIN"), msg(b"G", b"\0\0\0")))  # waits for the client
    assert pg.finished(record(P("", "SELECT 1") + B("", "") + E() + H, PARSE_OK + BIND_OK))  # Flush: no Z due
    assert pg.finished(record(startup(user="a", database="b"), AUTH_SASL))
    assert pg.finished(record(b"garbage", b"\x00junk"))


# --- query text --------------------------------------------------------------------------------

LITERALS = [
    f"SELECT * FROM orders WHERE item = '{SECRET}'",
    f"SELECT * FROM orders WHERE item = E'{SECRET}\\'s'",
    f"SELECT * FROM orders WHERE item = $tag${SECRET}$tag$",
    f"SELECT * FROM orders WHERE item = $${SECRET}$$ -- {SECRET}",
    f"/* {SECRET} */ UPDATE orders SET qty = 31337 WHERE item = U&'{SECRET}'",
    f"INSERT INTO orders VALUES ('{SECRET}', 31337), ('x', 2.5e3)",
    f"SELECT B'1011', X'{SECRET.encode().hex()}', 31337::int",
    f"SELECT '{SECRET}' || 'it''s'",
]


@pytest.mark.parametrize("sql", LITERALS)
def test_no_literal_in_sanitized_text(sql: str) -> None:
    pg = PostgreSQL()
    for wire in (Q(sql), Q(sql + "; " + sql), run(sql)):
        attrs = str(describe(wire, pg=pg).attributes)
        assert SECRET not in attrs and "31337" not in attrs and SECRET.encode().hex() not in attrs, attrs


def test_no_literal_in_a_query_cut_by_the_prefix() -> None:
    sql = "SELECT * FROM orders WHERE note = '" + "lorem ipsum " * 30 + SECRET + "'"
    t = str(text(Q(sql)))
    assert t == "SELECT * FROM orders WHERE note = ? ..." and "lorem" not in t


def test_query_text_modes() -> None:
    sql = f"SELECT qty FROM orders WHERE item = '{SECRET}'   -- why"
    assert text(Q(sql)) == "SELECT qty FROM orders WHERE item = ?"
    assert text(Q(sql), PostgreSQL("raw")) == f"SELECT qty FROM orders WHERE item = '{SECRET}'"
    assert "db.query.text" not in describe(Q(sql), pg=PostgreSQL("off")).attributes
    assert describe(Q(sql), pg=PostgreSQL("off")).name == "SELECT orders"


@pytest.mark.parametrize("sql", [
    f"ALTER ROLE app PASSWORD '{SECRET}'", f"CREATE USER bob WITH ENCRYPTED password '{SECRET}'",
    f"SELECT dblink_connect('host=db password={SECRET}')",
])
def test_passwords_never_in_raw_text(sql: str) -> None:
    assert SECRET not in str(text(Q(sql), PostgreSQL("raw")))


def test_repeated_queries_share_a_shape() -> None:
    pg = PostgreSQL()
    a = parse(Q("SELECT * FROM orders WHERE id = 1"), SELECT_OK, pg)
    b = parse(Q("SELECT * FROM orders WHERE id = 2"), rows("8") + done() + Z, pg)
    assert a.request.shape == b.request.shape
    assert a.response is not None and b.response is not None and a.response.shape == b.response.shape == ""
    c = parse(run("SELECT * FROM orders WHERE id = $1", b"1"), SELECT_OK, pg)
    d = parse(run("SELECT * FROM orders WHERE id = $1", b"2"), SELECT_OK, pg)
    assert c.request.shape == d.request.shape


def test_describe_reads_only_the_shapes() -> None:
    pg = PostgreSQL()
    req = PostgresRequest(True, 0, 0, shape=("SELECT", "orders", "SELECT ?", 0, "shop"))
    resp = PostgresResponse(False, 0, 0, shape="42501")
    assert span(pg.describe(req, resp, SpanKind.CLIENT, False)) == ("SELECT orders", {
        "db.system.name": "postgresql", "db.operation.name": "SELECT", "db.collection.name": "orders",
        "db.namespace": "shop", "db.query.text": "SELECT ?", "db.response.status_code": "42501"}, "42501")


# --- COPY, replication, unsupported ------------------------------------------------------------

def test_copy_from_stdin_span_is_its_data_exchange() -> None:
    pg = PostgreSQL()
    parse(startup(user="app", database="shop"), STARTED, pg)
    assert parse(Q("COPY orders (item, qty) FROM STDIN"), msg(b"G", b"\0\0\x02\0\0\0\0"), pg).housekeeping
    data = msg(b"d", b"a\t1\n") + msg(b"d", b"b\t2\n") + COPY_DONE
    assert span(describe(data, done("COPY 2") + Z, pg)) == ("COPY orders", {
        "db.system.name": "postgresql", "db.operation.name": "COPY", "db.collection.name": "orders",
        "db.namespace": "shop", "db.query.text": "COPY orders (item, qty) FROM STDIN"}, None)
    describe(Q("SELECT 1"), pg=pg)  # the COPY is over
    assert span(describe(msg(b"d", b"x\n") + msg(b"f", cstr("aborted")), error("57014") + Z, pg))[:1] == ("COPY",)
    # extended protocol: CopyInResponse after ParseComplete and BindComplete
    assert parse(run("COPY orders FROM STDIN"), PARSE_OK + BIND_OK + NO_DATA + msg(b"G", b"\0\0\0"), pg).housekeeping


def test_copy_to_stdout_is_one_exchange() -> None:
    reply = msg(b"H", b"\0\0\x02\0\0\0\0") + msg(b"d", b"a\t1\n") + msg(b"c") + done("COPY 1") + Z
    assert describe(Q("COPY orders TO STDOUT"), reply).name == "COPY orders"


def test_replication_stream_ends_the_protocol_without_metric() -> None:
    pg = PostgreSQL()
    p = parse(Q("START_REPLICATION SLOT s LOGICAL 0/0"), msg(b"W", b"\0\0\0"), pg)
    assert p.ends_protocol
    desc = pg.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert desc.name == "START_REPLICATION"
    assert pg.metric_attributes(SpanKind.CLIENT, PG_CONN, desc, None, frozenset()) is None
    assert not parse(Q("START_REPLICATION SLOT s LOGICAL 0/0"), error("42704") + Z, pg).ends_protocol


def test_function_call_is_not_supported() -> None:
    assert PostgreSQL().parse(record(msg(b"F", b"\0\0\x0b\xe9\0\0\0\0\0\0"), msg(b"V", b"\xff\xff\xff\xff") + Z)) is None


# --- bounded state -----------------------------------------------------------------------------

def test_statements_per_connection_are_bounded() -> None:
    pg = PostgreSQL()
    hot = "SELECT * FROM hot WHERE id = $1"
    parse(P("hot", hot) + S, PARSE_OK + Z, pg)
    for i in range(MAX_STATEMENTS + 10):
        parse(P(f"s{i}", f"SELECT {i} FROM t{i}") + S, PARSE_OK + Z, pg)
        if i % 100 == 0:  # used now and then: recently used, kept
            assert describe(B("", "hot", b"1") + E() + S, BIND_OK + SELECT_OK, pg).name == "SELECT hot"
    assert pg.state_drops == 12  # MAX_STATEMENTS + 10 statements, `hot` and the unnamed portal: 12 too many
    assert describe(B("", "hot", b"1") + E() + S, BIND_OK + SELECT_OK, pg).name == "SELECT hot"
    assert describe(B("", "s0") + E() + S, BIND_OK + SELECT_OK, pg).name == "EXECUTE"  # the oldest, forgotten
    assert describe(B("", f"s{MAX_STATEMENTS + 9}") + E() + S, BIND_OK + SELECT_OK, pg).name == \
        f"SELECT t{MAX_STATEMENTS + 9}"


def test_connections_are_bounded_and_forgotten_when_closed() -> None:
    pg = PostgreSQL()
    parse(startup(user="a", database="shop"), STARTED, pg, sock=1)
    parse(P("s", "SELECT * FROM t") + S, PARSE_OK + Z, pg, sock=1)
    for sock in range(2, MAX_CONNECTIONS + 2):
        parse(P("s", "SELECT * FROM t") + S, PARSE_OK + Z, pg, sock=sock)
    assert pg.state_drops == 2  # connection 1's database and statement
    assert describe(B("", "s") + E() + S, BIND_OK + SELECT_OK, pg, sock=1).name == "EXECUTE"
    assert describe(B("", "s") + E() + S, BIND_OK + SELECT_OK, pg, sock=2).name == "SELECT t"
    pg.closed(2)
    assert describe(B("", "s") + E() + S, BIND_OK + SELECT_OK, pg, sock=2).name == "EXECUTE"
    assert pg.state_drops == 2  # closing is no drop


def test_simple_queries_keep_no_state() -> None:
    pg = PostgreSQL()
    for sock in range(MAX_CONNECTIONS + 5):
        parse(Q("SELECT 1"), SELECT_OK, pg, sock=sock)
    assert pg.state_drops == 0


def test_tracker_tells_the_protocol_about_closed_connections() -> None:
    t, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, PG_CONN))
    t.exchange(record(startup(user="a", database="shop"), STARTED, sock=1))
    t.exchange(record(P("s", "SELECT * FROM t") + S, PARSE_OK + Z, sock=1))
    t.exchange(record(B("", "s") + E() + S, BIND_OK + SELECT_OK, sock=1))
    t.handle(conn_event(EventType.CONN_CLOSE, 1))
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, PG_CONN))  # the id, reused
    t.exchange(record(B("", "s") + E() + S, BIND_OK + SELECT_OK, sock=1))
    assert [e.request.shape for e in out] == [
        ("PREPARE", "t", "SELECT * FROM t", 0, "shop"), ("SELECT", "t", "SELECT * FROM t", 0, "shop"),
        ("EXECUTE", None, None, 0, None)]


# --- bad bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("junk", [
    b"", b"\x00\x01binary", b"Q\x00\x00\x00\x02", b"Q\xff\xff\xff\xff" + b"x" * 20,
    Q("SELECT 1") + b"\x07\x00\x00\x00\x04",  # a second message of no frontend type
    msg(b"Q", b"SELECT 1"),  # no NUL
    msg(b"P", b"name-without-nul"), msg(b"E", b"portal"), msg(b"B", b"p\0s"),
    struct.pack(">II", 20, 196608) + b"x",  # startup length and request disagree
    struct.pack(">II", 12, 80877103) + b"1234",  # an SSLRequest is 8 bytes
])
def test_request_that_is_not_postgresql(junk: bytes) -> None:
    assert PostgreSQL().parse(record(junk, SELECT_OK)) is None


@pytest.mark.parametrize("reply", [b"HTTP/1.1 200 OK\r\n\r\n", b"Z\x00\x00\x00\x02I", b"+OK\r\n"])
def test_reply_that_is_not_postgresql(reply: bytes) -> None:
    assert PostgreSQL().parse(record(Q("SELECT 1"), reply)) is None
    assert PostgreSQL().parse(record(SSL_REQUEST, b"NO")) is None


def test_garbage_is_a_counted_parse_failure() -> None:
    t, out = tracker()
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, PG_CONN))
    t.exchange(record(Q("SELECT 1"), sock=1))
    t.exchange(record(b"\x16\x03\x01garbage", SELECT_OK, sock=1))
    t.exchange(record(Q("SELECT 2"), b"\x00\x00garbage", sock=1))
    t.exchange(record(Q("SELECT 3"), sock=1))
    assert [e.request.shape[0] for e in out] == ["SELECT", "SELECT"]  # type: ignore[index]
    assert t.stats.parse_failures == {"postgresql": 2}


CORPUS = [
    startup(user="app", database="shop", application_name="psql", client_encoding="UTF8"),
    Q(f"SELECT qty FROM orders WHERE item = '{SECRET}'; UPDATE orders SET qty = 1"),
    run("INSERT INTO orders (item, qty) VALUES ($1, $2)", SECRET.encode(), b"7"),
    P("_pg3_0", "SELECT qty FROM orders WHERE item = $1") + S,
    B("", "_pg3_0", SECRET.encode()) + D(b"P") + E() + S,
    P("", "UPDATE t SET a = $1") + (B("", "", b"1") + D(b"P") + E()) * 4 + S,
    C(b"S", "S_1") + C(b"P", "C_1") + P("S_2", "DELETE FROM t WHERE a = $1") + B("C_2", "S_2", b"1") + E("C_2") + S,
    msg(b"d", b"a\t1\n") * 3 + COPY_DONE,
]
REPLIES = [
    STARTED, PARSE_OK + BIND_OK + SELECT_OK, error("42P01") + Z, rows("a", "b") + error("22012") + Z,
    msg(b"G", b"\0\0\x02\0\0\0\0"),
]


def test_every_truncation_of_real_messages_parses_or_fails_cleanly() -> None:
    for mode in ("sanitized", "raw"):
        pg = PostgreSQL(mode)
        for wire in CORPUS:
            whole = pg.parse(record(wire, SELECT_OK))
            assert whole is not None
            for cut in range(len(wire) + 1):
                rec = record(wire, SELECT_OK, req_prefix=cut)
                parsed = pg.parse(rec)
                pg.finished(rec)
                pg.detect(rec.request, rec.response)
                if cut >= 64 or cut == len(wire):  # the smallest capture size
                    assert parsed is not None and parsed.housekeeping == whole.housekeeping, (wire, cut)
                    if not parsed.housekeeping:  # an operation, maybe of the statements seen only
                        assert parsed.request.shape[0] is not None, (wire, cut)  # type: ignore[index]
                if parsed is not None and not parsed.housekeeping:
                    pg.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
        for reply in REPLIES:
            for cut in range(1, len(reply) + 1):
                rec = record(Q("SELECT 1"), reply, resp_prefix=cut)
                assert pg.parse(rec) is not None, (reply, cut)
                pg.finished(rec)


def test_fuzz_random_prefixes_never_raise() -> None:
    rng = random.Random(13)
    alphabet = b"QPBEDCSHXpdcf\x00\x00\x00\x00\x04\x05\x08\x0c\x10\xff;'$\"-*/ SELECTFROMt1"
    backend = b"RK23CdcGHWDIEVvnNAtS1sZT\x00\x00\x00\x04\x05\x08SC42P01\x00"
    for pg in (PostgreSQL(), PostgreSQL("raw")):
        for _ in range(4000):
            req = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
            resp = bytes(rng.choice(backend) for _ in range(rng.randrange(0, 60)))
            if rng.random() < 0.5:
                req = rng.choice(CORPUS)[:rng.randrange(0, 60)] + req
            rec = record(req, resp, sock=rng.randrange(4))
            rec = rec._replace(req_bytes=rec.req_bytes + rng.choice((0, 0, 7, 1000)))
            pg.detect(rec.request, rec.response)
            parsed = pg.parse(rec)
            pg.finished(rec)
            if parsed is not None and not parsed.housekeeping and parsed.upgrade is None:
                pg.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)


# --- metrics -----------------------------------------------------------------------------------

def test_metric_attributes_and_values() -> None:
    pg = PostgreSQL()
    assert pg.instruments(SpanKind.CLIENT) is DB_CLIENT_METRICS and pg.instruments(SpanKind.SERVER) is None
    parse(startup(user="a", database="shop"), STARTED, pg)
    p = parse(Q("SELECT * FROM missing"), error("42P01") + Z, pg)
    desc = pg.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert pg.metric_attributes(SpanKind.CLIENT, PG_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("postgresql", "SELECT", "shop", "42P01", "10.0.0.9", 5432, "42P01"))
    assert pg.metric_attributes(SpanKind.SERVER, PG_CONN, desc, None, frozenset()) is None
    assert pg.metric_values(p.request, p.response) == ((RESP_END - REQ_START) / 1e9,)
    empty = parse(Q("-- ping"), msg(b"I") + Z)
    desc = pg.describe(empty.request, empty.response, SpanKind.CLIENT, False)
    assert pg.metric_attributes(SpanKind.CLIENT, PG_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("postgresql", None, None, None, "10.0.0.9", 5432, None))
    closed = parse(Q("SELECT 1"), None)
    assert pg.metric_values(closed.request, None) == ((REQ_END - REQ_START) / 1e9,)
