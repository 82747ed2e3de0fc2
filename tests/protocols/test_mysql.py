"""MySQL/MariaDB from exchange records: detection, handshake housekeeping, commands and answers,
prepared statements per connection and their bounds, description, metrics, bad bytes."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.bpf.events import ConnTuple, End, EventType, ExchangeRecord, Role
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import Parsed, SpanDescription, SpanKind
from beyla_sidecar.protocols.instruments import DB_CLIENT_METRICS
from beyla_sidecar.protocols.mysql import MAX_CONNECTIONS, MAX_STATEMENTS, MySQL, MySQLRequest, MySQLResponse
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..tracker.records import conn_event

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 256  # BEYLA_RESPONSE_CAPTURE_SIZE default
REQ_START, REQ_END, RESP_START, RESP_END = 1_000, 2_000, 3_000, 2_503_000
SOCK = 0xFFFF0002
MYSQL_CONN = ConnTuple("10.0.0.1", 50000, "10.0.0.9", 3306)
SECRET = "s3cr3t-Passw0rd"

# Capability flags of the drivers seen in the end-to-end tests.
MARIADB_CLI_CAPS = 0x00BFA28C  # CONNECT_WITH_DB, PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH_LENENC, ...
PYMYSQL_CAPS = 0x003AA20D  # CONNECT_WITH_DB, PROTOCOL_41, SECURE_CONNECTION, no lenenc auth data
SSL, COMPRESS, WITH_DB = 0x800, 0x20, 0x8


def packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def command(cmd: int, body: bytes = b"") -> bytes:
    return packet(0, bytes([cmd]) + body)


def query(sql: str) -> bytes:
    return command(0x03, sql.encode())


def prepare(sql: str) -> bytes:
    return command(0x16, sql.encode())


def execute(stmt: int, params: bytes = b"\x00\x01\x01\x80\x02") -> bytes:
    """COM_STMT_EXECUTE of statement `stmt` (no cursor, one iteration) with its parameter bytes."""
    return command(0x17, stmt.to_bytes(4, "little") + b"\x00\x01\x00\x00\x00" + params)


def close(stmt: int) -> bytes:
    return command(0x19, stmt.to_bytes(4, "little"))


def ok(seq: int = 1) -> bytes:
    return packet(seq, b"\x00\x00\x00\x02\x00\x00\x00")


def err(code: int, state: str = "42S02", message: str = "Table 'shop.nope' doesn't exist", seq: int = 1) -> bytes:
    return packet(seq, b"\xff" + code.to_bytes(2, "little") + b"#" + state.encode() + message.encode())


def prepare_ok(stmt: int, columns: int = 1, params: int = 1) -> bytes:
    return packet(1, b"\x00" + stmt.to_bytes(4, "little") + columns.to_bytes(2, "little")
                  + params.to_bytes(2, "little") + b"\x00\x00\x00")


# A result set of one column and one row, as MariaDB sends it (column count, definition, EOF, row, EOF).
RESULT = (packet(1, b"\x01") + packet(2, b"\x03def\x04shop\x06orders\x06orders\x04item\x04item\x0c-\x00\xc8\x00\x00"
                                     b"\x00\xfd\x00\x00\x00\x00\x00")
          + packet(3, b"\xfe\x00\x00\x02\x00") + packet(4, b"\x04book") + packet(5, b"\xfe\x00\x00\x02\x00"))


def handshake(user: str = "app", db: str | None = "shop", caps: int = MARIADB_CLI_CAPS, seq: int = 1,
              scramble: bytes = b"\x89m\x0e\x1a>\xa2u\xf1\xd7}\x81\xa3\xf3\xdc\x8d?\x9f\x17\xcb\xe1",
              attrs: bytes = b"\x0c_client_name\x0alibmariadb") -> bytes:
    """A HandshakeResponse41 (MariaDB's 4 extended capability bytes at the filler's end)."""
    if db is None:
        caps &= ~WITH_DB
    body = caps.to_bytes(4, "little") + b"\x00\x00\x00\x01" + b"\x21" + b"\x00" * 19 + b"\x1d\x00\x00\x00"
    body += user.encode() + b"\x00"
    body += bytes([len(scramble)]) + scramble  # lenenc or one length byte: the same for < 251
    if db is not None:
        body += db.encode() + b"\x00"
    body += b"mysql_native_password\x00" + bytes([len(attrs)]) + attrs
    return packet(seq, body)


def ssl_request(caps: int = MARIADB_CLI_CAPS | SSL) -> bytes:
    return packet(1, caps.to_bytes(4, "little") + b"\x00\x00\x00\x01\x21" + b"\x00" * 23)


def record(request: bytes, response: bytes | None = None, *, sock: int = SOCK, role: Role = Role.CLIENT,
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


def parse(request: bytes, response: bytes | None = None, mysql: MySQL | None = None, **kw: object) -> Parsed:
    parsed = (mysql or MySQL()).parse(record(request, response, **kw))  # type: ignore[arg-type]
    assert parsed is not None
    return parsed


def describe(request: bytes, response: bytes | None = None, mysql: MySQL | None = None,
             kind: SpanKind = SpanKind.CLIENT, **kw: object) -> SpanDescription:
    mysql = mysql or MySQL()
    parsed = parse(request, response, mysql, **kw)
    assert not parsed.housekeeping and not parsed.pipelined
    return mysql.describe(parsed.request, parsed.response, kind, False)


def span(desc: SpanDescription) -> tuple[str, dict[str, object], str | None]:
    return desc.name, desc.attributes, desc.error_type


def connected(db: str | None = "shop", sock: int = SOCK, mysql: MySQL | None = None) -> MySQL:
    """A MySQL protocol that saw the connection's handshake."""
    mysql = mysql or MySQL()
    assert parse(handshake(db=db), ok(2), mysql, sock=sock).housekeeping
    return mysql


