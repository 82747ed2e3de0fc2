"""Kafka (the Apache Kafka wire protocol over TCP) from exchange records.

Every request is `int32 size, int16 api_key, int16 api_version, int32 correlation_id, nullable
string client_id`, then (in the API's flexible versions) tagged fields, then its body; every
response `int32 size, int32 correlation_id`, tagged fields in flexible versions (never for
ApiVersions), then its body. A connection is recognised from its first exchange, never by port:
a request header of a known API key and version whose declared size is what the prefix holds
(or more, when the request is larger than the prefix), answered by a response carrying the same
correlation id. In an exchange of one request the response's correlation id must be the
request's: an answer to another request (the sidecar joined a connection with requests in flight)
is no answer to this one, and the record counts as a parse failure.

Spans follow the OpenTelemetry messaging semantic conventions (v1.27 and later: the Kafka page's
`send`, `poll` and `commit` spans; messaging is still Development) for the APIs that move or
settle messages, named `{messaging.operation.name} {topic}`, or the operation alone when the
request names several topics, none, or topics by id:

- Produce (api 0, versions 0-13): `send <topic>`, `messaging.operation.type=send`, and
  `messaging.batch.message_count` when the request carries more than one record (the conventions
  leave it out for one) and the request prefix shows every record batch header (magic 2 batches;
  legacy message sets are not counted). A Produce with acks=0 gets no answer, and is no error then.
- Fetch (api 1, versions 0-18): `poll <topic>`, `messaging.operation.type=receive`. An
  incremental fetch (fetch sessions, version 7+) lists only what changed, often nothing: the
  topic then comes from the response when it names exactly one. No message count: the records
  received lie mostly past the response prefix.
- OffsetCommit (api 8, versions 0-10): `commit <topic>`, `messaging.operation.type=settle`,
  `messaging.consumer.group.name` = the group id, as the Kafka page's commit span.

All three: `messaging.system=kafka`, `messaging.operation.name`, `messaging.destination.name`
(one topic), `messaging.destination.partition.id` (one partition of one topic),
`messaging.client.id` (the header's client id), and `error.type` = the Kafka error name
(`UNKNOWN_TOPIC_OR_PARTITION`, the decimal code when unknown) of the first non-zero error code in
the response prefix (Fetch: its top-level one first), `incomplete` when the connection closed
before an awaited answer. Topics by id (Produce 13+, Fetch 13+, OffsetCommit 10+) give no
destination name: the id-to-name map is in Metadata responses the prefix rarely holds. Bodies
of versions newer than KNOWN_VERSIONS knows are not read (operation and client id only).

The conventions' span kinds are PRODUCER for send and CLIENT for poll and commit; a client's end
gets CLIENT spans here (the tracker's kinds are CLIENT and SERVER), and a broker in the pod gets
SERVER spans, named and described alike.

Every other API (Metadata, ApiVersions, FindCoordinator, ListOffsets, OffsetFetch, group
membership and heartbeats, transactions, SASL, admin calls) is the client's housekeeping: no
span, no metric, not a failure (`Parsed.housekeeping`). SASL v0 sends its tokens without Kafka
framing: those exchanges count as parse failures.

Several requests in one record (written before the first answer: a client with several requests
in flight, e.g. a Java producer's default max.in.flight.requests.per.connection=5 under load, or
acks=0 producers, which are never answered) have one pair of times for all: no span, counted as
pipelined (`Parsed.pipelined`). Request and response are always in one record, so nothing is kept
per connection.

Metric: `messaging.client.operation.duration` (seconds, the conventions' buckets 5 ms ... 10 s)
for CLIENT exchanges, with `messaging.system`, `messaging.operation.name`,
`messaging.operation.type`, `messaging.destination.name`, `messaging.consumer.group.name`,
`error.type`, `server.address`, `server.port` (no partition: one series per partition would
multiply them). A broker's side records none: the conventions define no broker metric. The
conventions' message counters (`messaging.client.sent.messages`, `...consumed.messages`) are not
recorded: the records of a request are mostly past its prefix.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import NamedTuple, cast

from ..bpf.events import ConnTuple, ExchangeRecord
from .base import Message, Parsed, Protocol, SpanDescription, SpanKind
from .instruments import MESSAGING_CLIENT_METRICS, AttributeValue, InstrumentSet, duration

PRODUCE, FETCH, OFFSET_COMMIT = 0, 1, 8
# The highest version of each API key (the index) in Kafka 4.1.
KNOWN_VERSIONS = (
    13, 18, 11, 13, 7, 4, 8, 3, 10, 10, 6, 9, 4, 5, 5, 6, 5, 1, 4, 7,  # 0-19
    6, 2, 6, 4, 5, 4, 5, 2, 5, 3, 3, 3, 4, 2, 2, 5, 2, 3, 3, 2,  # 20-39
    2, 3, 2, 2, 1, 1, 0, 0, 1, 1, 0, 0, 2, 1, 1, 2, 3, 2, 0, 1,  # 40-59
    2, 0, 4, 1, 0, 0, 2, 0, 1, 1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 1,  # 60-79
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # 80-92
# Versions newer clients may send beyond KNOWN_VERSIONS and still be recognised.
VERSION_SLACK = 4
# The first flexible version (compact strings and arrays, tagged fields) of the APIs whose bodies are read.
FLEXIBLE_FROM = {PRODUCE: 9, FETCH: 12, OFFSET_COMMIT: 8}
# The first version naming topics by id (a UUID) rather than by name.
TOPIC_IDS_FROM = {PRODUCE: 13, FETCH: 13, OFFSET_COMMIT: 10}
# (messaging.operation.name, messaging.operation.type) of the APIs that get spans.
OPERATIONS = {PRODUCE: ("send", "send"), FETCH: ("poll", "receive"), OFFSET_COMMIT: ("commit", "settle")}
_OPERATION_TYPES = dict(OPERATIONS.values())
MAX_REQUEST = 100 << 20  # the brokers' socket.request.max.bytes default: larger is no Kafka request

# Kafka's error names by code (0 to 127; -1 is UNKNOWN_SERVER_ERROR).
ERROR_NAMES = tuple("""
NONE OFFSET_OUT_OF_RANGE CORRUPT_MESSAGE UNKNOWN_TOPIC_OR_PARTITION INVALID_FETCH_SIZE LEADER_NOT_AVAILABLE
NOT_LEADER_OR_FOLLOWER REQUEST_TIMED_OUT BROKER_NOT_AVAILABLE REPLICA_NOT_AVAILABLE MESSAGE_TOO_LARGE
STALE_CONTROLLER_EPOCH OFFSET_METADATA_TOO_LARGE NETWORK_EXCEPTION COORDINATOR_LOAD_IN_PROGRESS
COORDINATOR_NOT_AVAILABLE NOT_COORDINATOR INVALID_TOPIC_EXCEPTION RECORD_LIST_TOO_LARGE NOT_ENOUGH_REPLICAS
NOT_ENOUGH_REPLICAS_AFTER_APPEND INVALID_REQUIRED_ACKS ILLEGAL_GENERATION INCONSISTENT_GROUP_PROTOCOL
INVALID_GROUP_ID UNKNOWN_MEMBER_ID INVALID_SESSION_TIMEOUT REBALANCE_IN_PROGRESS INVALID_COMMIT_OFFSET_SIZE
TOPIC_AUTHORIZATION_FAILED GROUP_AUTHORIZATION_FAILED CLUSTER_AUTHORIZATION_FAILED INVALID_TIMESTAMP
UNSUPPORTED_SASL_MECHANISM ILLEGAL_SASL_STATE UNSUPPORTED_VERSION TOPIC_ALREADY_EXISTS INVALID_PARTITIONS
INVALID_REPLICATION_FACTOR INVALID_REPLICA_ASSIGNMENT INVALID_CONFIG NOT_CONTROLLER INVALID_REQUEST
UNSUPPORTED_FOR_MESSAGE_FORMAT POLICY_VIOLATION OUT_OF_ORDER_SEQUENCE_NUMBER DUPLICATE_SEQUENCE_NUMBER
INVALID_PRODUCER_EPOCH INVALID_TXN_STATE INVALID_PRODUCER_ID_MAPPING INVALID_TRANSACTION_TIMEOUT
CONCURRENT_TRANSACTIONS TRANSACTION_COORDINATOR_FENCED TRANSACTIONAL_ID_AUTHORIZATION_FAILED SECURITY_DISABLED
OPERATION_NOT_ATTEMPTED KAFKA_STORAGE_ERROR LOG_DIR_NOT_FOUND SASL_AUTHENTICATION_FAILED UNKNOWN_PRODUCER_ID
REASSIGNMENT_IN_PROGRESS DELEGATION_TOKEN_AUTH_DISABLED DELEGATION_TOKEN_NOT_FOUND
DELEGATION_TOKEN_OWNER_MISMATCH DELEGATION_TOKEN_REQUEST_NOT_ALLOWED DELEGATION_TOKEN_AUTHORIZATION_FAILED
DELEGATION_TOKEN_EXPIRED INVALID_PRINCIPAL_TYPE NON_EMPTY_GROUP GROUP_ID_NOT_FOUND FETCH_SESSION_ID_NOT_FOUND
INVALID_FETCH_SESSION_EPOCH LISTENER_NOT_FOUND TOPIC_DELETION_DISABLED FENCED_LEADER_EPOCH UNKNOWN_LEADER_EPOCH
UNSUPPORTED_COMPRESSION_TYPE STALE_BROKER_EPOCH OFFSET_NOT_AVAILABLE MEMBER_ID_REQUIRED
PREFERRED_LEADER_NOT_AVAILABLE GROUP_MAX_SIZE_REACHED FENCED_INSTANCE_ID ELIGIBLE_LEADERS_NOT_AVAILABLE
ELECTION_NOT_NEEDED NO_REASSIGNMENT_IN_PROGRESS GROUP_SUBSCRIBED_TO_TOPIC INVALID_RECORD UNSTABLE_OFFSET_COMMIT
THROTTLING_QUOTA_EXCEEDED PRODUCER_FENCED RESOURCE_NOT_FOUND DUPLICATE_RESOURCE UNACCEPTABLE_CREDENTIAL
INCONSISTENT_VOTER_SET INVALID_UPDATE_VERSION FEATURE_UPDATE_FAILED PRINCIPAL_DESERIALIZATION_FAILURE
SNAPSHOT_NOT_FOUND POSITION_OUT_OF_RANGE UNKNOWN_TOPIC_ID DUPLICATE_BROKER_REGISTRATION BROKER_ID_NOT_REGISTERED
INCONSISTENT_TOPIC_ID INCONSISTENT_CLUSTER_ID TRANSACTIONAL_ID_NOT_FOUND FETCH_SESSION_TOPIC_ID_ERROR
INELIGIBLE_REPLICA NEW_LEADER_ELECTED OFFSET_MOVED_TO_TIERED_STORAGE FENCED_MEMBER_EPOCH
UNRELEASED_INSTANCE_ID UNSUPPORTED_ASSIGNOR STALE_MEMBER_EPOCH MISMATCHED_ENDPOINT_TYPE
UNSUPPORTED_ENDPOINT_TYPE UNKNOWN_CONTROLLER_ID UNKNOWN_SUBSCRIPTION_ID TELEMETRY_TOO_LARGE
INVALID_REGISTRATION TRANSACTION_ABORTABLE INVALID_RECORD_STATE SHARE_SESSION_NOT_FOUND
INVALID_SHARE_SESSION_EPOCH FENCED_STATE_EPOCH INVALID_VOTER_KEY DUPLICATE_VOTER VOTER_NOT_FOUND
""".split())

# Topic names: at most 249 of these characters (Kafka's rule).
_TOPIC_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_MAX_TOPIC = 249
_BATCH_HEADER = 61  # a v2 record batch up to its records count
_BATCH_MIN_LENGTH = _BATCH_HEADER - 12  # its batch length field counts what follows the field
_I16: Callable[[bytes, int], tuple[int]] = struct.Struct(">h").unpack_from
_I32: Callable[[bytes, int], tuple[int]] = struct.Struct(">i").unpack_from
_REQUEST_HEADER = struct.Struct(">ihhih").unpack_from  # size, key, version, correlation id, client id length
_RESPONSE_HEADER = struct.Struct(">ii").unpack_from  # size, correlation id


class _Cut(Exception):
    """The prefix ends before the field read: what came before stands."""


class _Bad(Exception):
    """The bytes cannot be what the protocol puts there."""


class _Reader:
    """Fields of one message from its prefix `b` (offsets from the message's start); `limit` is
    the message's declared length, which no length or count may reach past. Reads inline their
    bounds checks: this runs for every exchange."""

    __slots__ = ("b", "p", "end", "flexible", "limit")

    def __init__(self, b: bytes, p: int, flexible: bool, limit: int) -> None:
        self.b = b
        self.p = p
        self.end = len(b)
        self.flexible = flexible
        self.limit = limit

    def int16(self) -> int:
        p = self.p
        if p + 2 > self.end:
            raise _Cut
        self.p = p + 2
        return _I16(self.b, p)[0]

    def int32(self) -> int:
        p = self.p
        if p + 4 > self.end:
            raise _Cut
        self.p = p + 4
        return _I32(self.b, p)[0]

    def skip(self, k: int) -> None:
        if k < 0 or self.p + k > self.limit:
            raise _Bad
        self.p += k

    def uvarint(self) -> int:
        p = self.p
        if p >= self.end:
            raise _Cut
        c = self.b[p]
        self.p = p + 1
        return c if c < 0x80 else self._long_uvarint(c)

    def _long_uvarint(self, first: int) -> int:
        """The rest of a varint whose first byte (`first`, read) has its continuation bit set."""
        b, p, value, shift = self.b, self.p, first & 0x7F, 7
        while True:
            if p >= self.end:
                raise _Cut
            c = b[p]
            p += 1
            value |= (c & 0x7F) << shift
            if c < 0x80:
                self.p = p
                return value
            shift += 7
            if shift > 28:  # five bytes at most
                raise _Bad

    def _length(self, wide: bool) -> int:
        """A length or count (-1: null): an unsigned varint of it + 1 in flexible versions, else
        an int16 (`wide`: int32). What it counts takes a byte each at least."""
        if self.flexible:
            n = self.uvarint() - 1
        else:
            n = self.int32() if wide else self.int16()
        if n < -1 or self.p + n > self.limit:
            raise _Bad
        return n

    def string_length(self) -> int:
        """A (nullable) string's length; -1: null."""
        return self._length(False)

    def bytes_length(self) -> int:
        """A (nullable) byte array's length; -1: null."""
        return self._length(True)

    def array(self) -> int:
        """An array's count (a null array: 0)."""
        return max(0, self._length(True))

    def string(self) -> bytes | None:
        n = self._length(False)
        if n < 0:
            return None
        p = self.p
        if p + n > self.end:
            raise _Cut
        self.p = p + n
        return self.b[p:p + n]

    def skip_string(self) -> None:
        n = self._length(False)
        if n > 0:
            self.p += n

    def tags(self) -> None:
        """The tagged fields of a structure, in flexible versions (most often none: one zero byte)."""
        if not self.flexible:
            return
        p = self.p
        if p < self.end and self.b[p] == 0:
            self.p = p + 1
            return
        count = self.uvarint()
        if self.p + count > self.limit:
            raise _Bad
        for _ in range(count):
            self.uvarint()
            self.skip(self.uvarint())

    def topic(self, by_id: bool) -> str | None:
        """A topic's name, None when given by id (a UUID)."""
        if by_id:
            self.skip(16)
            return None
        raw = self.string()
        if raw is None or not 0 < len(raw) <= _MAX_TOPIC or raw.translate(None, _TOPIC_CHARS):
            raise _Bad
        return raw.decode("ascii")


def error_name(code: int) -> str:
    """The Kafka name of a non-zero error code, its decimal digits when unknown."""
    if 0 < code < len(ERROR_NAMES):
        return ERROR_NAMES[code]
    return "UNKNOWN_SERVER_ERROR" if code == -1 else str(code)


def request_header(b: bytes) -> tuple[int, int, int, int, int] | None:
    """Size, API key, version, correlation id and client id length of the request starting `b`;
    None when those are no Kafka request header (unknown key or version, impossible sizes)."""
    if len(b) < 14:
        return None
    size, key, version, correlation, client_len = _REQUEST_HEADER(b, 0)
    if not 10 <= size <= MAX_REQUEST or not 0 <= key < len(KNOWN_VERSIONS) \
            or not 0 <= version <= KNOWN_VERSIONS[key] + VERSION_SLACK or not -1 <= client_len <= size - 10:
        return None
    return size, key, version, correlation, client_len


class RequestShape(NamedTuple):
    """What describe() reads of a request."""

    operation: str  # messaging.operation.name
    topics: int  # topics (or topic ids) the request lists
    topic: str | None  # the only topic's name; None: several, none, by id, cut by the prefix
    partition: int | None  # the only partition of the only topic
    client_id: str | None
    records: int | None  # Produce: records in its batches; None: not all seen
    group: str | None  # OffsetCommit: the consumer group
    answered: bool  # an answer is due (not a Produce with acks=0)


class ResponseShape(NamedTuple):
    """What describe() reads of a response."""

    error: str | None  # error.type of the first non-zero error code seen; None: none
    topic: str | None  # Fetch: the only topic of the response
    partition: int | None  # Fetch: the only partition of its only topic


@dataclass(slots=True)
class KafkaRequest(Message):
    api_key: int = -1
    api_version: int = -1
    correlation_id: int = 0
    shape: Hashable = field(default=None, compare=False)  # RequestShape; None: housekeeping


@dataclass(slots=True)
class KafkaResponse(Message):
    shape: Hashable = field(default=None, compare=False)  # ResponseShape


def _batch_records(b: bytes, s: int, n: int) -> int | None:
    """Records in the record batches at `b[s:s + n]`; None for a legacy message set. Raises _Cut
    when a batch header is past the prefix."""
    count = 0
    end = s + n
    while s < end:
        if s + _BATCH_HEADER > len(b):
            raise _Cut
        length = _I32(b, s + 8)[0]  # after the base offset
        if end - s < _BATCH_HEADER or b[s + 16] != 2 or length < _BATCH_MIN_LENGTH:  # magic 0, 1: messages
            return None
        records = _I32(b, s + 57)[0]
        if records < 0:
            return None
        count += records
        s += 12 + length
    return count


def _produce(r: _Reader, version: int) -> tuple[int, int, str | None, int | None, int | None]:
    """acks, topic count, the only topic, its only partition, records (None: not all seen)."""
    if version >= 3:
        r.skip_string()  # transactional id
    acks = r.int16()
    r.int32()  # timeout
    topics = r.array()
    by_id = version >= TOPIC_IDS_FROM[PRODUCE]
    topic = partition = None
    records: int | None = 0
    try:
        for _ in range(topics):
            name = r.topic(by_id)
            if topics == 1:
                topic = name
            partitions = r.array()
            for _ in range(partitions):
                index = r.int32()
                if topics == 1 and partitions == 1:
                    partition = index
                n = r.bytes_length()
                if n > 0:
                    if records is not None:
                        found = _batch_records(r.b, r.p, n)
                        records = None if found is None else records + found
                    r.skip(n)
                r.tags()
            r.tags()
    except _Cut:
        records = None
    return acks, topics, topic, partition, records


def _first_topic(r: _Reader, by_id: bool) -> tuple[int, str | None, int | None]:
    """Topic count, the only topic and its only partition, of a topics array starting at `r`."""
    topics = r.array()
    topic = partition = None
    try:
        if topics == 1:
            topic = r.topic(by_id)
            if r.array() == 1:
                partition = r.int32()
    except _Cut:
        pass
    return topics, topic, partition


def _fetch(r: _Reader, version: int) -> tuple[int, str | None, int | None]:
    if version <= 14:
        r.skip(4)  # replica id
    r.skip(8)  # max wait, min bytes
    if version >= 3:
        r.skip(4)  # max bytes
    if version >= 4:
        r.skip(1)  # isolation level
    if version >= 7:
        r.skip(8)  # session id and epoch
    return _first_topic(r, version >= TOPIC_IDS_FROM[FETCH])


def _offset_commit(r: _Reader, version: int) -> tuple[str | None, int, str | None, int | None]:
    """The group, then as _first_topic."""
    raw = r.string()
    group = raw.decode("utf-8", "replace") if raw else None
    try:
        if version >= 1:
            r.skip(4)  # generation id or member epoch
            r.skip_string()  # member id
        if version >= 7:
            r.skip_string()  # group instance id
        if 2 <= version <= 4:
            r.skip(8)  # retention time
        return (group, *_first_topic(r, version >= TOPIC_IDS_FROM[OFFSET_COMMIT]))
    except _Cut:
        return group, 0, None, None


def request_shape(b: bytes, key: int, version: int, client_len: int, total: int) -> RequestShape | None:
    """The shape of a Produce, Fetch or OffsetCommit request (header already checked); None when
    its body is not one."""
    flexible = version >= FLEXIBLE_FROM[key]
    operation = OPERATIONS[key][0]
    client_id = b[14:14 + client_len].decode("utf-8", "replace") or None if 14 + client_len <= len(b) else None
    if version > KNOWN_VERSIONS[key]:  # a layout not known yet
        return RequestShape(operation, 0, None, None, client_id, None, None, True)
    r = _Reader(b, 14 + max(client_len, 0), flexible, total)
    records = None
    group = None
    acks = -1
    try:
        r.tags()  # request header v2
        if key == PRODUCE:
            acks, topics, topic, partition, records = _produce(r, version)
        elif key == FETCH:
            topics, topic, partition = _fetch(r, version)
        else:
            group, topics, topic, partition = _offset_commit(r, version)
    except _Cut:  # a client id or transactional id filling the prefix
        topics, topic, partition = 0, None, None
    except _Bad:
        return None
    return RequestShape(operation, topics, topic, partition, client_id, records, group, acks != 0)


def _produce_error(r: _Reader, version: int) -> int:
    by_id = version >= TOPIC_IDS_FROM[PRODUCE]
    for _ in range(r.array()):
        r.topic(by_id)
        for _ in range(r.array()):
            r.skip(4)  # partition index
            error = r.int16()
            if error:
                return error
            r.skip(8 + 8 * (version >= 2) + 8 * (version >= 5))  # offsets and times
            if version >= 8:
                for _ in range(r.array()):  # record errors
                    r.skip(4)
                    r.skip_string()
                    r.tags()
                r.skip_string()  # error message
            r.tags()
        r.tags()
    return 0


def _fetch_error(r: _Reader, version: int, found: list[str | int | None]) -> int:
    """The first error code of a Fetch response; its only topic and partition go to `found`."""
    if version >= 1:
        r.skip(4)  # throttle time
    if version >= 7:
        error = r.int16()
        if error:
            return error
        r.skip(4)  # session id
    topics = r.array()
    by_id = version >= TOPIC_IDS_FROM[FETCH]
    for _ in range(topics):
        name = r.topic(by_id)
        if topics == 1:
            found[0] = name
        partitions = r.array()
        for _ in range(partitions):
            index = r.int32()
            if topics == 1 and partitions == 1:
                found[1] = index
            error = r.int16()
            if error:
                return error
            r.skip(8 + 8 * (version >= 4) + 8 * (version >= 5))  # high watermark, last stable, log start
            if version >= 4:
                for _ in range(r.array()):  # aborted transactions
                    r.skip(16)
                    r.tags()
            if version >= 11:
                r.skip(4)  # preferred read replica
            r.skip(max(r.bytes_length(), 0))
            r.tags()
        r.tags()
    return 0


def _commit_error(r: _Reader, version: int) -> int:
    if version >= 3:
        r.skip(4)  # throttle time
    by_id = version >= TOPIC_IDS_FROM[OFFSET_COMMIT]
    for _ in range(r.array()):
        r.topic(by_id)
        for _ in range(r.array()):
            r.skip(4)
            error = r.int16()
            if error:
                return error
            r.tags()
        r.tags()
    return 0


def response_shape(b: bytes, key: int, version: int, size: int) -> ResponseShape | None:
    """The shape of the response to a Produce, Fetch or OffsetCommit (header checked); None when
    its body is not one."""
    if version > KNOWN_VERSIONS[key]:
        return ResponseShape(None, None, None)
    r = _Reader(b, 8, version >= FLEXIBLE_FROM[key], size + 4)
    found: list[str | int | None] = [None, None]
    error = 0
    try:
        r.tags()  # response header v1
        if key == PRODUCE:
            error = _produce_error(r, version)
        elif key == FETCH:
            error = _fetch_error(r, version, found)
        else:
            error = _commit_error(r, version)
    except _Cut:
        pass
    except _Bad:
        return None
    topic, partition = found
    return ResponseShape(error_name(error) if error else None, cast("str | None", topic),
                         cast("int | None", partition))


class Kafka(Protocol):
    """Kafka requests and responses: Produce, Fetch and OffsetCommit described, the rest housekeeping."""

    name = "kafka"

    def detect(self, request: bytes, response: bytes) -> bool:
        header = request_header(request)
        if header is None or header[0] + 4 < len(request) or len(response) < 8:
            return False
        size, correlation = _RESPONSE_HEADER(response, 0)
        return size >= 4 and correlation == header[3]

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        b = rec.request
        header = request_header(b)
        if header is None:
            return None
        size, key, version, correlation, client_len = header
        total = size + 4
        if total > rec.req_bytes:  # declares more than was sent before the answer
            return None
        request = KafkaRequest(True, rec.req_start_ns, rec.req_end_ns, rec.req_bytes, 0, None, key, version,
                               correlation)
        response = None
        if rec.resp_start_ns:
            response = KafkaResponse(False, rec.resp_start_ns, rec.resp_end_ns, rec.resp_bytes)
        if total < rec.req_bytes:  # more requests follow before the first answer (which may be theirs)
            return Parsed(request, response, pipelined=True)
        resp_size = 0
        if response is not None:
            r = rec.response
            if len(r) < 8:
                return None
            resp_size, resp_correlation = _RESPONSE_HEADER(r, 0)
            if resp_size < 4 or resp_correlation != correlation:  # another request's answer
                return None
        if key not in OPERATIONS:
            return Parsed(request, response, housekeeping=True)
        shape = request_shape(b, key, version, client_len, total)
        if shape is None:
            return None
        request.shape = shape
        if response is not None:
            response.shape = response_shape(rec.response, key, version, resp_size)
            if response.shape is None:
                return None
        return Parsed(request, response)

    def finished(self, rec: ExchangeRecord) -> bool:
        """Unfinished while the first response's declared size is not reached (a large Fetch
        answer paused by a slow reader)."""
        r = rec.response
        if len(r) < 4:
            return True
        size = _I32(r, 0)[0]
        return size < 0 or rec.resp_bytes >= size + 4

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        """Reads only the shapes. `with_query` (url.query) is HTTP's."""
        shape = cast(RequestShape, request.shape)
        operation = shape.operation
        topic, partition = shape.topic, shape.partition
        error_type = None
        if response is None:
            if shape.answered:
                error_type = "incomplete"
        else:
            answer = cast(ResponseShape, response.shape)
            error_type = answer.error
            if shape.topics == 0 and operation == "poll":  # an incremental fetch: what came back
                topic, partition = answer.topic, answer.partition
        attrs: dict[str, str | int | float | bool] = {
            "messaging.system": "kafka", "messaging.operation.name": operation,
            "messaging.operation.type": _OPERATION_TYPES[operation]}
        if topic is not None:
            attrs["messaging.destination.name"] = topic
            if partition is not None:
                attrs["messaging.destination.partition.id"] = str(partition)
        if shape.group is not None:
            attrs["messaging.consumer.group.name"] = shape.group
        if shape.client_id is not None:
            attrs["messaging.client.id"] = shape.client_id
        if shape.records is not None and shape.records > 1:
            attrs["messaging.batch.message_count"] = shape.records
        return SpanDescription(f"{operation} {topic}" if topic is not None else operation, attrs, error_type)

    def instruments(self, kind: SpanKind) -> InstrumentSet | None:
        return MESSAGING_CLIENT_METRICS if kind is SpanKind.CLIENT else None

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]] | None:
        if kind is not SpanKind.CLIENT:
            return None
        a = desc.attributes
        return MESSAGING_CLIENT_METRICS, ("kafka", a["messaging.operation.name"], a["messaging.operation.type"],
                                          a.get("messaging.destination.name"),
                                          a.get("messaging.consumer.group.name"), desc.error_type,
                                          conn.remote_addr or None, conn.remote_port or None)

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        return (duration(request, response),)
