"""Kafka from exchange records: byte-exact requests and responses of every version of Produce,
Fetch and OffsetCommit (built here field by field, and cross-checked with kafka-python's own
encoder), housekeeping, pipelining, bad bytes, description, metrics, and the tracker's view."""

from __future__ import annotations

import random
import struct
import uuid

import pytest
from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.consumer.group import OffsetCommitRequest, OffsetCommitResponse
from kafka.protocol.producer import ProduceRequest, ProduceResponse

from beyla_sidecar.bpf.events import ConnTuple, End, EventType, ExchangeRecord, Role
from beyla_sidecar.export.prometheus import metric_name
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import Parsed, SpanDescription, SpanKind
from beyla_sidecar.protocols.instruments import DURATION_BOUNDS, MESSAGING_CLIENT_METRICS
from beyla_sidecar.protocols.kafka import (
    KNOWN_VERSIONS, Kafka, KafkaRequest, KafkaResponse, RequestShape, ResponseShape, error_name,
)
from beyla_sidecar.tracker.connections import Tracker
from beyla_sidecar.tracker.exchange import Exchange

from ..tracker.records import conn_event

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 256  # BEYLA_RESPONSE_CAPTURE_SIZE default
REQ_START, REQ_END, RESP_START, RESP_END = 1_000, 2_000, 3_000, 5_003_000
SOCK = 0xFFFF0002
KAFKA_CONN = ConnTuple("10.0.0.1", 50000, "10.0.0.7", 9092)
CORRELATION = 0x01020304
TOPIC_ID = uuid.UUID("6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b")

# --- the wire format, field by field --------------------------------------------------------------


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def uvarint(v: int) -> bytes:
    out = b""
    while v >= 0x80:
        out += bytes((v & 0x7F | 0x80,))
        v >>= 7
    return out + bytes((v,))


def string(s: str | None, flexible: bool) -> bytes:
    """A (nullable) string: int16 length, or in flexible versions unsigned varint length + 1."""
    if s is None:
        return b"\x00" if flexible else i16(-1)
    raw = s.encode()
    return (uvarint(len(raw) + 1) if flexible else i16(len(raw))) + raw


def data(b: bytes | None, flexible: bool) -> bytes:
    """A (nullable) byte array: int32 length, or unsigned varint length + 1."""
    if b is None:
        return b"\x00" if flexible else i32(-1)
    return (uvarint(len(b) + 1) if flexible else i32(len(b))) + b


def array(items: list[bytes] | None, flexible: bool) -> bytes:
    if items is None:
        return b"\x00" if flexible else i32(-1)
    return (uvarint(len(items) + 1) if flexible else i32(len(items))) + b"".join(items)


def tags(flexible: bool, fields: dict[int, bytes] | None = None) -> bytes:
    if not flexible:
        return b""
    fields = fields or {}
    return uvarint(len(fields)) + b"".join(uvarint(t) + uvarint(len(v)) + v for t, v in sorted(fields.items()))


def topic(name: str, by_id: bool, flexible: bool) -> bytes:
    return TOPIC_ID.bytes if by_id else string(name, flexible)


def request(key: int, version: int, body: bytes, client_id: str | None = "app-1", flexible: bool = False,
            correlation: int = CORRELATION, header_tags: dict[int, bytes] | None = None) -> bytes:
    """A framed request: size, header v1 (v2 in flexible versions: the client id stays an int16
    string, tagged fields follow), body."""
    header = i16(key) + i16(version) + i32(correlation) + string(client_id, False) + tags(flexible, header_tags)
    return i32(len(header) + len(body)) + header + body


def response(body: bytes, flexible: bool = False, correlation: int = CORRELATION,
             header_tags: dict[int, bytes] | None = None) -> bytes:
    """A framed response: size, correlation id, tagged fields in flexible versions, body."""
    header = i32(correlation) + tags(flexible, header_tags)
    return i32(len(header) + len(body)) + header + body


def batch(records: int, payload: int = 10) -> bytes:
    """A v2 record batch holding `records` records of `payload` bytes each (the CRC is not
    checked by the sidecar: zero here)."""
    def varint(v: int) -> bytes:  # zigzag
        return uvarint((v << 1) ^ (v >> 63))

    def one(i: int) -> bytes:  # attributes, timestamp delta, offset delta, null key, value, no headers
        rec = b"\x00" + varint(0) + varint(i) + varint(-1) + varint(payload) + b"v" * payload + varint(0)
        return varint(len(rec)) + rec

    body = b"".join(one(i) for i in range(records))
    after_length = (i32(0) + b"\x02" + i32(0) + i16(0) + i32(records - 1) + i64(0) + i64(0) + i64(-1) + i16(-1)
                    + i32(-1) + i32(records) + body)
    return i64(0) + i32(len(after_length)) + after_length


Partitions = list[tuple[int, bytes | None]]


def produce(version: int, topics: list[tuple[str, Partitions]], acks: int = 1, client_id: str | None = "app-1",
            transactional_id: str | None = None, correlation: int = CORRELATION) -> bytes:
    f = version >= 9
    body = (string(transactional_id, f) if version >= 3 else b"") + i16(acks) + i32(30000)
    body += array([topic(name, version >= 13, f)
                   + array([i32(index) + data(records, f) + tags(f) for index, records in parts], f) + tags(f)
                   for name, parts in topics], f) + tags(f)
    return request(0, version, body, client_id, f, correlation)