def test_registered_after_redis() -> None:
    names = [p.name for p in all_protocols()]
    assert names.index("mysql") > names.index("redis")
    assert [p.query_text for p in all_protocols("raw") if isinstance(p, MySQL)] == ["raw"]
    with pytest.raises(ValueError):
        MySQL("full")


# --- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("request_, response", [
    (handshake(), ok(2)),
    (handshake(db=None, caps=PYMYSQL_CAPS), ok(2)),
    (handshake(), packet(2, b"\xfemysql_native_password\x00" + b"x" * 20)),  # auth switch
    (handshake(), packet(2, b"\x01\x03") + ok(3)),  # caching_sha2 fast auth
    (handshake(), err(1045, "28000", "Access denied", seq=2)),
    (handshake(), b""),  # not answered (yet)
    (handshake(seq=2), ok(3)),  # after an SSLRequest, as the TLS probes show it
    (ssl_request(), b""),
    (ssl_request() + b"\x16\x03\x01\x02\x00\x01", b"\x16\x03\x03\x00\x7a\x02"),  # TLS follows
    (query("select 1"), RESULT),  # a connection older than the sidecar
    (query("SELECT * FROM nope"), err(1146)),
    (query("INSERT INTO t VALUES (1)"), ok()),
    (prepare("SELECT ?"), prepare_ok(1)),
    (execute(1), RESULT),
    (command(0x0E), ok()),  # COM_PING
    (command(0x02, b"shop"), ok()),  # COM_INIT_DB
    (query("SELECT " + "x" * 400), RESULT),  # longer than the prefix
])
def test_detect(request_: bytes, response: bytes) -> None:
    rec = record(request_, response)
    assert MySQL().detect(rec.request, rec.response)


@pytest.mark.parametrize("request_, response", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
    (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
    (bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40, b"\x16\x03\x03"),  # TLS
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"N"),  # PostgreSQL SSLRequest
    (b"Q\x00\x00\x00\x0dselect 1\x00", b"T\x00\x00\x00\x21"),  # PostgreSQL simple query
    (b"\x00\x00\x00\x2a\x00\x03\x00\x09" + b"\x00" * 40, b"\x00\x00\x00\x10"),  # Kafka
    (query("select 1"), b""),  # a command alone: too little to tell
    (query("select 1"), RESULT[:4]),  # an answer without its first byte
    (query("select 1"), packet(2, b"\x01")),  # answered out of sequence
    (query("select 1"), packet(1, b"\x05" + b"x" * 20)),  # no column count
    (command(0x01), ok()),  # COM_QUIT is never answered
    (command(0x19, b"\x01\x00\x00\x00"), ok()),  # nor COM_STMT_CLOSE
    (command(0x60), ok()),  # no such command
    (command(0x03, b"\x02\xff\xfe"), ok()),  # no query text
    (query("select 1") + query("select 2"), RESULT),  # two commands in one write
    (packet(1, b"\x00" * 40), ok(2)),  # no CLIENT_PROTOCOL_41
    (packet(1, (0x200).to_bytes(4, "little") + b"\x01" * 40), ok(2)),  # no zero filler
    (ssl_request(MARIADB_CLI_CAPS), b""),  # a 32-byte HandshakeResponse without CLIENT_SSL
    (handshake(), ok(1)),  # answered out of sequence
    (handshake(), b"HTTP/1.1 400 Bad Request\r\n"),
])
def test_not_detected(request_: bytes, response: bytes) -> None:
    assert not MySQL().detect(request_, response)


def test_detected_through_the_tracker_client_and_server() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, MYSQL_CONN))
    t.exchange(record(handshake(), ok(2), sock=1))
    t.exchange(record(query("SELECT * FROM orders"), RESULT, sock=1))
    t.handle(conn_event(EventType.CONN_OPEN, 2, Role.SERVER, ConnTuple("10.0.0.9", 3306, "10.0.0.1", 1)))
    t.exchange(record(query("SELECT 1"), RESULT, sock=2, role=Role.SERVER))  # a connection older than the sidecar
    assert [(e.protocol.name, e.kind, e.request.shape) for e in out] == [
        ("mysql", SpanKind.CLIENT, ("SELECT", "orders", "SELECT * FROM orders", "shop")),
        ("mysql", SpanKind.SERVER, ("SELECT", None, "SELECT ?", None))]
    assert t.stats.housekeeping == 1 and not t.stats.parse_failures


