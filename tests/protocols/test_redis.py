"""Redis (RESP2, RESP3, inline) from exchange records: parsing, description, metrics, and what the
tracker does with it."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.bpf.events import ConnTuple, End, EventType, ExchangeRecord, Role
from beyla_sidecar.config import Config, ConfigError, load
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import Parsed, SpanDescription, SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.protocols.instruments import DB_CLIENT_METRICS, DB_DURATION_BOUNDS
from beyla_sidecar.protocols.redis import MAX_TEXT_ARGS, Redis, RedisRequest, RedisResponse
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..tracker.records import conn_event

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 256  # BEYLA_RESPONSE_CAPTURE_SIZE default
REQ_START, REQ_END, RESP_START, RESP_END = 1_000, 2_000, 3_000, 1_503_000
SOCK = 0xFFFF0001
REDIS_CONN = ConnTuple("10.0.0.1", 50000, "10.0.0.9", 6380)
SECRET = "s3cr3t-Passw0rd"


def cmd(*args: str | bytes) -> bytes:
    """A command as clients send it: a RESP array of bulk strings."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def record(request: bytes, response: bytes | None = b"+OK\r\n", *, sock: int = SOCK, role: Role = Role.CLIENT,
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


def parse(request: bytes, response: bytes | None = b"+OK\r\n", redis: Redis | None = None, **kw: object) -> Parsed:
    parsed = (redis or Redis()).parse(record(request, response, **kw))  # type: ignore[arg-type]
    assert parsed is not None
    return parsed


def describe(request: bytes, response: bytes | None = b"+OK\r\n", redis: Redis | None = None,
             kind: SpanKind = SpanKind.CLIENT, **kw: object) -> SpanDescription:
    redis = redis or Redis()
    parsed = parse(request, response, redis, **kw)
    return redis.describe(parsed.request, parsed.response, kind, False)


def span(desc: SpanDescription) -> tuple[str, dict[str, object], str | None]:
    return desc.name, desc.attributes, desc.error_type


def test_registered_after_http() -> None:
    assert [p.name for p in all_protocols()][:2] == ["http", "redis"]  # the database protocols follow
    assert [p.query_text for p in all_protocols("raw") if isinstance(p, Redis)] == ["raw"]  # type: ignore[attr-defined]


def test_query_text_setting() -> None:
    assert load(Config, {}).db_query_text == "sanitized"
    assert load(Config, {"BEYLA_DB_QUERY_TEXT": "RAW"}).db_query_text == "raw"
    with pytest.raises(ConfigError, match="BEYLA_DB_QUERY_TEXT"):
        load(Config, {"BEYLA_DB_QUERY_TEXT": "full"})
    with pytest.raises(ValueError):
        Redis("full")


# --- detection ---------------------------------------------------------------------------------

@pytest.mark.parametrize("request_, response", [
    (cmd("PING"), b"+PONG\r\n"),
    (cmd("set", "k", "v"), b"+OK\r\n"),
    (cmd("HELLO", "3"), b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),  # RESP3 handshake: a map
    (cmd("GET", "k"), b""),  # no answer (yet): the array alone is specific enough
    (cmd("JSON.GET", "doc"), b"$2\r\n{}\r\n"),  # module commands
    (b"PING\r\n", b"+PONG\r\n"),  # inline, as health checkers send it
    (b"info replication\r\n", b"$40\r\n# Replication\r\n"),
    (b"SET k v\n", b"-NOAUTH Authentication required.\r\n"),
])
def test_detect(request_: bytes, response: bytes) -> None:
    assert Redis().detect(request_, response)