def produce_response(version: int, topics: list[tuple[str, list[tuple[int, int]]]],
                     correlation: int = CORRELATION) -> bytes:
    f = version >= 9
    parts = [[i32(index) + i16(error) + i64(41) + (i64(-1) if version >= 2 else b"")
              + (i64(0) if version >= 5 else b"")
              + (array([i32(0) + string("record 0 is bad", f) + tags(f)], f) + string("bad batch", f)
                 if version >= 8 else b"")
              + tags(f, {0: i32(1) + i32(7) + tags(f)} if version >= 10 and error else None)  # current leader
              for index, error in partitions] for _, partitions in topics]
    body = array([topic(name, version >= 13, f) + array(p, f) + tags(f) for (name, _), p in zip(topics, parts)], f)
    body += (i32(0) if version >= 1 else b"") + tags(f)
    return response(body, f, correlation, {3: b"\x00"} if f else None)  # an unknown header tag, skipped


def fetch(version: int, topics: list[tuple[str, list[int]]], client_id: str | None = "consumer-1",
          correlation: int = CORRELATION) -> bytes:
    f = version >= 12
    body = (i32(-1) if version <= 14 else b"") + i32(500) + i32(1) + (i32(52428800) if version >= 3 else b"")
    body += (i8(0) if version >= 4 else b"") + (i32(0) + i32(-1) if version >= 7 else b"")
    body += array([topic(name, version >= 13, f) + array([
        i32(p) + (i32(-1) if version >= 9 else b"") + i64(100) + (i32(-1) if version >= 12 else b"")
        + (i64(-1) if version >= 5 else b"") + i32(1048576) + tags(f) for p in parts], f) + tags(f)
        for name, parts in topics], f)
    body += (array([], f) if version >= 7 else b"") + (string("", f) if version >= 11 else b"")
    body += tags(f, {1: i32(-1) + i64(-1)} if version >= 15 else None)  # the replica state, tagged from 15
    return request(1, version, body, client_id, f, correlation)


def fetch_response(version: int, topics: list[tuple[str, list[tuple[int, int, bytes | None]]]], error: int = 0,
                   correlation: int = CORRELATION) -> bytes:
    f = version >= 12
    body = (i32(0) if version >= 1 else b"") + (i16(error) + i32(0) if version >= 7 else b"")
    body += array([topic(name, version >= 13, f) + array([
        i32(index) + i16(err) + i64(200) + (i64(200) if version >= 4 else b"") + (i64(0) if version >= 5 else b"")
        + (array([i64(9) + i64(3) + tags(f)], f) if version >= 4 else b"")  # one aborted transaction
        + (i32(-1) if version >= 11 else b"") + data(records, f) + tags(f)
        for index, err, records in parts], f) + tags(f) for name, parts in topics], f)
    return response(body + tags(f), f, correlation)


def offset_commit(version: int, group: str, topics: list[tuple[str, list[int]]], client_id: str = "consumer-1",
                  correlation: int = CORRELATION) -> bytes:
    f = version >= 8
    body = string(group, f) + (i32(-1) + string("", f) if version >= 1 else b"")
    body += (string(None, f) if version >= 7 else b"") + (i64(-1) if 2 <= version <= 4 else b"")
    body += array([topic(name, version >= 10, f) + array([
        i32(p) + i64(12) + (i32(-1) if version >= 6 else b"") + (i64(-1) if version == 1 else b"")
        + string(None, f) + tags(f) for p in parts], f) + tags(f) for name, parts in topics], f)
    return request(8, version, body + tags(f), client_id, f, correlation)


def offset_commit_response(version: int, topics: list[tuple[str, list[tuple[int, int]]]],
                           correlation: int = CORRELATION) -> bytes:
    f = version >= 8
    body = (i32(0) if version >= 3 else b"") + array([topic(name, version >= 10, f) + array(
        [i32(p) + i16(err) + tags(f) for p, err in parts], f) + tags(f) for name, parts in topics], f)
    return response(body + tags(f), f, correlation)


# --- records -----------------------------------------------------------------------------------------


def record(req: bytes, resp: bytes | None = b"", *, sock: int = SOCK, role: Role = Role.CLIENT,
           end: End = End.NEXT_REQUEST, req_prefix: int = REQ_PREFIX, resp_prefix: int = RESP_PREFIX,
           req_bytes: int | None = None) -> ExchangeRecord:
    """The record the kernel sends for one exchange with these wire bytes (response None: the
    connection closed first): prefixes cut at the capture sizes, exact byte counts."""
    r = b"" if resp is None else resp
    return ExchangeRecord(
        sock_id=sock, pid=1000, ns_pid=7, tid=1001, role=role, end=end, flags=0,
        req_start_ns=REQ_START, req_end_ns=REQ_END,
        resp_start_ns=0 if resp is None else RESP_START, resp_end_ns=0 if resp is None else RESP_END,
        req_bytes=len(req) if req_bytes is None else req_bytes, resp_bytes=len(r), parent=None, req_head=0,
        resp_head=0, request=req[:req_prefix], response=r[:resp_prefix], traceparent=b"")


def parse(req: bytes, resp: bytes | None, **kw: object) -> Parsed:
    parsed = Kafka().parse(record(req, resp, **kw))  # type: ignore[arg-type]
    assert parsed is not None
    return parsed


def describe(req: bytes, resp: bytes | None, kind: SpanKind = SpanKind.CLIENT, **kw: object) -> SpanDescription:
    p = parse(req, resp, **kw)
    assert not p.housekeeping and not p.pipelined
    return Kafka().describe(p.request, p.response, kind, False)