# --- handshake ---------------------------------------------------------------------------------

def test_handshake_is_housekeeping_and_names_the_database() -> None:
    mysql = MySQL()
    p = parse(handshake(db="shop"), ok(2), mysql)
    assert (p.housekeeping, p.pipelined, p.response) == (True, False, None)
    assert parse(query("SELECT 1"), RESULT, mysql).request.shape == ("SELECT", None, "SELECT ?", "shop")
    mysql = connected(db=None)  # PyMySQL-style flags, no database
    assert parse(query("SELECT 1"), RESULT, mysql).request.shape == ("SELECT", None, "SELECT ?", None)
    mysql = MySQL()
    parse(handshake(db="shop", caps=PYMYSQL_CAPS), ok(2), mysql)  # one length byte before the auth data
    assert parse(query("COMMIT"), ok(), mysql).request.shape == ("COMMIT", None, "COMMIT", "shop")


def test_refused_handshake_remembers_nothing() -> None:
    mysql = MySQL()
    assert parse(handshake(db="shop"), err(1045, "28000", "Access denied", seq=2), mysql).housekeeping
    assert parse(query("SELECT 1"), RESULT, mysql).request.shape[3] is None  # type: ignore[index]


def test_authentication_round_trips_are_housekeeping() -> None:
    mysql = MySQL()
    switch = packet(2, b"\xfemysql_native_password\x00" + b"s" * 20 + b"\x00")
    assert parse(handshake(), switch, mysql).housekeeping
    assert parse(packet(3, b"\x9a" * 20), ok(4), mysql).housekeeping  # the auth data, then OK
    assert parse(packet(3, b"\x02"), packet(4, b"\x01" + b"-----BEGIN PUBLIC KEY-----"), mysql).housekeeping
    assert parse(query("SELECT 1"), RESULT, mysql).request.shape[3] == "shop"  # type: ignore[index]
    # an auth packet answered by something out of sequence is no MySQL
    assert mysql.parse(record(packet(3, b"\x9a" * 20), ok(1))) is None
    assert mysql.parse(record(packet(3, b"\x9a" * 20)[:10] + b"\x00" * 30, ok(4))) is not None  # framing fits
    assert mysql.parse(record(packet(3, b"\x9a" * 20)[:10], ok(4))) is None  # declares more than sent


def test_ssl_request_then_plaintext_handshake() -> None:
    """The SSLRequest exchange on the socket, then (after the TLS probes marked the socket and
    the tracker forgot the connection) the HandshakeResponse with sequence id 2."""
    mysql = MySQL()
    assert parse(ssl_request() + b"\x16\x03\x01\x02\x00\x01", b"\x16\x03\x03\x00\x7a\x02", mysql).housekeeping
    mysql.closed(SOCK)
    assert parse(handshake(seq=2, caps=MARIADB_CLI_CAPS | SSL), ok(3), mysql).housekeeping
    assert parse(query("SELECT 1"), RESULT, mysql).request.shape[3] == "shop"  # type: ignore[index]


def test_tls_not_seen_in_plaintext_is_housekeeping() -> None:
    """A TLS library the probes do not read: after the SSLRequest, ciphertext on the same
    connection, never a span even where it happens to look like a command and its answer."""
    mysql = MySQL()
    assert parse(ssl_request() + b"\x16\x03\x01\x02\x00\x01", b"\x16\x03\x03\x00\x7a\x02", mysql).housekeeping
    looks_like_a_query = b"\x17\x03\x03\x00\x03" + b"\x9c" * 40
    assert parse(looks_like_a_query, b"\x17\x03\x03\x01\x00" + b"\x11" * 30, mysql).housekeeping
    assert parse(query("SELECT 1"), RESULT, mysql).housekeeping
    mysql.closed(SOCK)
    assert not parse(query("SELECT 1"), RESULT, mysql).housekeeping


def test_compressed_connection_is_never_described() -> None:
    mysql = MySQL()
    assert parse(handshake(caps=MARIADB_CLI_CAPS | COMPRESS), ok(2), mysql).housekeeping
    compressed_query = b"\x0d\x00\x00\x00\x00\x00\x00" + query("select 1")
    assert mysql.parse(record(compressed_query, b"\x0b\x00\x00\x01\x00\x00\x00" + ok())) is None
    assert mysql.parse(record(query("select 1"), RESULT)) is None  # whatever it looks like
    mysql.closed(SOCK)
    assert mysql.parse(record(query("select 1"), RESULT)) is not None