@pytest.mark.parametrize("request_, response", [
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
    (b"PING\r\n", b""),  # inline without a RESP answer: could be any text protocol
    (b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n"),  # memcached
    (b"version\r\n", b"VERSION 1.6.21\r\n"),
    (b"USER bob\r\n", b"+OK\r\n"),  # POP3: not a Redis command
    (b"EHLO mail\r\n", b"250 ok\r\n"),
    (bytes.fromhex("16030100a5010000a10303"), b"\x16\x03\x03"),  # TLS
    (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"N"),  # PostgreSQL SSLRequest
    (b"*3\r\n:1\r\n", b"+OK\r\n"),  # an array, but not of bulk strings
    (b"*1\r\n$4\r\n1234\r\n", b"+OK\r\n"),  # a command name starts with a letter
    (cmd("PING"), b"HTTP/1.1 400 Bad Request\r\n"),
])
def test_not_detected(request_: bytes, response: bytes) -> None:
    assert not Redis().detect(request_, response)


def test_detected_through_the_tracker_and_http_still_first() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, REDIS_CONN))
    t.exchange(record(cmd("PING"), b"+PONG\r\n", sock=1))
    t.handle(conn_event(EventType.CONN_OPEN, 2, Role.SERVER, ConnTuple("10.0.0.1", 6380, "10.0.0.2", 1)))
    t.exchange(record(b"PING\r\n", b"+PONG\r\n", sock=2, role=Role.SERVER))
    t.handle(conn_event(EventType.CONN_OPEN, 3, Role.SERVER, ConnTuple("10.0.0.1", 80, "10.0.0.2", 2)))
    t.exchange(record(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", sock=3, role=Role.SERVER))
    assert [(e.protocol.name, e.kind, e.request.shape) for e in out] == [
        ("redis", SpanKind.CLIENT, ("PING", 0, "PING", None)),
        ("redis", SpanKind.SERVER, ("PING", 0, "PING", None)),
        ("http", SpanKind.SERVER, ("GET", "/", "", "1.1", None))]


# --- requests and replies ----------------------------------------------------------------------

def test_simple_command() -> None:
    wire = cmd("SET", "user:1", "alice")
    p = parse(wire, b"+OK\r\n")
    req, resp = p.request, p.response
    assert isinstance(req, RedisRequest) and isinstance(resp, RedisResponse)
    assert (req.operation, req.batch_size, req.query_text, req.namespace) == ("SET", 0, "SET ? ?", None)
    assert (req.start_ns, req.end_ns, req.size, resp.start_ns, resp.end_ns, resp.size, resp.error) == \
        (REQ_START, REQ_END, len(wire), RESP_START, RESP_END, 5, "")
    assert not p.ends_protocol
    assert span(describe(wire)) == ("SET", {"db.system.name": "redis", "db.operation.name": "SET",
                                            "db.query.text": "SET ? ?"}, None)


def test_command_name_upper_case() -> None:
    assert describe(cmd("get", "k"), b"$-1\r\n").name == "GET"
    assert describe(cmd("zRangeByScore", "z", "0", "1"), b"*0\r\n").attributes["db.query.text"] == \
        "ZRANGEBYSCORE ? ? ?"


@pytest.mark.parametrize("reply", [
    b"+OK\r\n", b":42\r\n", b"$5\r\nhello\r\n", b"$-1\r\n", b"*-1\r\n", b"*2\r\n$1\r\na\r\n$-1\r\n",
    b"_\r\n", b"#t\r\n", b",3.14\r\n", b"(3492890328409238509324850943850943825024385\r\n",
    b"=15\r\ntxt:Some string\r\n", b"%1\r\n+key\r\n:1\r\n", b"~2\r\n+a\r\n+b\r\n",
    b"|1\r\n+ttl\r\n:3600\r\n$1\r\nv\r\n", b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
    b"*1\r\n-ERR nested errors belong to their command\r\n",  # EXEC's reply: EXEC itself succeeded
])
def test_resp2_and_resp3_replies_without_error(reply: bytes) -> None:
    assert span(describe(cmd("GET", "k"), reply))[2] is None


@pytest.mark.parametrize("reply, code", [
    (b"-ERR unknown command 'FOO', with args beginning with: \r\n", "ERR"),
    (b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", "WRONGTYPE"),
    (b"-NOAUTH Authentication required.\r\n", "NOAUTH"),
    (b"-MOVED 3999 127.0.0.1:6381\r\n", "MOVED"),
    (b"-ERR\r\n", "ERR"),
    (b"!21\r\nSYNTAX invalid syntax\r\n", "SYNTAX"),  # RESP3 blob error
])
def test_error_replies(reply: bytes, code: str) -> None:
    name, attrs, error = span(describe(cmd("LPUSH", "k", "v"), reply))
    assert (name, attrs["db.response.status_code"], error) == ("LPUSH", code, code)


def test_error_without_prefix_is_other() -> None:
    _, attrs, error = span(describe(cmd("FCALL", "f", "0"), b"-something went wrong\r\n"))
    assert (error, "db.response.status_code" in attrs) == ("_OTHER", False)


def test_server_side_describes_alike() -> None:
    wire, reply = cmd("HSET", "h", "f", "v"), b"-WRONGTYPE Operation\r\n"
    assert describe(wire, reply, kind=SpanKind.SERVER, role=Role.SERVER) == describe(wire, reply)


def test_no_reply_is_incomplete_but_shutdown_is_not() -> None:
    assert describe(cmd("BLPOP", "q", "0"), None).error_type == "incomplete"
    assert parse(cmd("BLPOP", "q", "0"), None).response is None
    assert describe(cmd("SHUTDOWN"), None).error_type is None


def test_inline_commands() -> None:
    assert span(describe(b"PING\r\n", b"+PONG\r\n")) == (
        "PING", {"db.system.name": "redis", "db.operation.name": "PING", "db.query.text": "PING"}, None)
    assert describe(b"set k  v\n", b"+OK\r\n").attributes["db.query.text"] == "SET ? ?"
    assert describe(b"set k  v\n", b"+OK\r\n", Redis("raw")).attributes["db.query.text"] == "SET k v"


def test_large_value_beyond_the_prefix_is_one_command() -> None:
    wire = cmd("SET", "blob", b"x" * 5000)
    p = parse(wire)
    assert (p.request.shape, p.request.size) == (("SET", 0, "SET ? ?", None), len(wire))  # type: ignore[attr-defined]
    # more arguments after the large one: where it ends is unknown, it counts as one command
    assert parse(cmd("SET", "blob", b"x" * 5000, "EX", "10")).request.shape == ("SET", 0, "SET ? ? ? ?", None)


def test_finished_waits_for_a_declared_bulk_length() -> None:
    redis = Redis()
    value = b"v" * 10_000
    assert not redis.finished(record(cmd("GET", "big"), bulk(value)[:4000]))  # paused mid-value
    assert redis.finished(record(cmd("GET", "big"), bulk(value)))
    assert redis.finished(record(cmd("GET", "k"), b"+OK\r\n"))
    assert redis.finished(record(cmd("GET", "k"), b"$-1\r\n"))
    assert redis.finished(record(cmd("LRANGE", "l", "0", "-1"), b"*3\r\n$1\r\na\r\n"))  # aggregates: unknown
    assert redis.finished(record(cmd("GET", "a") + cmd("GET", "b"), bulk(value)[:4000]))  # a pipeline: unknown


# --- pipelines ---------------------------------------------------------------------------------

def test_pipeline_of_one_command() -> None:
    wire = cmd("INCR", "n") * 3
    name, attrs, error = span(describe(wire, b":1\r\n:2\r\n:3\r\n"))
    assert (name, attrs, error) == ("BATCH INCR", {
        "db.system.name": "redis", "db.operation.name": "BATCH INCR",
        "db.query.text": "INCR ?; INCR ?; INCR ?", "db.operation.batch.size": 3}, None)


def test_pipeline_of_mixed_commands_with_an_error() -> None:
    wire = cmd("SET", "k", "v") + cmd("LPUSH", "k", "x") + cmd("GET", "k")
    reply = b"+OK\r\n-WRONGTYPE Operation against a key\r\n$1\r\nv\r\n"
    name, attrs, error = span(describe(wire, reply))
    assert (name, attrs["db.operation.batch.size"], attrs["db.query.text"], error, attrs["db.response.status_code"]) \
        == ("BATCH", 3, "SET ? ?; LPUSH ? ?; GET ?", "WRONGTYPE", "WRONGTYPE")


def test_pipeline_error_after_nested_replies() -> None:
    wire = cmd("HGETALL", "h") + cmd("INCR", "h")
    reply = b"*4\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n$-1\r\n-WRONGTYPE x\r\n"
    assert describe(wire, reply).error_type == "WRONGTYPE"
    reply3 = b"%2\r\n+f\r\n|1\r\n+a\r\n:1\r\n:2\r\n+g\r\n~1\r\n_\r\n!9\r\nERR oops!\r\n"
    assert describe(wire, reply3).error_type == "ERR"


def test_transaction_in_one_write() -> None:
    wire = cmd("MULTI") + cmd("SET", "a", "1") + cmd("INCR", "a") + cmd("EXEC")
    ok = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n:2\r\n"
    assert span(describe(wire, ok))[:2] == ("BATCH", {
        "db.system.name": "redis", "db.operation.name": "BATCH", "db.query.text": "MULTI; SET ? ?; INCR ?; EXEC",
        "db.operation.batch.size": 4})
    aborted = b"+OK\r\n-ERR wrong number of arguments\r\n+QUEUED\r\n-EXECABORT Transaction discarded\r\n"
    assert describe(wire, aborted).error_type == "ERR"


def test_pipeline_beyond_the_prefix_has_no_size() -> None:
    wire = cmd("SET", "key:000001", "value") * 50  # 41 bytes each: 6 in the prefix, the 7th cut in its name
    desc = describe(wire, b"+OK\r\n" * 50)
    assert (desc.name, "db.operation.batch.size" in desc.attributes) == ("BATCH", False)
    assert desc.attributes["db.query.text"] == "; ".join(["SET ? ?"] * 6) + "; ..."
    wire = cmd("SET", "key:0001", "value") * 50  # 39 bytes: 6 in the prefix, then 22 of the 7th
    assert describe(wire).attributes["db.query.text"] == "; ".join(["SET ? ?"] * 7) + "; ..."
    # a pipeline whose first command already fills the prefix: a batch too, of unknown size
    big = cmd("SET", "a", b"x" * 300) + cmd("GET", "a")
    assert describe(big, b"+OK\r\n").attributes == {
        "db.system.name": "redis", "db.operation.name": "BATCH", "db.query.text": "SET ? ?; ..."}


def test_pipeline_ending_exactly_where_its_last_value_ends() -> None:
    wire = cmd("GET", "a") + cmd("SET", "b", b"y" * 1000)  # the last value's length reaches the byte count
    assert describe(wire).attributes["db.operation.batch.size"] == 2


# --- query text --------------------------------------------------------------------------------

def test_query_text_modes() -> None:
    wire = cmd("HSET", "myhash", "field1", "Hello world", "field2", b"\x00\xff\"q'")
    assert describe(wire, b":2\r\n").attributes["db.query.text"] == "HSET ? ? ? ? ?"
    assert describe(wire, b":2\r\n", Redis("raw")).attributes["db.query.text"] == \
        'HSET myhash field1 "Hello world" field2 "\\x00\\xff\\"q\'"'
    assert "db.query.text" not in describe(wire, b":2\r\n", Redis("off")).attributes


def test_raw_text_cut_by_the_prefix() -> None:
    wire = cmd("SET", "k", b"v" * 400, "EX", "10")
    text = str(describe(wire, redis=Redis("raw")).attributes["db.query.text"])
    assert text.startswith("SET k vvvv") and text.endswith("v... ...") and len(text) < REQ_PREFIX


def test_sanitized_text_keeps_subcommands_and_caps_placeholders() -> None:
    assert describe(cmd("CONFIG", "GET", "maxmemory")).attributes["db.query.text"] == "CONFIG GET ?"
    assert describe(cmd("client", "setname", "worker-1")).attributes["db.query.text"] == "CLIENT SETNAME ?"
    assert describe(cmd("CLIENT", "a b", "x")).attributes["db.query.text"] == "CLIENT ? ?"  # not a word
    assert describe(cmd("DBSIZE"), b":0\r\n").attributes["db.query.text"] == "DBSIZE"
    many = cmd("MSET", *[f"k{i}" for i in range(200)])
    assert describe(many).attributes["db.query.text"] == "MSET" + " ?" * MAX_TEXT_ARGS + " ..."


@pytest.mark.parametrize("mode", ["raw", "sanitized"])
def test_passwords_never_exported(mode: str) -> None:
    redis = Redis(mode)
    requests = [
        cmd("AUTH", SECRET), cmd("auth", "default", SECRET), cmd("HELLO", "3", "AUTH", "default", SECRET),
        cmd("HELLO", "3", "AUTH", "default", SECRET, "SETNAME", "app"),
        cmd("ACL", "SETUSER", "bob", "on", ">" + SECRET), cmd("CONFIG", "SET", "requirepass", SECRET),
        cmd("MIGRATE", "h", "6379", "", "0", "5000", "KEYS", "a", "AUTH", SECRET),
        cmd("SENTINEL", "SET", "mymaster", "auth-pass", SECRET),
        cmd("PING") + cmd("AUTH", SECRET) + cmd("GET", "k"),  # in a pipeline
        b"AUTH " + SECRET.encode() + b"\r\n",  # inline
    ]
    texts = [str(describe(r, b"+OK\r\n", redis).attributes) for r in requests]
    assert all(SECRET not in t and SECRET[:6] not in t for t in texts), texts
    assert describe(cmd("AUTH", SECRET), redis=redis).attributes["db.query.text"] == "AUTH ?"
    assert describe(cmd("HELLO", "3", "AUTH", "u", SECRET), redis=redis).attributes["db.query.text"] == \
        "HELLO ? ? ? ?"


def test_repeated_commands_share_a_shape() -> None:
    redis = Redis()
    a = parse(cmd("GET", "user:1"), b"$5\r\nalice\r\n", redis)
    b = parse(cmd("GET", "user:2"), b"$3\r\nbob\r\n", redis)
    assert a.request.shape == b.request.shape == ("GET", 0, "GET ?", None)
    assert a.response is not None and b.response is not None and a.response.shape == b.response.shape == ""
    raw = Redis("raw")
    assert parse(cmd("GET", "user:1"), redis=raw).request.shape != parse(cmd("GET", "user:2"), redis=raw).request.shape


def test_describe_reads_only_the_shapes() -> None:
    """What describe sees of a message is its shape: messages of equal shapes, whatever their other
    fields, get equal descriptions (export/shapes.py caches them per shape)."""
    redis = Redis()
    req = RedisRequest(True, 0, 0, shape=("GET", 0, "GET ?", "3"))
    resp = RedisResponse(False, 0, 0, shape="WRONGTYPE")
    assert span(redis.describe(req, resp, SpanKind.CLIENT, False)) == ("GET", {
        "db.system.name": "redis", "db.operation.name": "GET", "db.namespace": "3", "db.query.text": "GET ?",
        "db.response.status_code": "WRONGTYPE"}, "WRONGTYPE")


# --- bad bytes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("junk", [
    b"*2\r\n$3\r\nGET\r\n:1\r\n",  # an integer where a bulk string belongs
    b"*1\r\n$3\r\nGETX\r\n",  # length and bytes disagree
    b"*x\r\n", b"*0\r\n", b"*-1\r\n", b"*1\r\n$-1\r\n",
    b"*1\r\n$4\r\n\x00\x01\x02\x03\r\n",  # not a command name
    b"\x00\x01binary", b"\r\n\r\n", b"",
    b"9LIVES k\r\n", b"GET/x k\r\n",  # not command names
])
def test_request_that_is_not_redis(junk: bytes) -> None:
    assert Redis().parse(record(junk, b"+OK\r\n")) is None


def test_reply_that_is_not_resp() -> None:
    assert Redis().parse(record(cmd("GET", "k"), b"HTTP/1.1 200 OK\r\n\r\n")) is None


def test_garbage_is_a_counted_parse_failure() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, REDIS_CONN))
    t.exchange(record(cmd("PING"), b"+PONG\r\n", sock=1))
    t.exchange(record(b"\x16\x03\x01garbage", b"+OK\r\n", sock=1))
    t.exchange(record(cmd("GET", "k"), b"\x00\x00garbage", sock=1))
    t.exchange(record(cmd("GET", "k"), b"$1\r\nv\r\n", sock=1))
    assert [e.request.shape[0] for e in out] == ["PING", "GET"]  # type: ignore[index]
    assert t.stats.parse_failures == {"redis": 2}