def span(desc: SpanDescription) -> tuple[str, dict[str, object], str | None]:
    attrs: dict[str, object] = dict(desc.attributes)
    return desc.name, attrs, desc.error_type


def send_attrs(topic_: str | None = "orders", partition: str | None = "0", client: str | None = "app-1",
               count: int | None = None) -> dict[str, object]:
    attrs: dict[str, object] = {"messaging.system": "kafka", "messaging.operation.name": "send",
                                "messaging.operation.type": "send"}
    if topic_ is not None:
        attrs["messaging.destination.name"] = topic_
    if partition is not None:
        attrs["messaging.destination.partition.id"] = partition
    if client is not None:
        attrs["messaging.client.id"] = client
    if count is not None:
        attrs["messaging.batch.message_count"] = count
    return attrs


def poll_attrs(topic_: str | None = "orders", partition: str | None = "0", client: str = "consumer-1",
               ) -> dict[str, object]:
    return send_attrs(topic_, partition, client) | {"messaging.operation.name": "poll",
                                                    "messaging.operation.type": "receive"}


# --- registration and detection ----------------------------------------------------------------------


def test_registered() -> None:
    assert "kafka" in [p.name for p in all_protocols()]
    assert sum(isinstance(p, Kafka) for p in all_protocols()) == 1


API_VERSIONS_V3 = request(18, 3, string("kafka-python", True) + string("3.0", True) + tags(True), "app-1", True, 1)
API_VERSIONS_ANSWER = response(i16(0) + array([i16(0) + i16(0) + i16(9) + tags(True)], True) + i32(0)
                               + tags(True), False, 1)  # ApiVersions answers with a v0 header


def test_detects_a_first_exchange_with_matching_correlation_ids() -> None:
    kafka = Kafka()
    assert kafka.detect(API_VERSIONS_V3, API_VERSIONS_ANSWER)
    metadata = request(3, 1, array([string("orders", False)], False), "app-1", correlation=2)
    assert kafka.detect(metadata, response(i32(0), correlation=2))
    big = produce(7, [("orders", [(0, batch(20, 100))])])  # larger than the prefix
    assert len(big) > REQ_PREFIX and kafka.detect(big[:REQ_PREFIX], produce_response(7, [("orders", [(0, 0)])]))


