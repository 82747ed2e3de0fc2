"""memcached (text protocol, classic and meta commands) from exchange records: detection (and its
clash with HTTP/1 and Redis inline commands), parsing, batches, description, metrics, and what the
tracker does with it."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.bpf.events import ConnTuple, End, EventType, ExchangeRecord, Role
from beyla_sidecar.protocols import all_protocols, guess_protocol
from beyla_sidecar.protocols.base import Parsed, SpanDescription, SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.protocols.instruments import DB_CLIENT_METRICS
from beyla_sidecar.protocols.memcached import (
    FIRST_REPLIES, LINE_CHECKS, MAX_TEXT_ARGS, Memcached, MemcachedRequest, MemcachedResponse)
from beyla_sidecar.protocols.redis import Redis
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..tracker.records import conn_event

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 256  # BEYLA_RESPONSE_CAPTURE_SIZE default
REQ_START, REQ_END, RESP_START, RESP_END = 1_000, 2_000, 3_000, 1_503_000
SOCK = 0xFFFF0002
MC_CONN = ConnTuple("10.0.0.1", 50000, "10.0.0.9", 11211)
SECRET = b"s3cr3t-Passw0rd"
SYSTEM = {"db.system.name": "memcached"}


def store(name: str, key: str, data: bytes, *extra: str, flags: int = 0, exptime: int = 0) -> bytes:
    """A storage command as clients send it: its line, then the data block of the declared length."""
    line = " ".join([name, key, str(flags), str(exptime), str(len(data)), *extra])
    return line.encode() + b"\r\n" + data + b"\r\n"


def value(key: str, data: bytes, cas: int | None = None) -> bytes:
    tail = b"" if cas is None else b" %d" % cas
    return b"VALUE %s 0 %d%s\r\n%s\r\n" % (key.encode(), len(data), tail, data)


def record(request: bytes, response: bytes | None = b"STORED\r\n", *, sock: int = SOCK, role: Role = Role.CLIENT,
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


def parse(request: bytes, response: bytes | None = b"STORED\r\n", mc: Memcached | None = None,
          **kw: object) -> Parsed:
    parsed = (mc or Memcached()).parse(record(request, response, **kw))  # type: ignore[arg-type]
    assert parsed is not None
    return parsed


def describe(request: bytes, response: bytes | None = b"STORED\r\n", mc: Memcached | None = None,
             kind: SpanKind = SpanKind.CLIENT, **kw: object) -> SpanDescription:
    mc = mc or Memcached()
    parsed = parse(request, response, mc, **kw)
    return mc.describe(parsed.request, parsed.response, kind, False)


def span(desc: SpanDescription) -> tuple[str, dict[str, object], str | None]:
    return desc.name, desc.attributes, desc.error_type


def test_registered_after_http_and_redis() -> None:
    names = [p.name for p in all_protocols()]
    assert "memcached" in names and names.index("memcached") > names.index("redis") > names.index("http") == 0
    assert [p.query_text for p in all_protocols("raw") if isinstance(p, Memcached)] == ["raw"]
    with pytest.raises(ValueError):
        Memcached("full")


def test_every_detectable_command_has_its_replies() -> None:
    assert set(LINE_CHECKS) == set(FIRST_REPLIES)


# --- detection ---------------------------------------------------------------------------------

MEMCACHED_EXCHANGES = [
    (b"get user:1\r\n", b"END\r\n"),
    (b"get a b c\r\n", value("a", b"1") + b"END\r\n"),
    (b"gets k\r\n", value("k", b"v", cas=7) + b"END\r\n"),
    (b"gat 60 k\r\n", b"END\r\n"),
    (b"gats -1 k j\r\n", value("j", b"v", cas=1) + b"END\r\n"),
    (store("set", "k", b"hello"), b"STORED\r\n"),
    (store("set", "k", b"hello"), b""),  # the data block where its line says: specific enough alone
    (store("append", "k", b"x", "noreply"), b""),
    (store("cas", "k", b"v", "99"), b"EXISTS\r\n"),
    (store("add", "k", b"v"), b"NOT_STORED\r\n"),
    (b"delete k\r\n", b"DELETED\r\n"),
    (b"delete k 0\r\n", b"NOT_FOUND\r\n"),
    (b"incr n 5\r\n", b"15\r\n"),
    (b"decr n 1\r\n", b"NOT_FOUND\r\n"),
    (b"touch k 10\r\n", b"TOUCHED\r\n"),
    (b"flush_all\r\n", b"OK\r\n"),
    (b"flush_all 10 noreply\r\nversion\r\n", b"VERSION 1.6.18\r\n"),
    (b"version\r\n", b"VERSION 1.6.18\r\n"),
    (b"stats\r\n", b"STAT pid 1\r\nSTAT uptime 2\r\n"),
    (b"stats slabs\r\n", b"STAT active_slabs 0\r\nEND\r\n"),
    (b"verbosity 1\r\n", b"OK\r\n"),
    (b"mg k v t\r\n", b"VA 2 t-1\r\nhi\r\n"),
    (b"mg k v\r\n", b"EN\r\n"),
    (b"ms k 2 T60\r\nhi\r\n", b"HD\r\n"),
    (b"md k q\r\nmn\r\n", b"MN\r\n"),
    (b"ma n\r\n", b"NF\r\n"),
    (b"mn\r\n", b"MN\r\n"),
    (b"set k 0 0 1 noreply\r\nv\r\nget k\r\n", value("k", b"v") + b"END\r\n"),  # the reply is the get's
    (b"get k\n", b"END\r\n"),  # a bare LF ends a line too
    (b"incr text 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"),
    (store("set", "big", b"x" * 2000), b"SERVER_ERROR object too large for cache\r\n"),
]

REDIS_EXCHANGES = [
    (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$1\r\nv\r\n"),
    (b"get k\r\n", b"$1\r\nv\r\n"),  # inline Redis: a RESP reply
    (b"get k\r\n", b"$-1\r\n"),
    (b"GET k\r\n", b"$-1\r\n"),
    (b"set k v\r\n", b"+OK\r\n"),
    (b"incr n\r\n", b":1\r\n"),
    (b"touch k\r\n", b":0\r\n"),
    (b"PING\r\n", b"+PONG\r\n"),
    (b"info\r\n", b"$40\r\n# Server\r\n"),
]


@pytest.mark.parametrize("request_, response", MEMCACHED_EXCHANGES)
def test_detect(request_: bytes, response: bytes) -> None:
    assert Memcached().detect(request_, response)


@pytest.mark.parametrize("request_, response", [
    *REDIS_EXCHANGES,
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
    (b"GET k\r\n", b"END\r\n"),  # memcached commands are lower case (memcached answers ERROR)
    (b"get k\r\n", b""),  # a line alone could be any text protocol
    (b"get k", b"END\r\n"),  # no whole line
    (b"get\r\n", b"END\r\n"),  # no key
    (b"get k\r\n", b"STORED\r\n"),  # not a reply a get can get
    (b"delete k\r\n", b"VALUE k 0 1\r\n"),
    (b"incr n 1\r\n", b"12a\r\n"),
    (b"incr n x\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),  # the line is checked first
    (b"set k 0 0 5\r\nab\r\n", b""),  # the block is not where the line says
    (b"set k 0 0\r\nab\r\n", b"STORED\r\n"),  # no length
    (b"set k x 0 2\r\nab\r\n", b"STORED\r\n"),
    (b"version 2\r\n", b"VERSION 1\r\n"),
    (b"mg k v\r\n", b"HTTP/1.1 400 Bad Request\r\n"),
    (b"ms k\r\nhi\r\n", b"HD\r\n"),  # no length
    (b"USER bob\r\n", b"+OK\r\n"),
    (b"\x80\x00\x00\x01\x00\x00\x00\x00" + b"\x00" * 16 + b"k", b"\x81\x00"),  # the binary protocol
    (bytes.fromhex("16030100a5010000a10303"), b"\x16\x03\x03"),  # TLS
    (b"\r\n", b"ERROR\r\n"),
])
def test_not_detected(request_: bytes, response: bytes) -> None:
    assert not Memcached().detect(request_, response)


@pytest.mark.parametrize("request_, response", MEMCACHED_EXCHANGES)
def test_no_other_protocol_claims_memcached(request_: bytes, response: bytes) -> None:
    assert not Redis().detect(request_, response)
    assert not HTTP1().detect(request_, response)
    assert [p.name for p in all_protocols() if p.detect(request_, response)] == ["memcached"]


def test_clash_through_the_tracker() -> None:
    """One tracker, all protocols: a memcached `get k`, a Redis inline `get k` and an HTTP GET, each
    bound to its own protocol, both ends."""
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    wires = [(b"get k\r\n", b"END\r\n"), (b"get k\r\n", b"$1\r\nv\r\n"),
             (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
             (b"get k\r\n", value("k", b"v") + b"END\r\n")]
    for sock, (req, resp) in enumerate(wires, 1):
        for role, base in ((Role.CLIENT, 0), (Role.SERVER, 100)):
            t.handle(conn_event(EventType.CONN_OPEN, base + sock, role, MC_CONN))
            t.exchange(record(req, resp, sock=base + sock, role=role))
    assert [(e.protocol.name, e.kind) for e in out] == [
        (name, kind) for name in ("memcached", "redis", "http", "memcached")
        for kind in (SpanKind.CLIENT, SpanKind.SERVER)]
    assert [e.request.shape for e in out if e.protocol.name == "memcached"][0] == ("get", 0, "get ?", True)
    assert t.stats.parse_failures == {}


def test_binary_protocol_is_unrecognised() -> None:
    header = b"\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01" + b"\x00" * 12 + b"k"
    assert guess_protocol(header, b"\x81\x00\x00\x00") == "memcached-binary"
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, MC_CONN))
    for _ in range(3):
        t.exchange(record(header, b"\x81\x00\x00\x00" + b"\x00" * 20, sock=1))
    assert not out and t.stats.unrecognised_connections == {("memcached-binary", 11211): 1}


# --- commands and replies ----------------------------------------------------------------------

def test_set() -> None:
    wire = store("set", "user:1", b"alice")
    p = parse(wire, b"STORED\r\n")
    req, resp = p.request, p.response
    assert isinstance(req, MemcachedRequest) and isinstance(resp, MemcachedResponse)
    assert (req.shape, resp.shape) == (("set", 0, "set ? ? ? ?", True), ("", -1))
    assert (req.start_ns, req.end_ns, req.size, resp.start_ns, resp.end_ns, resp.size) == \
        (REQ_START, REQ_END, len(wire), RESP_START, RESP_END, 8)
    assert not p.ends_protocol
    assert span(describe(wire)) == ("set", {**SYSTEM, "db.operation.name": "set", "db.query.text": "set ? ? ? ?"}, None)


@pytest.mark.parametrize("request_, reply, text, attrs", [
    (b"get user:1\r\n", value("user:1", b"alice") + b"END\r\n", "get ?", {"db.response.returned_rows": 1}),
    (b"get user:2\r\n", b"END\r\n", "get ?", {"db.response.returned_rows": 0}),  # a miss
    (b"get a b c\r\n", value("a", b"1") + value("c", b"3") + b"END\r\n", "get ? ? ?", {"db.response.returned_rows": 2}),
    (b"gets k\r\n", value("k", b"v", cas=12) + b"END\r\n", "gets ?", {"db.response.returned_rows": 1}),
    (b"gat 60 k\r\n", b"END\r\n", "gat ? ?", {"db.response.returned_rows": 0}),
    (b"gats 60 k\r\n", value("k", b"END\r\nVALUE x 0 1", cas=1) + b"END\r\n", "gats ? ?",
     {"db.response.returned_rows": 1}),  # a value looking like replies
    (store("add", "k", b"v"), b"NOT_STORED\r\n", "add ? ? ? ?", {"db.response.status_code": "NOT_STORED"}),
    (store("replace", "k", b"v"), b"NOT_STORED\r\n", "replace ? ? ? ?", {"db.response.status_code": "NOT_STORED"}),
    (store("append", "k", b"v"), b"STORED\r\n", "append ? ? ? ?", {}),
    (store("prepend", "k", b"v"), b"STORED\r\n", "prepend ? ? ? ?", {}),
    (store("cas", "k", b"v", "42"), b"EXISTS\r\n", "cas ? ? ? ? ?", {"db.response.status_code": "EXISTS"}),
    (store("cas", "k", b"v", "42"), b"NOT_FOUND\r\n", "cas ? ? ? ? ?", {"db.response.status_code": "NOT_FOUND"}),
    (b"delete k\r\n", b"DELETED\r\n", "delete ?", {}),
    (b"delete k\r\n", b"NOT_FOUND\r\n", "delete ?", {"db.response.status_code": "NOT_FOUND"}),
    (b"incr n 5\r\n", b"15\r\n", "incr ? ?", {}),
    (b"decr n 5\r\n", b"NOT_FOUND\r\n", "decr ? ?", {"db.response.status_code": "NOT_FOUND"}),
    (b"touch k 10\r\n", b"TOUCHED\r\n", "touch ? ?", {}),
    (b"flush_all\r\n", b"OK\r\n", "flush_all", {}),
    (b"version\r\n", b"VERSION 1.6.18\r\n", "version", {}),
    (b"verbosity 1\r\n", b"OK\r\n", "verbosity ?", {}),
    (b"stats\r\n", b"STAT pid 1\r\nEND\r\n", "stats", {}),
    (b"stats slabs\r\n", b"STAT active_slabs 0\r\nEND\r\n", "stats slabs", {}),  # the subcommand kept
    (b"stats cachedump 1 100\r\n", b"END\r\n", "stats cachedump ? ?", {}),
    (b"mg k v t\r\n", b"VA 2 t-1\r\nhi\r\n", "mg ? v t", {}),
    (b"mg k v\r\n", b"EN\r\n", "mg ? v", {"db.response.status_code": "EN"}),
    (b"ms k 2 T60 F5\r\nhi\r\n", b"HD\r\n", "ms ? ? T? F?", {}),
    (b"ms k 2 I\r\nhi\r\n", b"NS\r\n", "ms ? ? I", {"db.response.status_code": "NS"}),
    (b"md k\r\n", b"NF\r\n", "md ?", {"db.response.status_code": "NF"}),
    (b"md k C99\r\n", b"EX\r\n", "md ? C?", {"db.response.status_code": "EX"}),
    (b"ma n N0 J13 D1\r\n", b"HD\r\n", "ma ? N? J? D?", {}),
    (b"mn\r\n", b"MN\r\n", "mn", {}),
    (b"me k\r\n", b"EN\r\n", "me ?", {"db.response.status_code": "EN"}),
])
def test_commands_and_replies(request_: bytes, reply: bytes, text: str, attrs: dict[str, object]) -> None:
    name = request_.split()[0].decode()
    assert span(describe(request_, reply)) == (
        name, {**SYSTEM, "db.operation.name": name, "db.query.text": text, **attrs}, None)


@pytest.mark.parametrize("reply, code", [
    (b"ERROR\r\n", "ERROR"),
    (b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n", "CLIENT_ERROR"),
    (b"SERVER_ERROR out of memory storing object\r\n", "SERVER_ERROR"),
    (b"CLIENT_ERROR bad data chunk\r\nERROR\r\n", "CLIENT_ERROR"),  # the first line is the command's
    (b"ERROR: shutdown not enabled\r\n", "ERROR"),
])
def test_error_replies(reply: bytes, code: str) -> None:
    for request_ in (b"incr k 1\r\n", b"get k\r\n", b"shutdown\r\n"):
        name, attrs, error = span(describe(request_, reply))
        assert (name, attrs["db.response.status_code"], error) == (request_.split()[0].decode(), code, code)
        assert "db.response.returned_rows" not in attrs


def test_unknown_command_is_other() -> None:
    assert span(describe(b"bogus arg\r\n", b"ERROR\r\n")) == (
        "_OTHER", {**SYSTEM, "db.operation.name": "_OTHER", "db.response.status_code": "ERROR"}, "ERROR")
    assert describe(b"GET k\r\n", b"ERROR\r\n").name == "_OTHER"  # commands are case-sensitive
    assert "db.query.text" not in describe(b"bogus secret\r\n", b"ERROR\r\n", Memcached("raw")).attributes


def test_server_side_describes_alike() -> None:
    wire, reply = b"incr k 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    assert describe(wire, reply, kind=SpanKind.SERVER, role=Role.SERVER) == describe(wire, reply)


def test_no_reply() -> None:
    """A request that expects no reply and gets none is no error; another one is incomplete."""
    assert describe(store("set", "k", b"v", "noreply"), None).error_type is None
    assert describe(b"delete k noreply\r\n", None).attributes["db.query.text"] == "delete ? noreply"
    assert describe(b"mg k v q\r\n", None).error_type is None  # meta quiet mode
    assert describe(b"quit\r\n", None, end=End.CLOSE).error_type is None
    assert describe(b"get k\r\n", None).error_type == "incomplete"
    assert parse(b"get k\r\n", None).response is None


def test_data_block_is_skipped_by_its_length() -> None:
    data = b"get x\r\nSET y\r\n" + SECRET
    desc = describe(store("set", "k", data), mc=Memcached("raw"))
    assert span(desc) == ("set", {**SYSTEM, "db.operation.name": "set", "db.query.text": f"set k 0 0 {len(data)}"},
                          None)


def test_data_never_exported() -> None:
    for mode in ("raw", "sanitized"):
        mc = Memcached(mode)
        for wire in (store("set", "user", SECRET), store("set", "a", b"1", "noreply") + store("set", "u", SECRET),
                     b"ms u %d T0\r\n%s\r\n" % (len(SECRET), SECRET)):
            attrs = str(describe(wire, b"STORED\r\n", mc).attributes)
            assert SECRET.decode() not in attrs and SECRET[:6].decode() not in attrs


def test_query_text_modes() -> None:
    wire = store("cas", "user:1", b"v", "77", "noreply", flags=5, exptime=60)
    assert describe(wire).attributes["db.query.text"] == "cas ? ? ? ? ? noreply"
    assert describe(wire, mc=Memcached("raw")).attributes["db.query.text"] == "cas user:1 5 60 1 77 noreply"
    assert "db.query.text" not in describe(wire, mc=Memcached("off")).attributes
    assert describe(b"get caf\xc3\xa9 k\r\n", b"END\r\n", Memcached("raw")).attributes["db.query.text"] == \
        "get caf\\xc3\\xa9 k"
    assert describe(b"mg a2V5 b v\r\n", b"EN\r\n", Memcached("raw")).attributes["db.query.text"] == "mg a2V5 b v"


def test_get_of_many_keys_cut_by_the_prefix() -> None:
    wire = b"get " + b" ".join(b"key:%04d" % i for i in range(100)) + b"\r\n"
    p = parse(wire, b"END\r\n")
    operation, batch, text, _ = p.request.shape  # type: ignore[misc]
    assert (operation, batch) == ("get", 0)
    assert text == "get" + " ?" * 28 + " ..."  # 28 keys in the prefix
    raw = str(describe(wire, b"END\r\n", Memcached("raw")).attributes["db.query.text"])
    assert raw == wire[:REQ_PREFIX].decode().rstrip() + "..."
    many = b"get " + b" ".join(b"k%d" % i for i in range(80)) + b"\r\n"  # fits, more keys than placeholders
    assert describe(many, b"END\r\n").attributes["db.query.text"] == "get" + " ?" * MAX_TEXT_ARGS + " ..."


def test_large_values() -> None:
    mc = Memcached()
    big = b"x" * 5000
    assert parse(store("set", "blob", big), mc=mc).request.shape == ("set", 0, "set ? ? ? ?", True)
    # the reply's value runs past the prefix; its declared length and END reach the byte count
    reply = value("blob", big) + b"END\r\n"
    assert describe(b"get blob\r\n", reply, mc).attributes["db.response.returned_rows"] == 1
    two = value("a", big) + value("b", b"y") + b"END\r\n"  # the second value is beyond the prefix
    assert "db.response.returned_rows" not in describe(b"get a b\r\n", two, mc).attributes
    # the server refused the line before the data came (`object too large`): one command
    wire = store("set", "big", big)[:300]
    assert parse(wire, b"SERVER_ERROR object too large for cache\r\n", mc).request.shape == \
        ("set", 0, "set ? ? ? ?", True)


def test_finished_waits_for_a_declared_value_length() -> None:
    mc = Memcached()
    reply = value("big", b"v" * 10_000) + b"END\r\n"
    assert not mc.finished(record(b"get big\r\n", reply[:4000]))  # paused mid-value
    assert mc.finished(record(b"get big\r\n", reply))
    assert not mc.finished(record(b"mg big v\r\n", b"VA 10000\r\n" + b"v" * 100))
    assert mc.finished(record(b"get k\r\n", b"END\r\n"))
    assert mc.finished(record(b"get a\r\nget b\r\n", reply[:4000]))  # a batch: unknown


# --- batches -----------------------------------------------------------------------------------

def test_set_many_pipeline() -> None:
    wire = store("set", "a", b"1") + store("set", "b", b"2") + store("set", "c", b"3")
    assert span(describe(wire, b"STORED\r\n" * 3)) == ("BATCH set", {
        **SYSTEM, "db.operation.name": "BATCH set", "db.query.text": "set ? ? ? ?; set ? ? ? ?; set ? ? ? ?",
        "db.operation.batch.size": 3}, None)


def test_noreply_commands_then_a_get_are_one_batch() -> None:
    wire = store("set", "q1", b"v", "noreply") + store("set", "q2", b"v", "noreply") + b"get q1\r\n"
    assert span(describe(wire, value("q1", b"v") + b"END\r\n")) == ("BATCH", {
        **SYSTEM, "db.operation.name": "BATCH", "db.query.text": "set ? ? ? ? noreply; set ? ? ? ? noreply; get ?",
        "db.operation.batch.size": 3}, None)
    # all quiet, closed before anything else: nothing was due
    quiet = store("set", "q1", b"v", "noreply") + b"delete q2 noreply\r\n"
    assert describe(quiet, None, end=End.CLOSE).error_type is None
    assert describe(quiet + b"get k\r\n", None, end=End.CLOSE).error_type == "incomplete"


def test_meta_quiet_pipeline() -> None:
    wire = b"mg a v q\r\nmg b v q\r\nmn\r\n"
    assert span(describe(wire, b"VA 1\r\n1\r\nMN\r\n")) == ("BATCH", {
        **SYSTEM, "db.operation.name": "BATCH", "db.query.text": "mg ? v q; mg ? v q; mn",
        "db.operation.batch.size": 3}, None)


def test_batch_error_is_the_first_error_reply() -> None:
    wire = b"get a\r\nincr a 1\r\nbogus\r\n"
    reply = value("a", b"ERROR\r\nx") + b"END\r\nCLIENT_ERROR cannot increment\r\nERROR\r\n"
    name, attrs, error = span(describe(wire, reply, Memcached("raw")))
    assert (name, attrs["db.query.text"], attrs["db.operation.batch.size"], error, attrs["db.response.status_code"]) \
        == ("BATCH", "get a; incr a 1; _OTHER", 3, "CLIENT_ERROR", "CLIENT_ERROR")
    # misses in a batch are no status: which command missed is not said
    misses = describe(b"delete a\r\ndelete b\r\n", b"NOT_FOUND\r\nDELETED\r\n")
    assert "db.response.status_code" not in misses.attributes


def test_batch_beyond_the_prefix_has_no_size() -> None:
    wire = store("set", "key:00001", b"value") * 20  # 28 bytes each: 9 whole in the prefix, the 10th cut
    desc = describe(wire, b"STORED\r\n" * 20)
    assert (desc.name, "db.operation.batch.size" in desc.attributes) == ("BATCH", False)
    assert desc.attributes["db.query.text"] == "; ".join(["set ? ? ? ?"] * 9) + "; set ...; ..."
    wire = store("set", "key:0001", b"value") * 20  # 27 bytes: 9 whole, then `set key:0001 `
    assert describe(wire).attributes["db.query.text"] == "; ".join(["set ? ? ? ?"] * 9) + "; set ? ...; ..."
    big = store("set", "a", b"x" * 300) + b"get a\r\n"  # the first command fills the prefix
    assert describe(big).attributes == {**SYSTEM, "db.operation.name": "BATCH", "db.query.text": "set ? ? ? ?; ..."}
    exact = b"get a\r\n" + store("set", "b", b"y" * 1000)  # the last block's length reaches the byte count
    assert describe(exact).attributes["db.operation.batch.size"] == 2


# --- streams, shapes, bad bytes ----------------------------------------------------------------

def test_watch_ends_the_protocol_without_a_metric() -> None:
    mc = Memcached()
    p = parse(b"watch fetchers\r\n", b"OK\r\nts=1 gid=2 type=item_get\r\n", mc)
    assert p.ends_protocol
    desc = mc.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert desc.name == "watch" and desc.attributes["db.query.text"] == "watch ?"
    assert mc.metric_attributes(SpanKind.CLIENT, MC_CONN, desc, None, frozenset()) is None


def test_repeated_commands_share_a_shape() -> None:
    mc = Memcached()
    a = parse(b"get user:1\r\n", value("user:1", b"alice") + b"END\r\n", mc)
    b = parse(b"get user:2\r\n", value("user:2", b"bob") + b"END\r\n", mc)
    assert a.request.shape == b.request.shape == ("get", 0, "get ?", True)
    assert a.response is not None and b.response is not None and a.response.shape == b.response.shape == ("", 1)
    raw = Memcached("raw")
    assert parse(b"get user:1\r\n", mc=raw).request.shape != parse(b"get user:2\r\n", mc=raw).request.shape


def test_describe_reads_only_the_shapes() -> None:
    mc = Memcached()
    req = MemcachedRequest(True, 0, 0, shape=("delete", 0, "delete ?", True))
    resp = MemcachedResponse(False, 0, 0, shape=("NOT_FOUND", -1))
    assert span(mc.describe(req, resp, SpanKind.CLIENT, False)) == ("delete", {
        **SYSTEM, "db.operation.name": "delete", "db.query.text": "delete ?", "db.response.status_code": "NOT_FOUND"},
        None)


@pytest.mark.parametrize("junk", [
    b"\x00\x01binary", b"\r\n", b"\r\n\r\n", b"", b"9lives k\r\n", b"get/x k\r\n", b"-1\r\n",
    store("set", "k", b"abc")[:-2] + b"xx",  # the block is not where its line says
    b"\x80\x00\x00\x01" + b"\x00" * 20,
])
def test_request_that_is_not_memcached(junk: bytes) -> None:
    assert Memcached().parse(record(junk, b"STORED\r\n")) is None


@pytest.mark.parametrize("reply", [b"$1\r\nv\r\n", b"+OK\r\n", b"\x00\x01", b"-ERR\r\n", b"\r\nEND\r\n"])
def test_reply_that_is_not_memcached(reply: bytes) -> None:
    assert Memcached().parse(record(b"get k\r\n", reply)) is None


def test_garbage_is_a_counted_parse_failure() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, MC_CONN))
    t.exchange(record(b"version\r\n", b"VERSION 1.6.18\r\n", sock=1))
    t.exchange(record(b"\x16\x03\x01garbage", b"ERROR\r\n", sock=1))
    t.exchange(record(b"get k\r\n", b"\x00\x00garbage", sock=1))
    t.exchange(record(b"get k\r\n", b"END\r\n", sock=1))
    assert [e.request.shape[0] for e in out] == ["version", "get"]  # type: ignore[index]
    assert t.stats.parse_failures == {"memcached": 2}


CORPUS = [
    store("set", "user:1", b"alice") + b"get user:1 user:2\r\n" + store("cas", "h", b"v" * 300, "12"),
    b"mg a v q k\r\nms b 2 T0 q\r\nhi\r\nmd c q\r\nmn\r\n",
    store("set", "a", b"1", "noreply") + b"incr a 1\r\n",
    b"set k 0 0 100000\r\nabc",
]
REPLIES = [
    value("a", b"alice") + value("b", b"b\r\nEND\r\n", cas=3) + b"END\r\n",
    b"STORED\r\nNOT_STORED\r\nEXISTS\r\nCLIENT_ERROR bad\r\n",
    b"VA 2 k\r\nhi\r\nHD\r\nEN\r\nMN\r\n",
    b"SERVER_ERROR object too large for cache\r\n",
    b"15\r\n",
]


def test_every_truncation_of_valid_bytes_parses_or_fails_cleanly() -> None:
    mc = Memcached("raw")
    for wire in CORPUS:
        for cut in range(len(wire) + 1):
            rec = record(wire, b"STORED\r\n", req_prefix=cut)
            parsed = mc.parse(rec)
            if cut >= 4:  # a first command whose name is in the prefix always parses
                assert parsed is not None, (wire, cut)
            mc.detect(rec.request, rec.response)
            mc.finished(rec)
    for reply in REPLIES:
        for cut in range(1, len(reply) + 1):
            for wire in (b"get a b\r\n", b"get a\r\nget b\r\n", b"incr a 1\r\n"):
                rec = record(wire, reply, resp_prefix=cut)
                parsed = mc.parse(rec)
                assert parsed is not None, (reply, cut)
                mc.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
                mc.detect(rec.request, rec.response)
                mc.finished(rec)


def test_fuzz_random_prefixes_never_raise() -> None:
    rng = random.Random(13)
    alphabet = b"getsadmnqvTSVALUEND0123456789 \r\n-_\x00\xffkx"
    for mc in (Memcached(), Memcached("raw")):
        for _ in range(4000):
            req = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
            resp = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
            if rng.random() < 0.5:
                req = store("set", "k", b"v") + req
            if rng.random() < 0.5:
                resp = b"VALUE k 0 " + resp
            rec = record(req, resp)
            rec = rec._replace(req_bytes=rec.req_bytes + rng.choice((0, 0, 7, 1000)),
                               resp_bytes=rec.resp_bytes + rng.choice((0, 0, 5, 1000)))
            mc.detect(rec.request, rec.response)
            parsed = mc.parse(rec)
            mc.finished(rec)
            if parsed is not None:
                mc.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)


# --- metrics -----------------------------------------------------------------------------------

def test_metric_instruments_attributes_and_values() -> None:
    mc = Memcached()
    assert mc.instruments(SpanKind.CLIENT) is DB_CLIENT_METRICS
    assert mc.instruments(SpanKind.SERVER) is None
    p = parse(b"incr k 1\r\n", b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n", mc)
    desc = mc.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert mc.metric_attributes(SpanKind.CLIENT, MC_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("memcached", "incr", None, "CLIENT_ERROR", "10.0.0.9", 11211, "CLIENT_ERROR"))
    assert mc.metric_attributes(SpanKind.SERVER, MC_CONN, desc, None, frozenset()) is None
    assert mc.metric_values(p.request, p.response) == ((RESP_END - REQ_START) / 1e9,)
    miss = parse(b"delete k\r\n", b"NOT_FOUND\r\n", mc)
    desc = mc.describe(miss.request, miss.response, SpanKind.CLIENT, False)
    assert mc.metric_attributes(SpanKind.CLIENT, MC_CONN, desc, None, frozenset()) == (
        DB_CLIENT_METRICS, ("memcached", "delete", None, None, "10.0.0.9", 11211, "NOT_FOUND"))
    closed = parse(b"quit\r\n", None, mc, end=End.CLOSE)
    assert mc.metric_values(closed.request, None) == ((REQ_END - REQ_START) / 1e9,)