CORPUS = [
    cmd("SET", "user:1", "alice") + cmd("GET", "user:1") + cmd("HSET", "h", "f", b"v" * 300),
    b"PING\r\nSET k v\r\nGET k\r\n",
    cmd("MULTI") + cmd("INCR", "a") + cmd("EXEC"),
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\nabc",
]
REPLIES = [
    b"+OK\r\n$5\r\nalice\r\n:1\r\n", b"*2\r\n$1\r\na\r\n-ERR x\r\n",
    b"%2\r\n+a\r\n|1\r\n+k\r\n:1\r\n~1\r\n_\r\n+b\r\n!10\r\nERR broken\r\n",
    b"$?\r\n;4\r\nHell\r\n;0\r\n", b"=15\r\ntxt:Some string\r\n>2\r\n+a\r\n:1\r\n",
]


def test_every_truncation_of_valid_bytes_parses_or_fails_cleanly() -> None:
    redis = Redis("raw")
    for wire in CORPUS:
        for cut in range(len(wire) + 1):
            rec = record(wire, b"+OK\r\n", req_prefix=cut)
            parsed = redis.parse(rec)
            if cut >= 16:  # a first command whose name is in the prefix always parses
                assert parsed is not None, (wire, cut)
            redis.finished(rec)
    for reply in REPLIES:
        for cut in range(1, len(reply) + 1):
            for wire in (cmd("GET", "k"), cmd("GET", "k") * 2):
                rec = record(wire, reply, resp_prefix=cut)
                assert redis.parse(rec) is not None, (reply, cut)
                redis.finished(rec)