@pytest.mark.parametrize("req, resp", [
    (API_VERSIONS_V3, response(i16(0), correlation=2)),  # another correlation id
    (API_VERSIONS_V3, b""),  # no answer yet: too little to tell
    (API_VERSIONS_V3, API_VERSIONS_ANSWER[:7]),
    (API_VERSIONS_V3 + API_VERSIONS_V3, API_VERSIONS_ANSWER),  # two requests: not on a first look
    (API_VERSIONS_V3 + b"\x00", API_VERSIONS_ANSWER),  # longer than it says
    (request(93, 0, b"", correlation=1), API_VERSIONS_ANSWER),  # no such API key
    (request(0, 18, b"", correlation=1), API_VERSIONS_ANSWER),  # a version far beyond Kafka's
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
    (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, b"\x16\x03\x03\x00\x7a\x02"),
    # a PostgreSQL startup message reads as Metadata v0: its answer carries no matching id
    (i32(41) + i32(196608) + b"user\x00postgres\x00database\x00db\x00\x00\x00"[:33],
     b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
])
def test_does_not_detect_other_bytes(req: bytes, resp: bytes) -> None:
    assert not Kafka().detect(req, resp)


# --- Produce ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(13))
def test_produce_every_version_with_topic_names(version: int) -> None:
    req = produce(version, [("orders", [(0, batch(1))])])
    resp = produce_response(version, [("orders", [(0, 0)])])
    assert span(describe(req, resp)) == ("send orders", send_attrs(), None)
    failed = produce_response(version, [("orders", [(0, 3)])])
    assert span(describe(req, failed)) == ("send orders", send_attrs(), "UNKNOWN_TOPIC_OR_PARTITION")


def test_produce_by_topic_id_has_no_destination() -> None:
    req = produce(13, [("", [(2, batch(3))])])
    resp = produce_response(13, [("", [(2, 56)])])
    assert span(describe(req, resp)) == ("send", send_attrs(None, None, count=3),
                                         "KAFKA_STORAGE_ERROR")


@pytest.mark.parametrize("version", [3, 7, 9, 12])
def test_produce_counts_records_of_every_batch_in_the_prefix(version: int) -> None:
    one_topic = produce(version, [("orders", [(0, batch(3, 1)), (1, batch(2, 1))])])
    assert len(one_topic) < REQ_PREFIX
    assert span(describe(one_topic, produce_response(version, [("orders", [(0, 0), (1, 0)])]))) == (
        "send orders", send_attrs(partition=None, count=5), None)
    two_batches = produce(version, [("orders", [(0, batch(2, 1) + batch(4, 1))])])
    assert describe(two_batches, produce_response(version, [("orders", [(0, 0)])])).attributes == \
        send_attrs(count=6)
    two_topics = produce(version, [("orders", [(0, batch(2, 1))]), ("audit", [(0, batch(1, 1))])])
    assert span(describe(two_topics, produce_response(version, [("orders", [(0, 0)]), ("audit", [(0, 0)])]))) == (
        "send", send_attrs(None, None, count=3), None)


def test_produce_batch_count_only_when_every_batch_is_seen_and_more_than_one() -> None:
    ok = produce_response(7, [("orders", [(0, 0)])])
    past_prefix = produce(7, [("orders", [(0, batch(2, 200)), (1, batch(1))])])  # the second header is cut
    assert span(describe(past_prefix, ok)) == ("send orders", send_attrs(partition=None), None)
    large = produce(7, [("orders", [(0, batch(5, 1000))])])  # its one header is in the prefix
    assert describe(large, ok).attributes["messaging.batch.message_count"] == 5
    legacy = i64(0) + i32(14) + i32(0) + b"\x01\x00" + i64(0)  # a magic 1 message: a legacy message set
    assert "messaging.batch.message_count" not in describe(produce(2, [("orders", [(0, legacy)])]), ok).attributes
    assert describe(produce(7, [("orders", [(0, None)])]), ok).attributes == send_attrs()  # null records


def test_produce_error_is_the_first_non_zero_partition_error() -> None:
    req = produce(9, [("orders", [(0, batch(1)), (1, batch(1))]), ("audit", [(0, batch(1))])])
    resp = produce_response(9, [("orders", [(0, 0), (1, 0)]), ("audit", [(0, 29)])])
    assert describe(req, resp).error_type == "TOPIC_AUTHORIZATION_FAILED"
    resp = produce_response(9, [("orders", [(0, 0), (1, 87)]), ("audit", [(0, 29)])])
    assert describe(req, resp).error_type == "INVALID_RECORD"
    assert describe(req, produce_response(9, [("orders", [(0, 200)])])).error_type == "200"  # unknown code
    assert describe(req, produce_response(9, [("orders", [(0, -1)])])).error_type == "UNKNOWN_SERVER_ERROR"


def test_produce_error_past_the_response_prefix_is_not_seen() -> None:
    many = [(f"topic-{i:03d}", [(0, 0)]) for i in range(20)] + [("last", [(0, 3)])]
    resp = produce_response(7, many)
    assert len(resp) > RESP_PREFIX
    assert describe(produce(7, [("orders", [(0, batch(1))])]), resp).error_type is None


def test_produce_acks_zero_expects_no_answer() -> None:
    req = produce(7, [("orders", [(0, batch(1))])], acks=0)
    assert describe(req, None, end=End.CLOSE).error_type is None
    assert describe(produce(7, [("orders", [(0, batch(1))])]), None, end=End.CLOSE).error_type == "incomplete"


def test_client_ids() -> None:
    ok = produce_response(7, [("orders", [(0, 0)])])
    assert "messaging.client.id" not in describe(produce(7, [("orders", [(0, None)])], client_id=None), ok).attributes
    assert "messaging.client.id" not in describe(produce(7, [("orders", [(0, None)])], client_id=""), ok).attributes
    unicode = describe(produce(7, [("orders", [(0, None)])], client_id="prod-é"), ok)
    assert unicode.attributes["messaging.client.id"] == "prod-é"
    # a client id filling the prefix: no topic known, still a send
    long_id = produce(7, [("orders", [(0, None)])], client_id="c" * 300)
    assert span(describe(long_id, ok)) == ("send", send_attrs(None, None, None), None)


def test_long_names_take_multi_byte_varints_in_flexible_versions() -> None:
    name = "t" * 200  # a compact string length of two bytes
    req = produce(9, [(name, [(0, batch(1))])])
    assert span(describe(req, produce_response(9, [(name, [(0, 3)])]))) == (
        f"send {name}", send_attrs(name), "UNKNOWN_TOPIC_OR_PARTITION")
    too_long = produce(9, [("t" * 250, [(0, None)])])  # past Kafka's 249 characters: no topic name
    assert Kafka().parse(record(too_long, produce_response(9, []), req_prefix=512)) is None
    assert describe(too_long, produce_response(9, [])).name == "send"  # cut by the prefix: unknown


def test_transactional_produce() -> None:
    req = produce(9, [("orders", [(0, batch(2))])], transactional_id="tx-1")
    assert describe(req, produce_response(9, [("orders", [(0, 0)])])).attributes == send_attrs(
        count=2)


# --- Fetch --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(19))
def test_fetch_every_version(version: int) -> None:
    req = fetch(version, [("orders", [0])])
    resp = fetch_response(version, [("orders", [(0, 0, batch(2))])])
    name, attrs = ("poll orders", poll_attrs()) if version <= 12 else ("poll", poll_attrs(None, None))
    assert span(describe(req, resp)) == (name, attrs, None)
    failed = fetch_response(version, [("orders", [(0, 1, None)])])
    assert span(describe(req, failed)) == (name, attrs, "OFFSET_OUT_OF_RANGE")


def test_fetch_several_topics_and_partitions() -> None:
    req = fetch(11, [("orders", [0, 1, 2])])
    resp = fetch_response(11, [("orders", [(0, 0, batch(1)), (1, 0, None), (2, 6, None)])])
    assert span(describe(req, resp)) == ("poll orders", poll_attrs(partition=None), "NOT_LEADER_OR_FOLLOWER")
    req = fetch(12, [("orders", [0]), ("audit", [0])])
    assert span(describe(req, fetch_response(12, []))) == ("poll", poll_attrs(None, None), None)


def test_fetch_top_level_error_first() -> None:
    req = fetch(12, [("orders", [0])])
    resp = fetch_response(12, [("orders", [(0, 1, None)])], error=70)
    assert describe(req, resp).error_type == "FETCH_SESSION_ID_NOT_FOUND"


def test_incremental_fetch_takes_its_topic_from_the_response() -> None:
    req = fetch(12, [])  # a fetch session: nothing changed, nothing listed
    assert span(describe(req, fetch_response(12, [("orders", [(3, 0, batch(1))])]))) == (
        "poll orders", poll_attrs(partition="3"), None)
    assert span(describe(req, fetch_response(12, []))) == ("poll", poll_attrs(None, None), None)
    two = fetch_response(12, [("orders", [(3, 0, None)]), ("audit", [(0, 0, None)])])
    assert span(describe(req, two)) == ("poll", poll_attrs(None, None), None)
    # the request's own topic wins
    assert describe(fetch(12, [("audit", [1])]), fetch_response(12, [("orders", [(3, 0, None)])])).name == \
        "poll audit"


@pytest.mark.parametrize("version", [11, 12])
def test_fetch_response_larger_than_its_prefix(version: int) -> None:
    resp = fetch_response(version, [("orders", [(0, 0, batch(50, 500))])])
    rec = record(fetch(version, [("orders", [0])]), resp)
    kafka = Kafka()
    parsed = kafka.parse(rec)
    assert parsed is not None and parsed.response is not None
    assert kafka.describe(parsed.request, parsed.response, SpanKind.CLIENT, False).name == "poll orders"
    assert kafka.finished(rec)
    assert not kafka.finished(rec._replace(resp_bytes=RESP_PREFIX))  # more of its declared size is due
    assert kafka.finished(rec._replace(response=b"\x00\x00"))


# --- OffsetCommit -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(11))
def test_offset_commit_every_version(version: int) -> None:
    req = offset_commit(version, "billing", [("orders", [0])])
    resp = offset_commit_response(version, [("orders", [(0, 0)])])
    attrs = {"messaging.system": "kafka", "messaging.operation.name": "commit", "messaging.operation.type": "settle",
             "messaging.destination.name": "orders", "messaging.destination.partition.id": "0",
             "messaging.consumer.group.name": "billing", "messaging.client.id": "consumer-1"}
    name = "commit orders"
    if version >= 10:  # topics by id
        name = "commit"
        del attrs["messaging.destination.name"], attrs["messaging.destination.partition.id"]
    assert span(describe(req, resp)) == (name, attrs, None)
    failed = offset_commit_response(version, [("orders", [(0, 22)])])
    assert describe(req, failed).error_type == "ILLEGAL_GENERATION"


# --- cross-check with kafka-python's encoder ------------------------------------------------------


def library_frame(message: object, correlation: int = CORRELATION, client_id: str = "lib-client") -> bytes:
    if message.is_request():  # type: ignore[attr-defined]
        message.with_header(correlation, client_id)  # type: ignore[attr-defined]
    else:
        message.with_header(correlation)  # type: ignore[attr-defined]
    return bytes(message.encode(header=True, framed=True))  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", range(ProduceRequest.max_version + 1))
def test_kafka_python_produce(version: int) -> None:
    t, p = ProduceRequest.TopicProduceData, ProduceRequest.TopicProduceData.PartitionProduceData
    req = ProduceRequest(version=version, transactional_id=None, acks=-1, timeout_ms=1000, topic_data=[
        t(version=version, name="orders", topic_id=TOPIC_ID, partition_data=[
            p(version=version, index=4, records=batch(2))])])
    rt, rp = ProduceResponse.TopicProduceResponse, ProduceResponse.TopicProduceResponse.PartitionProduceResponse
    resp = ProduceResponse(version=version, throttle_time_ms=0, responses=[
        rt(version=version, name="orders", topic_id=TOPIC_ID, partition_responses=[
            rp(version=version, index=4, error_code=10, base_offset=0)])])
    named = version < 13
    assert span(describe(library_frame(req), library_frame(resp))) == (
        "send orders" if named else "send",
        send_attrs("orders" if named else None, "4" if named else None, "lib-client",
                   count=2),
        "MESSAGE_TOO_LARGE")


@pytest.mark.parametrize("version", range(FetchRequest.max_version + 1))
def test_kafka_python_fetch(version: int) -> None:
    t, p = FetchRequest.FetchTopic, FetchRequest.FetchTopic.FetchPartition
    req = FetchRequest(version=version, replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=1 << 20,
                       isolation_level=0, session_id=0, session_epoch=-1, forgotten_topics_data=[], rack_id="",
                       topics=[t(version=version, topic="orders", topic_id=TOPIC_ID, partitions=[
                           p(version=version, partition=1, fetch_offset=7, partition_max_bytes=1 << 20)])])
    rt, rp = FetchResponse.FetchableTopicResponse, FetchResponse.FetchableTopicResponse.PartitionData
    resp = FetchResponse(version=version, throttle_time_ms=0, error_code=0, session_id=0, responses=[
        rt(version=version, topic="orders", topic_id=TOPIC_ID, partitions=[
            rp(version=version, partition_index=1, error_code=75, high_watermark=9, aborted_transactions=None,
               records=batch(1))])])
    named = version < 13
    assert span(describe(library_frame(req), library_frame(resp))) == (
        "poll orders" if named else "poll", poll_attrs("orders" if named else None, "1" if named else None,
                                                       "lib-client"), "UNKNOWN_LEADER_EPOCH")


@pytest.mark.parametrize("version", range(OffsetCommitRequest.max_version + 1))
def test_kafka_python_offset_commit(version: int) -> None:
    t = OffsetCommitRequest.OffsetCommitRequestTopic
    p = t.OffsetCommitRequestPartition
    req = OffsetCommitRequest(version=version, group_id="billing", generation_id_or_member_epoch=-1, member_id="",
                              group_instance_id=None, retention_time_ms=-1, topics=[
                                  t(version=version, name="orders", topic_id=TOPIC_ID, partitions=[
                                      p(version=version, partition_index=0, committed_offset=5,
                                        committed_metadata="")])])
    rt = OffsetCommitResponse.OffsetCommitResponseTopic
    resp = OffsetCommitResponse(version=version, throttle_time_ms=0, topics=[
        rt(version=version, name="orders", topic_id=TOPIC_ID, partitions=[
            rt.OffsetCommitResponsePartition(version=version, partition_index=0, error_code=25)])])
    desc = describe(library_frame(req), library_frame(resp))
    assert (desc.name, desc.attributes["messaging.consumer.group.name"], desc.error_type) == (
        "commit orders" if version < 10 else "commit", "billing", "UNKNOWN_MEMBER_ID")


# --- housekeeping, pipelining, correlation ------------------------------------------------------------


@pytest.mark.parametrize("req, resp", [
    (API_VERSIONS_V3, API_VERSIONS_ANSWER),
    (request(3, 12, array([], True) + b"\x01\x00\x00", flexible=True), response(i32(0), True)),  # Metadata
    (request(10, 2, string("group", False) + i8(0)), response(i32(0) + i16(0))),  # FindCoordinator
    (request(12, 4, string("g", True) + i32(1) + string("m", True) + string(None, True) + tags(True), flexible=True),
     response(i32(0) + i16(0) + tags(True), True)),  # Heartbeat
    (request(2, 5, i32(-1) + i8(0) + array([], False)), response(i32(0) + array([], False))),  # ListOffsets
    (request(22, 4, b"\x00" + i32(60000) + i64(-1) + i16(-1) + tags(True), flexible=True), None),  # InitProducerId
])
def test_housekeeping_makes_no_span(req: bytes, resp: bytes | None) -> None:
    parsed = parse(req, resp, end=End.CLOSE)
    assert parsed.housekeeping and not parsed.pipelined
    request = parsed.request
    assert isinstance(request, KafkaRequest)
    assert (request.api_key, request.api_version, request.correlation_id) == struct.unpack_from(">hhi", req, 4)


def test_housekeeping_is_counted_by_the_tracker_with_no_exchange() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, KAFKA_CONN))
    t.exchange(record(API_VERSIONS_V3, API_VERSIONS_ANSWER, sock=1))
    t.exchange(record(request(3, 1, array([], False), correlation=2), response(i32(0), correlation=2), sock=1))
    t.exchange(record(produce(7, [("orders", [(0, batch(1))])], correlation=3),
                      produce_response(7, [("orders", [(0, 0)])], correlation=3), sock=1))
    assert [(e.kind, cast_shape(e).operation, cast_shape(e).topic) for e in out] == [
        (SpanKind.CLIENT, "send", "orders")]
    assert t.stats.housekeeping == 2 and t.stats.parse_failures == {} and t.stats.pipelined == {}