def test_local_infile_data_is_housekeeping() -> None:
    mysql = connected()
    p = parse(query("LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE orders"), packet(1, b"\xfb/tmp/x.csv"), mysql)
    assert mysql.describe(p.request, p.response, SpanKind.CLIENT, False).error_type is None
    assert parse(packet(2, b"1,book\n2,pen\n") + packet(3, b""), ok(4), mysql).housekeeping


# --- commands and answers ----------------------------------------------------------------------

def test_query_byte_exact() -> None:
    wire = query("SELECT item FROM orders WHERE id = 42")
    p = parse(wire, RESULT, connected())
    req, resp = p.request, p.response
    assert isinstance(req, MySQLRequest) and isinstance(resp, MySQLResponse)
    assert (req.operation, req.collection, req.query_text, req.namespace) == \
        ("SELECT", "orders", "SELECT item FROM orders WHERE id = ?", "shop")
    assert (req.start_ns, req.end_ns, req.size, resp.start_ns, resp.end_ns, resp.size, resp.error) == \
        (REQ_START, REQ_END, len(wire), RESP_START, RESP_END, len(RESULT), "")
    assert span(describe(wire, RESULT, connected())) == ("SELECT orders", {
        "db.system.name": "mysql", "db.operation.name": "SELECT", "db.collection.name": "orders",
        "db.namespace": "shop", "db.query.text": "SELECT item FROM orders WHERE id = ?"}, None)


@pytest.mark.parametrize("sql, name, collection", [
    ("insert into orders (id, item) values (1, 'a')", "INSERT orders", "orders"),
    ("UPDATE `shop`.`orders` SET item = 'b' WHERE id = 1", "UPDATE shop.orders", "shop.orders"),
    ("DELETE FROM orders WHERE id = 1", "DELETE orders", "orders"),
    ("SELECT * FROM orders o JOIN items i ON o.id = i.order_id", "SELECT", None),
    ("SET NAMES utf8mb4", "SET", None),
    ("COMMIT", "COMMIT", None),
    ("(SELECT 1)", "mysql", None),  # no keyword first: the system's name
    ("", "mysql", None),
])
def test_span_names(sql: str, name: str, collection: str | None) -> None:
    desc = describe(query(sql), ok())
    assert (desc.name, desc.attributes.get("db.collection.name")) == (name, collection)
    assert ("db.operation.name" in desc.attributes) == (name != "mysql")


@pytest.mark.parametrize("answer, code", [
    (err(1146), "1146"),
    (err(1064, "42000", "You have an error in your SQL syntax"), "1064"),
    (packet(1, b"\xff\x15\x04Access denied"), "1045"),  # no SQLSTATE marker (pre-4.1 form)
    (packet(1, b"\xff\xff\xff\x01\x00\x01\x00\x00\x00\x00\x05stage") + err(1205, "HY000", "Lock wait timeout"),
     "1205"),  # a MariaDB progress report first
    (packet(1, b"\xff\x7a"), "_OTHER"),  # cut before its number
])
def test_error_answers(answer: bytes, code: str) -> None:
    name, attrs, error = span(describe(query("UPDATE orders SET item = 'x'"), answer))
    assert (name, error) == ("UPDATE orders", code)
    assert attrs.get("db.response.status_code") == (None if code == "_OTHER" else code)


@pytest.mark.parametrize("answer", [
    ok(), RESULT, RESULT[:20], packet(1, b"\xfc\x00\x01"), packet(1, b"\xfe\x00\x00\x02\x00"),
    packet(1, b"\xfbfile.csv"),
])
def test_successful_answers(answer: bytes) -> None:
    assert describe(query("SELECT 1"), answer).error_type is None


def test_no_answer_is_incomplete() -> None:
    p = parse(query("SELECT SLEEP(100)"), None, end=End.CLOSE)
    assert p.response is None and not p.housekeeping
    assert describe(query("SELECT SLEEP(100)"), None).error_type == "incomplete"


@pytest.mark.parametrize("request_", [
    command(0x01),  # COM_QUIT
    close(3),  # COM_STMT_CLOSE
    close(3) + command(0x01),  # both in one exchange (a driver's cursor and connection close)
    command(0x18, b"\x01\x00\x00\x00\x00\x00" + b"blob"),  # COM_STMT_SEND_LONG_DATA alone
])
def test_unanswered_commands_are_housekeeping(request_: bytes) -> None:
    assert parse(request_, None, end=End.CLOSE).housekeeping


@pytest.mark.parametrize("cmd, body", [
    (0x1A, b"\x01\x00\x00\x00"), (0x1B, b"\x00\x00"), (0x1F, b""), (0x12, b"\x04\x00\x00\x00\x00\x00\x01\x00\x00\x00"),
])
def test_answered_housekeeping_commands(cmd: int, body: bytes) -> None:
    assert parse(command(cmd, body), ok()).housekeeping