def test_fuzz_random_prefixes_never_raise() -> None:
    rng = random.Random(13)
    alphabet = b"*$+-:_#,(!=%~>|?\r\n0123456789SETGAUTH -x\x00\xff"
    for redis in (Redis(), Redis("raw")):
        for _ in range(4000):
            req = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
            resp = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
            if rng.random() < 0.5:
                req = cmd("SET", "k", "v") + req
            rec = record(req, resp)
            rec = rec._replace(req_bytes=rec.req_bytes + rng.choice((0, 0, 7, 1000)))
            redis.detect(rec.request, rec.response)
            parsed = redis.parse(rec)
            redis.finished(rec)
            if parsed is not None:
                redis.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)


# --- per-connection database -------------------------------------------------------------------

def shape_of(redis: Redis, request: bytes, response: bytes | None = b"+OK\r\n", **kw: object) -> object:
    return parse(request, response, redis, **kw).request.shape


def test_select_sets_the_namespace_of_later_commands() -> None:
    redis = Redis()
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", None)  # unknown before any SELECT
    assert shape_of(redis, cmd("SELECT", "3")) == ("SELECT", 0, "SELECT ?", None)
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", "3")
    assert describe(cmd("GET", "k"), redis=redis).attributes["db.namespace"] == "3"
    assert shape_of(redis, cmd("GET", "k"), sock=SOCK + 1) == ("GET", 0, "GET ?", None)  # another connection
    assert shape_of(redis, cmd("SELECT", "99"), b"-ERR DB index is out of range\r\n") == \
        ("SELECT", 0, "SELECT ?", "3")
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", "3")  # a failed SELECT changes nothing
    assert shape_of(redis, b"select 0\r\n") == ("SELECT", 0, "SELECT ?", "3")
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", "0")
    shape_of(redis, cmd("SELECT", "5"))
    assert shape_of(redis, cmd("RESET"), b"+RESET\r\n") == ("RESET", 0, "RESET", "5")
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", "0")