def cast_shape(e: Exchange) -> RequestShape:
    assert isinstance(e.request.shape, RequestShape)
    return e.request.shape


def test_several_requests_in_one_record_are_pipelined() -> None:
    first = produce(7, [("orders", [(0, batch(1))])], correlation=5)
    second = produce(7, [("orders", [(0, batch(1))])], correlation=6)
    answers = produce_response(7, [("orders", [(0, 0)])], correlation=5) + \
        produce_response(7, [("orders", [(0, 0)])], correlation=6)
    assert parse(first + second, answers).pipelined
    # acks=0 requests are never answered: they pile up before the next answered one
    quiet = produce(7, [("orders", [(0, batch(1))])], acks=0, correlation=7)
    meta = request(3, 1, array([], False), correlation=8)
    assert parse(quiet + meta, response(i32(0), correlation=8)).pipelined  # the answer is the second's
    assert parse(quiet + quiet, None, end=End.CLOSE).pipelined
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, KAFKA_CONN))
    t.exchange(record(API_VERSIONS_V3, API_VERSIONS_ANSWER, sock=1))
    t.exchange(record(first + second, answers, sock=1))
    assert out == [] and t.stats.pipelined == {"kafka": 1}


def test_an_answer_to_another_request_is_a_parse_failure() -> None:
    req = produce(7, [("orders", [(0, batch(1))])], correlation=9)
    assert Kafka().parse(record(req, produce_response(7, [("orders", [(0, 0)])], correlation=8))) is None
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, KAFKA_CONN))
    t.exchange(record(API_VERSIONS_V3, API_VERSIONS_ANSWER, sock=1))
    t.exchange(record(req, produce_response(7, [("orders", [(0, 0)])], correlation=8), sock=1))
    assert out == [] and t.stats.parse_failures == {"kafka": 1}