@pytest.mark.parametrize("cmd, name", [(0x0E, "PING"), (0x09, "STATISTICS"), (0x0C, "PROCESS_KILL")])
def test_other_commands_are_named_after_themselves(cmd: int, name: str) -> None:
    body = b"\x05\x00\x00\x00" if cmd == 0x0C else b""
    assert span(describe(command(cmd, body), ok())) == (name, {"db.system.name": "mysql", "db.operation.name": name},
                                                        None)


def test_several_answered_commands_are_pipelined() -> None:
    p = parse(query("SELECT 1") + query("SELECT 2"), RESULT + RESULT)
    assert p.pipelined and not p.housekeeping
    p = parse(prepare("SELECT * FROM orders WHERE id = ?") + execute(0xFFFFFFFF), prepare_ok(9) + RESULT)
    assert p.pipelined
    big = query("SELECT '" + "x" * 300 + "'") + query("SELECT 2")  # the second one beyond the prefix
    assert parse(big, RESULT).pipelined


def test_query_attributes_without_parameters_are_read() -> None:
    """MySQL 8 with CLIENT_QUERY_ATTRIBUTES: parameter count 0, one parameter set, then the text."""
    assert describe(command(0x03, b"\x00\x01SELECT * FROM orders"), RESULT).name == "SELECT orders"
    assert MySQL().parse(record(command(0x03, b"\x01\x01\x00\x01\xfe\x00\x01a\x01b"), RESULT)) is None


# --- query text --------------------------------------------------------------------------------

def test_query_text_modes() -> None:
    wire = query(f"INSERT INTO users (name, password) VALUES ('bob', '{SECRET}') -- {SECRET}")
    assert describe(wire, ok()).attributes["db.query.text"] == "INSERT INTO users (name, password) VALUES (?, ?)"
    assert describe(wire, ok(), MySQL("raw")).attributes["db.query.text"] == \
        f"INSERT INTO users (name, password) VALUES ('bob', '{SECRET}')"  # comments are dropped even raw
    assert "db.query.text" not in describe(wire, ok(), MySQL("off")).attributes


@pytest.mark.parametrize("mode", ["sanitized", "off"])
def test_no_literal_by_default(mode: str) -> None:
    mysql = MySQL(mode)
    statements = [
        f"SELECT * FROM users WHERE password = '{SECRET}'", f'SELECT * FROM users WHERE password = "{SECRET}"',
        f"UPDATE users SET password = x'{SECRET.encode().hex()}'", f"CALL login('{SECRET}')",
        f"SELECT '{SECRET}' /* {SECRET} */ # {SECRET}\n",
        f"SELECT 'it''s {SECRET}'", f"SELECT 'it\\'s {SECRET}'",
    ]
    for sql in statements:
        assert SECRET not in str(describe(query(sql), ok(), mysql).attributes), sql
        p = parse(prepare(sql), prepare_ok(1), mysql)
        assert SECRET not in str(p.request.shape)


def test_statement_cut_by_the_prefix() -> None:
    wire = query("SELECT * FROM orders WHERE item IN (" + ", ".join(f"'item{i}'" for i in range(100)) + ")")
    desc = describe(wire, RESULT)
    text = str(desc.attributes["db.query.text"])
    assert desc.name == "SELECT orders" and text.startswith("SELECT * FROM orders WHERE item IN (?, ?") \
        and text.endswith(" ...") and len(text) < REQ_PREFIX
    cut_table = query("SELECT " + "a, " * 80 + "b FROM orders")
    assert describe(cut_table, RESULT).name == "SELECT"  # the FROM is beyond the prefix


def test_non_utf8_text_does_not_raise() -> None:
    assert describe(command(0x03, b"SELECT '\xff\xfe' FROM t"), RESULT).name == "SELECT t"


# --- databases ---------------------------------------------------------------------------------

def namespace(mysql: MySQL, sock: int = SOCK) -> str | None:
    return parse(command(0x0E), ok(), mysql, sock=sock).request.shape[3]  # type: ignore[index]


def test_init_db_and_use_change_the_namespace_after_success() -> None:
    mysql = connected(db=None)
    p = parse(command(0x02, b"shop"), ok(), mysql)
    assert span(mysql.describe(p.request, p.response, SpanKind.CLIENT, False)) == (
        "USE", {"db.system.name": "mysql", "db.operation.name": "USE"}, None)  # ran without a database
    assert namespace(mysql) == "shop"
    parse(command(0x02, b"nope"), err(1049, "42000", "Unknown database 'nope'"), mysql)
    assert namespace(mysql) == "shop"  # a failed change changes nothing
    assert parse(query("USE `my``db`"), ok(), mysql).request.shape == ("USE", None, "USE `my``db`", "shop")
    assert namespace(mysql) == "my`db"
    parse(query("use other;"), ok(), mysql)
    assert namespace(mysql) == "other"
    parse(query("USE " + "d" * 65), ok(), mysql)  # too long to be one: unknown rather than wrong
    assert namespace(mysql) is None
    parse(command(0x02, b"shop"), ok(), mysql)
    parse(query("use a; select 1"), RESULT, mysql)
    assert namespace(mysql) is None
    assert namespace(mysql, sock=SOCK + 1) is None  # another connection