def test_namespace_forgotten_when_unsure_or_closed() -> None:
    redis = Redis()
    shape_of(redis, cmd("SELECT", "2"))
    shape_of(redis, cmd("SELECT", "7") + cmd("GET", "k"), b"+OK\r\n$-1\r\n")  # in a pipeline
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", None)
    shape_of(redis, cmd("SELECT", "2"))
    assert shape_of(redis, cmd("QUIT"), end=End.CLOSE) == ("QUIT", 0, "QUIT", "2")  # its last exchange
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", None)  # the socket's id, reused
    shape_of(redis, cmd("SELECT", "2"))
    redis.closed(SOCK)
    assert shape_of(redis, cmd("GET", "k")) == ("GET", 0, "GET ?", None)


def test_tracker_tells_the_protocol_about_closed_connections() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append, max_connections=2)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, REDIS_CONN))
    t.exchange(record(cmd("SELECT", "4"), sock=1))
    t.exchange(record(cmd("GET", "k"), b"$-1\r\n", sock=1))
    t.handle(conn_event(EventType.CONN_CLOSE, 1))
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, REDIS_CONN))  # the id, reused
    t.exchange(record(cmd("GET", "k"), b"$-1\r\n", sock=1))
    t.exchange(record(cmd("SELECT", "4"), sock=1))
    for sock in (2, 3):  # evicts connection 1
        t.handle(conn_event(EventType.CONN_OPEN, sock, Role.CLIENT, REDIS_CONN))
    t.exchange(record(cmd("GET", "k"), b"$-1\r\n", sock=1))
    assert [e.request.shape for e in out] == [
        ("SELECT", 0, "SELECT ?", None), ("GET", 0, "GET ?", "4"), ("GET", 0, "GET ?", None),
        ("SELECT", 0, "SELECT ?", None), ("GET", 0, "GET ?", None)]