def test_a_request_shorter_than_it_declares_is_not_kafka() -> None:
    req = produce(7, [("orders", [(0, batch(1))])])
    assert Kafka().parse(record(req, produce_response(7, [("orders", [(0, 0)])]), req_bytes=len(req) - 1)) is None


# --- server side, description and metrics -------------------------------------------------------------


def test_broker_side_spans_are_described_alike_and_record_no_metric() -> None:
    kafka = Kafka()
    p = parse(produce(9, [("orders", [(0, batch(1))])]), produce_response(9, [("orders", [(0, 0)])]),
              role=Role.SERVER)
    desc = kafka.describe(p.request, p.response, SpanKind.SERVER, False)
    assert span(desc) == ("send orders", send_attrs(), None)
    assert kafka.instruments(SpanKind.SERVER) is None
    assert kafka.metric_attributes(SpanKind.SERVER, KAFKA_CONN, desc, None, frozenset()) is None


def test_metric_instruments() -> None:
    kafka = Kafka()
    assert kafka.instruments(SpanKind.CLIENT) is MESSAGING_CLIENT_METRICS
    [duration] = MESSAGING_CLIENT_METRICS.instruments
    assert (duration.name, duration.unit, duration.bounds) == (
        "messaging.client.operation.duration", "s",
        (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10))
    assert duration.bounds == DURATION_BOUNDS
    assert metric_name(duration.name, duration.unit) == "messaging_client_operation_duration_seconds"
    assert MESSAGING_CLIENT_METRICS.attributes == (
        "messaging.system", "messaging.operation.name", "messaging.operation.type", "messaging.destination.name",
        "messaging.consumer.group.name", "error.type", "server.address", "server.port")