def test_change_user_and_reset_connection() -> None:
    mysql = connected(db="shop")
    parse(prepare("SELECT 1"), prepare_ok(1), mysql)
    change = command(0x11, b"bob\x00\x14" + b"a" * 20 + b"inventory\x00\x21\x00mysql_native_password\x00")
    assert parse(change, packet(1, b"\xfemysql_native_password\x00" + b"s" * 21), mysql).housekeeping
    assert parse(packet(2, b"b" * 20), ok(3), mysql).housekeeping
    assert namespace(mysql) == "inventory"
    assert parse(execute(1), RESULT, mysql).request.shape[0] == "EXECUTE"  # type: ignore[index]
    parse(prepare("SELECT 2"), prepare_ok(2), mysql)
    assert parse(command(0x1F), ok(), mysql).housekeeping  # COM_RESET_CONNECTION
    assert parse(execute(2), RESULT, mysql).request.shape[0] == "EXECUTE"  # type: ignore[index]
    assert namespace(mysql) == "inventory"


def test_database_names_are_bounded() -> None:
    assert namespace(connected(db="d" * 64)) == "d" * 64
    assert namespace(connected(db="d" * 65)) is None
    assert namespace(connected(db="caf\u00e9")) == "caf\u00e9"


# --- prepared statements -----------------------------------------------------------------------

SELECT = "SELECT item FROM orders WHERE id = ?"


def test_prepared_statement_is_remembered_by_the_id_in_the_answer() -> None:
    mysql = connected()
    p = parse(prepare(SELECT), prepare_ok(7), mysql)
    assert span(mysql.describe(p.request, p.response, SpanKind.CLIENT, False)) == ("PREPARE orders", {
        "db.system.name": "mysql", "db.operation.name": "PREPARE", "db.collection.name": "orders",
        "db.namespace": "shop", "db.query.text": SELECT}, None)
    for params in (b"\x00\x01\x01\x80\x02", b"\x00\x01\x03\x00\x2a\x00\x00\x00"):
        assert span(describe(execute(7, params), RESULT, mysql)) == ("SELECT orders", {
            "db.system.name": "mysql", "db.operation.name": "SELECT", "db.collection.name": "orders",
            "db.namespace": "shop", "db.query.text": SELECT}, None)
    assert parse(command(0x1A, b"\x07\x00\x00\x00"), ok(), mysql).housekeeping  # COM_STMT_RESET
    failed = describe(execute(7), err(1062, "23000", "Duplicate entry"), mysql)
    assert (failed.name, failed.error_type) == ("SELECT orders", "1062")
    assert describe(command(0x1C, b"\x07\x00\x00\x00\x0a\x00\x00\x00"), RESULT, mysql).name == "FETCH orders"
    assert describe(execute(8), RESULT, mysql).attributes == {  # another id: not known
        "db.system.name": "mysql", "db.operation.name": "EXECUTE", "db.namespace": "shop"}
    assert parse(execute(7), RESULT, mysql, sock=SOCK + 1).request.shape[0] == "EXECUTE"  # type: ignore[index]


def test_failed_prepare_is_an_error_and_remembers_nothing() -> None:
    mysql = connected()
    desc = describe(prepare("SELECT * FROM nope WHERE id = ?"), err(1146), mysql)
    assert (desc.name, desc.error_type, desc.attributes["db.response.status_code"]) == ("PREPARE nope", "1146", "1146")
    assert describe(execute(1), RESULT, mysql).name == "EXECUTE"
    assert mysql.state_drops == 0


def test_raw_mode_shows_the_statement_not_the_parameters() -> None:
    mysql = connected(mysql=MySQL("raw"))
    parse(prepare("SELECT * FROM users WHERE password = ? AND id = 42"), prepare_ok(1), mysql)
    desc = describe(execute(1, b"\x00\x01\xfe\x00" + bytes([len(SECRET)]) + SECRET.encode()), RESULT, mysql)
    assert desc.attributes["db.query.text"] == "SELECT * FROM users WHERE password = ? AND id = 42"


def test_statement_close_forgets_even_in_the_write_of_the_next_command() -> None:
    mysql = connected()
    parse(prepare(SELECT), prepare_ok(1), mysql)
    insert = "INSERT INTO orders (id, item) VALUES (?, ?)"
    p = parse(close(1) + prepare(insert), prepare_ok(2, 0, 2), mysql)  # one write after the other
    assert p.request.shape == ("PREPARE", "orders", insert, "shop")
    assert describe(execute(1), RESULT, mysql).name == "EXECUTE"
    assert describe(execute(2), ok(), mysql).name == "INSERT orders"
    assert parse(close(2), None, mysql).housekeeping
    assert describe(execute(2), ok(), mysql).name == "EXECUTE"
    assert mysql.state_drops == 0