# --- streams -----------------------------------------------------------------------------------

@pytest.mark.parametrize("request_", [
    cmd("SUBSCRIBE", "news"), cmd("psubscribe", "n*"), cmd("MONITOR"), cmd("PSYNC", "?", "-1")])
def test_streaming_commands_end_the_protocol(request_: bytes) -> None:
    redis = Redis()
    p = parse(request_, b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n", redis)
    assert p.ends_protocol
    desc = redis.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert redis.metric_attributes(SpanKind.CLIENT, REDIS_CONN, desc, None, frozenset()) is None


# --- metrics -----------------------------------------------------------------------------------

def test_metric_instruments() -> None:
    redis = Redis()
    assert redis.instruments(SpanKind.CLIENT) is DB_CLIENT_METRICS
    assert redis.instruments(SpanKind.SERVER) is None
    [duration] = DB_CLIENT_METRICS.instruments
    assert (duration.name, duration.unit, duration.bounds) == (
        "db.client.operation.duration", "s", (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10))
    assert DB_DURATION_BOUNDS == duration.bounds
    assert DB_CLIENT_METRICS.attributes == ("db.system.name", "db.operation.name", "db.namespace", "error.type",
                                            "server.address", "server.port", "db.response.status_code")


def test_metric_attributes_and_values() -> None:
    redis = Redis()
    shape_of(redis, cmd("SELECT", "1"))
    p = parse(cmd("LPUSH", "k", "v"), b"-WRONGTYPE Operation\r\n", redis)
    desc = redis.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert redis.metric_attributes(SpanKind.CLIENT, REDIS_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("redis", "LPUSH", "1", "WRONGTYPE", "10.0.0.9", 6380, "WRONGTYPE"))
    assert redis.metric_attributes(SpanKind.SERVER, REDIS_CONN, desc, None, frozenset()) is None
    assert redis.metric_values(p.request, p.response) == ((RESP_END - REQ_START) / 1e9,)
    ok = parse(cmd("GET", "k"), b"$-1\r\n")
    desc = redis.describe(ok.request, ok.response, SpanKind.CLIENT, False)
    assert redis.metric_attributes(SpanKind.CLIENT, REDIS_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("redis", "GET", None, None, "10.0.0.9", 6380, None))
    closed = parse(cmd("GET", "k"), None)
    assert redis.metric_values(closed.request, None) == ((REQ_END - REQ_START) / 1e9,)


def test_http_is_untouched_by_redis_detection() -> None:
    http = HTTP1()
    assert http.detect(b"GET / HTTP/1.1\r\n", b"") and not Redis().detect(b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200")