def test_metric_attributes_and_values() -> None:
    kafka = Kafka()
    p = parse(produce(9, [("orders", [(0, batch(1))])]), produce_response(9, [("orders", [(0, 3)])]))
    desc = kafka.describe(p.request, p.response, SpanKind.CLIENT, False)
    assert kafka.metric_attributes(SpanKind.CLIENT, KAFKA_CONN, desc, None, frozenset()) == (
        MESSAGING_CLIENT_METRICS, ("kafka", "send", "send", "orders", None, "UNKNOWN_TOPIC_OR_PARTITION",
                                   "10.0.0.7", 9092))
    assert kafka.metric_values(p.request, p.response) == ((RESP_END - REQ_START) / 1e9,)
    c = parse(offset_commit(8, "billing", [("orders", [0]), ("audit", [0])]),
              offset_commit_response(8, [("orders", [(0, 0)]), ("audit", [(0, 0)])]))
    desc = kafka.describe(c.request, c.response, SpanKind.CLIENT, False)
    assert kafka.metric_attributes(SpanKind.CLIENT, ConnTuple("", 0, "", 0), desc, None, frozenset()) == (
        MESSAGING_CLIENT_METRICS, ("kafka", "commit", "settle", None, "billing", None, None, None))
    closed = parse(fetch(11, [("orders", [0])]), None, end=End.CLOSE)
    assert kafka.metric_values(closed.request, None) == ((REQ_END - REQ_START) / 1e9,)


def test_repeated_exchanges_share_a_shape() -> None:
    a = parse(produce(9, [("orders", [(0, batch(1))])], correlation=1),
              produce_response(9, [("orders", [(0, 0)])], correlation=1))
    b = parse(produce(9, [("orders", [(0, batch(1, 50))])], correlation=2),
              produce_response(9, [("orders", [(0, 0)])], correlation=2))
    assert a.request.shape == b.request.shape and hash(a.request.shape) == hash(b.request.shape)
    assert a.response is not None and b.response is not None and a.response.shape == b.response.shape


def test_describe_reads_only_the_shapes() -> None:
    req = KafkaRequest(True, 0, 0, shape=RequestShape("send", 1, "orders", 2, "app", 4, None, True))
    resp = KafkaResponse(False, 0, 0, shape=ResponseShape("NOT_ENOUGH_REPLICAS", None, None))
    assert span(Kafka().describe(req, resp, SpanKind.CLIENT, False)) == (
        "send orders", send_attrs(partition="2", client="app", count=4),
        "NOT_ENOUGH_REPLICAS")


def test_error_names() -> None:
    assert [error_name(c) for c in (-1, 3, 6, 56, 127, 128, -2)] == [
        "UNKNOWN_SERVER_ERROR", "UNKNOWN_TOPIC_OR_PARTITION", "NOT_LEADER_OR_FOLLOWER", "KAFKA_STORAGE_ERROR",
        "VOTER_NOT_FOUND", "128", "-2"]


def test_newer_versions_than_known_keep_their_operation() -> None:
    version = KNOWN_VERSIONS[0] + 1
    req = request(0, version, b"\xff" * 20, "app-1", True)
    assert span(describe(req, response(b"\xff" * 10, True))) == ("send", send_attrs(None, None), None)
    req = request(0, version, b"\xff" * 20, "", True)
    assert span(describe(req, response(b"\xff" * 10, True))) == ("send", send_attrs(None, None, None), None)


# --- bad bytes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("req", [
    b"", b"\x00\x00\x00\x0a", b"\x00" * 13,
    request(0, 7, b"\x00" * 8 + i32(1) + string("bad topic!", False)),  # not a topic name
    request(0, 7, b"\x00" * 8 + i32(1) + string("", False)),
    request(0, 7, b"\x00" * 8 + i32(1) + i16(20000)),  # longer than the request
    request(0, 7, b"\x00" * 8 + i32(-5)),  # a negative count
    request(1, 12, i32(-1) + i32(1) + i32(1) + i32(1) + i8(0) + i32(0) + i32(0) + b"\xff" * 6, flexible=True),
    request(8, 8, b"\xff\xff\xff\xff\xff\xff", flexible=True),  # a varint longer than five bytes
    i32(-1) + i16(0) + i16(0) + i32(CORRELATION) + i16(-1),
])
def test_request_that_is_not_kafka(req: bytes) -> None:
    assert Kafka().parse(record(req, response(i32(0)))) is None