def test_bulk_execute() -> None:
    mysql = connected()
    parse(prepare("INSERT INTO orders VALUES (?, ?)"), prepare_ok(3, 0, 2), mysql)
    assert describe(command(0xFA, b"\x03\x00\x00\x00\x80\x00\x03\x00\xfe\x00"), ok(), mysql).name == "BATCH INSERT orders"
    assert describe(command(0xFA, b"\x04\x00\x00\x00\x80\x00"), ok(), mysql).name == "BATCH"


def test_statements_per_connection_are_bounded_and_counted() -> None:
    mysql = connected()
    for i in range(MAX_STATEMENTS + 3):
        parse(prepare(f"SELECT * FROM t{i}"), prepare_ok(i), mysql)
    assert mysql.state_drops == 3
    assert [describe(execute(i), RESULT, mysql).name for i in (0, 2, 3, MAX_STATEMENTS + 2)] == \
        ["EXECUTE", "EXECUTE", "SELECT t3", f"SELECT t{MAX_STATEMENTS + 2}"]


def test_connections_are_bounded_and_counted() -> None:
    mysql = MySQL()
    for sock in range(MAX_CONNECTIONS):
        connected(db="shop", sock=sock, mysql=mysql)
    parse(prepare("SELECT 1"), prepare_ok(1), mysql, sock=0)  # the oldest: a database and a statement
    assert mysql.state_drops == 0
    connected(db="shop", sock=MAX_CONNECTIONS, mysql=mysql)
    assert mysql.state_drops == 2
    assert namespace(mysql, sock=0) is None and namespace(mysql, sock=1) == "shop"
    assert namespace(mysql, sock=MAX_CONNECTIONS) == "shop"
    connected(db=None, sock=MAX_CONNECTIONS + 1, mysql=mysql)  # nothing to remember: nothing forgotten
    assert mysql.state_drops == 2


def test_state_forgotten_when_closed() -> None:
    mysql = connected()
    parse(prepare(SELECT), prepare_ok(1), mysql)
    mysql.closed(SOCK)
    assert parse(execute(1), RESULT, mysql).request.shape == ("EXECUTE", None, None, None)
    connected(mysql=mysql)
    parse(prepare(SELECT), prepare_ok(1), mysql)
    assert parse(close(1) + command(0x01), None, mysql, end=End.CLOSE).housekeeping  # its last exchange
    assert parse(execute(1), RESULT, mysql).request.shape == ("EXECUTE", None, None, None)
    assert mysql.state_drops == 0


def test_tracker_tells_the_protocol_about_closed_connections() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, MYSQL_CONN))
    t.exchange(record(handshake(), ok(2), sock=1))
    t.exchange(record(prepare(SELECT), prepare_ok(1), sock=1))
    t.exchange(record(execute(1), RESULT, sock=1))
    t.handle(conn_event(EventType.CONN_CLOSE, 1))
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, MYSQL_CONN))  # the id, reused
    t.exchange(record(execute(1), RESULT, sock=1))
    assert [e.request.shape for e in out] == [
        ("PREPARE", "orders", SELECT, "shop"), ("SELECT", "orders", SELECT, "shop"), ("EXECUTE", None, None, None)]


# --- shapes, metrics ---------------------------------------------------------------------------

def test_repeated_queries_share_a_shape_and_a_parse() -> None:
    mysql = connected()
    a = parse(query("SELECT * FROM orders WHERE id = 1"), RESULT, mysql)
    b = parse(query("SELECT * FROM orders WHERE id = 2"), RESULT, mysql)
    assert a.request.shape == b.request.shape == ("SELECT", "orders", "SELECT * FROM orders WHERE id = ?", "shop")
    assert a.response is not None and b.response is not None and a.response.shape == b.response.shape == ""
    assert mysql._request(record(query("SELECT 1"))) is mysql._request(record(query("SELECT 1")))


def test_describe_reads_only_the_shapes() -> None:
    req = MySQLRequest(True, 0, 0, shape=("DELETE", "orders", "DELETE FROM orders WHERE id = ?", "shop"))
    resp = MySQLResponse(False, 0, 0, shape="1451")
    assert span(MySQL().describe(req, resp, SpanKind.SERVER, False)) == ("DELETE orders", {
        "db.system.name": "mysql", "db.operation.name": "DELETE", "db.collection.name": "orders",
        "db.namespace": "shop", "db.query.text": "DELETE FROM orders WHERE id = ?", "db.response.status_code": "1451"},
        "1451")


def test_server_side_describes_alike() -> None:
    wire, answer = query("SELECT * FROM nope"), err(1146)
    assert describe(wire, answer, kind=SpanKind.SERVER, role=Role.SERVER) == describe(wire, answer)