@pytest.mark.parametrize("resp", [b"", b"\x00\x00\x00\x08\x01\x02", i32(2) + i32(CORRELATION),
                                  response(i32(5) + string("bad topic!", False))])
def test_response_that_is_not_kafka(resp: bytes) -> None:
    assert Kafka().parse(record(produce(7, [("orders", [(0, batch(1))])]), resp)) is None


def test_garbage_is_a_counted_parse_failure() -> None:
    out: list[Exchange] = []
    t = Tracker(all_protocols(), out.append)
    t.handle(conn_event(EventType.CONN_OPEN, 1, Role.CLIENT, KAFKA_CONN))
    t.exchange(record(API_VERSIONS_V3, API_VERSIONS_ANSWER, sock=1))
    t.exchange(record(b"\x16\x03\x01garbage!!!!!!!", b"\x00" * 8, sock=1))
    t.exchange(record(fetch(11, [("orders", [0])]), b"\x00\x00garbage", sock=1))
    t.exchange(record(fetch(11, [("orders", [0])]), fetch_response(11, [("orders", [(0, 0, None)])]), sock=1))
    assert [cast_shape(e).operation for e in out] == ["poll"]
    assert t.stats.parse_failures == {"kafka": 2}


CORPUS = [
    (produce(7, [("orders", [(0, batch(2)), (1, batch(1))]), ("audit", [(0, batch(1))])]),
     produce_response(7, [("orders", [(0, 0), (1, 0)]), ("audit", [(0, 3)])])),
    (produce(9, [("orders", [(0, batch(2))])], transactional_id="tx"), produce_response(10, [("orders", [(0, 3)])])),
    (produce(13, [("", [(0, batch(1))])]), produce_response(13, [("", [(0, 3)])])),
    (fetch(11, [("orders", [0, 1])]), fetch_response(11, [("orders", [(0, 0, batch(1)), (1, 6, None)])])),
    (fetch(12, []), fetch_response(12, [("orders", [(0, 1, None)])], error=0)),
    (fetch(17, [("", [0])]), fetch_response(17, [("", [(0, 1, None)])])),
    (offset_commit(9, "billing", [("orders", [0, 1])]), offset_commit_response(9, [("orders", [(0, 0), (1, 27)])])),
    (API_VERSIONS_V3, API_VERSIONS_ANSWER),
]


def test_every_truncation_of_valid_bytes_parses_or_fails_cleanly() -> None:
    kafka = Kafka()
    for req, resp in CORPUS:
        for cut in range(len(req) + 1):
            rec = record(req, resp, req_prefix=cut)
            parsed = kafka.parse(rec)
            if cut >= 14:  # a request header is all it takes
                assert parsed is not None, (req, cut)
                if not parsed.housekeeping:
                    kafka.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
            kafka.finished(rec)
        for cut in range(len(resp) + 1):
            rec = record(req, resp, resp_prefix=cut)
            parsed = kafka.parse(rec)
            if cut >= 8:
                assert parsed is not None, (resp, cut)
                if not parsed.housekeeping:
                    kafka.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)
            kafka.finished(rec)


def test_fuzz_random_bytes_never_raise() -> None:
    rng = random.Random(13)
    kafka = Kafka()
    for _ in range(3000):
        base_req, base_resp = rng.choice(CORPUS)
        req = bytearray(base_req)
        resp = bytearray(base_resp)
        for buf in (req, resp):
            for _ in range(rng.randrange(1, 6)):
                if buf:
                    buf[rng.randrange(len(buf))] = rng.randrange(256)
        if rng.random() < 0.2:
            req = bytearray(rng.randbytes(rng.randrange(0, 80)))
        rec = record(bytes(req), bytes(resp), req_bytes=len(req) + rng.choice((0, 0, 0, 9, 1000)))
        kafka.detect(rec.request, rec.response)
        parsed = kafka.parse(rec)
        kafka.finished(rec)
        if parsed is not None and not parsed.housekeeping and not parsed.pipelined:
            kafka.describe(parsed.request, parsed.response, SpanKind.CLIENT, False)


def test_each_protocol_detects_only_its_own_first_exchanges() -> None:
    protocols = all_protocols()
    api_versions_v4 = request(18, 4, string("kafka-python", True) + string("3.0", True) + tags(True), "app-1", True, 0)
    unsupported = response(i16(35) + array([i16(18) + i16(0) + i16(3)], False), False, 0)  # a v0 answer
    for req, resp, name in ((b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", "http"),
                            (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", "redis"),
                            (API_VERSIONS_V3, API_VERSIONS_ANSWER, "kafka"),
                            (api_versions_v4, unsupported, "kafka"),
                            (request(3, 8, array(None, False) + b"\x01\x00\x00", correlation=0),
                             response(i32(0) + array([], False), correlation=0), "kafka"),
                            (produce(7, [("orders", [(0, batch(1))])]), produce_response(7, [("orders", [(0, 0)])]),
                             "kafka"),
                            (fetch(12, [("orders", [0])]), fetch_response(12, [("orders", [(0, 0, None)])]), "kafka")):
        assert [p.name for p in protocols if p.detect(req, resp)] == [name]