def test_metric_attributes_and_values() -> None:
    mysql = connected()
    assert mysql.instruments(SpanKind.CLIENT) is DB_CLIENT_METRICS and mysql.instruments(SpanKind.SERVER) is None
    p = parse(query("SELECT * FROM nope"), err(1146), mysql)
    desc = mysql.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert mysql.metric_attributes(SpanKind.CLIENT, MYSQL_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("mysql", "SELECT", "shop", "1146", "10.0.0.9", 3306, "1146"))
    assert mysql.metric_attributes(SpanKind.SERVER, MYSQL_CONN, desc, None, frozenset()) is None
    assert mysql.metric_values(p.request, p.response) == ((RESP_END - REQ_START) / 1e9,)
    p = parse(query("(SELECT 1)"), RESULT)
    desc = mysql.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert mysql.metric_attributes(SpanKind.CLIENT, MYSQL_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("mysql", None, None, None, "10.0.0.9", 3306, None))
    closed = parse(query("SELECT 1"), None)
    assert mysql.metric_values(closed.request, None) == ((REQ_END - REQ_START) / 1e9,)


# --- bad bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("junk", [
    b"", b"\x01\x00\x00", b"\x00\x00\x00\x00\x03",  # empty payload
    command(0x60), command(0x00),  # no such command
    command(0x17, b"\x01\x00"),  # an EXECUTE without its statement id
    close(1) + b"\x05\x00\x00\x01\x19",  # a packet out of sequence after it
    close(1) + b"\x05\x00",  # the next header cut
    b"GET / HTTP/1.1\r\n\r\n", b"*1\r\n$4\r\nPING\r\n",
])
def test_request_that_is_not_mysql(junk: bytes) -> None:
    assert MySQL().parse(record(junk, ok())) is None


@pytest.mark.parametrize("answer", [b"\x07\x00\x00\x02\x00\x00\x00", b"+OK\r\n", b"\x01\x00\x00"])
def test_answer_that_is_not_mysql(answer: bytes) -> None:
    assert MySQL().parse(record(query("SELECT 1"), answer)) is None


def test_garbage_is_a_counted_parse_failure() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, MYSQL_CONN))
    t.exchange(record(handshake(), ok(2), sock=1))
    t.exchange(record(b"\x16\x03\x01garbage", ok(), sock=1))
    t.exchange(record(query("SELECT 1"), b"\x00\x00garbage", sock=1))
    t.exchange(record(query("SELECT 1"), RESULT, sock=1))
    assert [e.request.shape[0] for e in out] == ["SELECT"]  # type: ignore[index]
    assert t.stats.parse_failures == {"mysql": 2}


CORPUS = [
    handshake(), ssl_request() + b"\x16\x03\x01", query("SELECT * FROM orders WHERE id = 1"),
    close(1) + prepare(SELECT), execute(1), command(0x02, b"shop"), query("USE shop"),
    command(0x11, b"bob\x00\x14" + b"a" * 20 + b"inventory\x00"), packet(3, b"\x9a" * 20),
]
ANSWERS = [ok(), RESULT, err(1146), prepare_ok(1), ok(2), packet(2, b"\xfemysql_native_password\x00"),
           packet(1, b"\xff\xff\xff\x01\x00\x01\x00\x00\x00\x00\x05stage") + err(1205)]


def test_every_truncation_parses_or_fails_cleanly() -> None:
    mysql = MySQL("raw")
    for wire in CORPUS:
        for answer in ANSWERS:
            for cut in range(len(wire) + 1):
                rec = record(wire, answer, req_prefix=cut)
                mysql.detect(rec.request, rec.response)
                parsed = mysql.parse(rec)
                if parsed is not None and not parsed.housekeeping and not parsed.pipelined:
                    mysql.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
            for cut in range(len(answer) + 1):
                rec = record(wire, answer, resp_prefix=cut)
                mysql.detect(rec.request, rec.response)
                parsed = mysql.parse(rec)
                if parsed is not None and not parsed.housekeeping and not parsed.pipelined:
                    mysql.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
    # a query's prefix cut anywhere past its header still describes it
    wire = query("SELECT item FROM orders WHERE id = 1")
    for cut in range(5, len(wire) + 1):
        assert mysql.parse(record(wire, RESULT, req_prefix=cut)) is not None, cut


def test_fuzz_random_prefixes_never_raise() -> None:
    rng = random.Random(13)
    alphabet = bytes(range(0, 32)) + b"\xfa\xfb\xfc\xfd\xfe\xff SELECT*FROMt'\"`#?-/"
    for mysql in (MySQL(), MySQL("raw")):
        for _ in range(5000):
            req = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
            resp = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
            if rng.random() < 0.3:
                req = packet(rng.choice((0, 0, 1, 2, 3)), req)
            if rng.random() < 0.3:
                resp = packet(rng.choice((1, 2)), resp)
            rec = record(req, resp, sock=rng.randrange(4))
            rec = rec._replace(req_bytes=rec.req_bytes + rng.choice((0, 0, 7, 1000)),
                               end=rng.choice((End.NEXT_REQUEST, End.CLOSE)))
            mysql.detect(rec.request, rec.response)
            parsed = mysql.parse(rec)
            if parsed is not None and not parsed.housekeeping and not parsed.pipelined:
                mysql.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
