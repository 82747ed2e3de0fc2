"""OTLP trace protobuf written directly in wire format, with no SDK or protobuf objects.

Building one Python protobuf object per span, attribute and value costs tens of us per span.
Here a span is a few byte strings joined: its attributes' KeyValues are cached (method, route,
status, addresses repeat from span to span), a process's Resource is encoded once, and the
export request is the pre-encoded spans concatenated under their resource. Only what the
sidecar's spans carry is encoded: scalar attributes, ids, times, kind, status, parent, flags.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from .. import __version__

AttributeValue = str | bool | int | float

_LEN = 2
_DOUBLE = struct.Struct("<d")
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7) and end_time_unix_nano (8), both fixed64
_FLAGS = struct.Struct("<I")
CACHE_LIMIT = 4096  # distinct encoded attributes remembered before the cache starts over
_SMALL = tuple(bytes((i,)) for i in range(128))

KIND_SERVER, KIND_CLIENT = 2, 3  # Span.SpanKind
# Span.flags: bits 0-7 the W3C trace flags (every exported span is sampled), then whether the
# parent is remote is known (0x100) and, if so, that it is (0x200).
FLAGS_LOCAL_PARENT = _FLAGS.pack(0x101)
FLAGS_REMOTE_PARENT = _FLAGS.pack(0x301)
_STATUS_UNSET = b"\x7a\x00"  # field 15: an empty Status
_STATUS_ERROR = b"\x7a\x02\x18\x02"  # field 15: Status{code: STATUS_CODE_ERROR}


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:  # span and attribute lengths
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field: bytes, string or embedded message."""
    return _varint(field << 3 | _LEN) + _varint(len(payload)) + payload


def _any_value(value: AttributeValue) -> bytes:
    """AnyValue: string 1, bool 2, int 3 (int64), double 4."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # negative int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    return _field(1, str(value).encode())


def key_value(field: int, key: str, value: AttributeValue) -> bytes:
    """The whole `field` holding one KeyValue."""
    return _field(field, _field(1, key.encode()) + _field(2, _any_value(value)))


def encode_resource(attributes: Mapping[str, AttributeValue]) -> bytes:
    """A Resource message; encoded once per instrumented process."""
    return b"".join(key_value(1, k, v) for k, v in attributes.items())


_SCOPE = _field(1, _field(1, b"beyla-sidecar") + _field(2, __version__.encode()))  # ScopeSpans.scope


# A finished span as it waits in an export queue: (encoded Resource, shared by the process's
# spans; the Span message, framed by SpanFrame). A plain tuple of bytes: the garbage collector
# stops tracking it, where a NamedTuple would be scanned by every collection while tens of
# thousands wait for export.
SpanItem = tuple[bytes, bytes]


class AttributeCache:
    """Span attributes (field 9 KeyValues), each encoded once while it keeps repeating."""

    def __init__(self) -> None:
        # (key, type, value): the type keeps True apart from 1 (equal and same hash).
        self._kvs: dict[tuple[str, type, AttributeValue], bytes] = {}

    def __len__(self) -> int:
        return len(self._kvs)

    def get(self, key: str, value: AttributeValue) -> bytes:
        return self._kvs.get((key, value.__class__, value)) or self._add(key, value)

    def encode(self, attributes: Mapping[str, AttributeValue]) -> bytes:
        kvs = self._kvs
        out = []
        for key, value in attributes.items():  # inlined get(): this loop runs for every attribute
            encoded = kvs.get((key, value.__class__, value))
            out.append(encoded if encoded is not None else self._add(key, value))
        return b"".join(out)

    def _add(self, key: str, value: AttributeValue) -> bytes:
        if len(self._kvs) >= CACHE_LIMIT:
            self._kvs.clear()
        encoded = self._kvs[(key, value.__class__, value)] = key_value(9, key, value)
        return encoded


class SpanFrame:
    """The Span messages of one name, kind, status and attributes (all but the sizes): encoded
    once, so that a span costs its ids, times and sizes. A span comes framed as a
    ScopeSpans.spans field, which is how encode_request joins it (no second copy); a framed
    span alone is a ScopeSpans message holding it."""

    __slots__ = ("_head", "_attributes", "_local", "_remote", "_length")

    def __init__(self, name: bytes, kind: int, attributes: bytes, last_attributes: bytes, error: bool) -> None:
        """`name`: the encoded name field (span_name); `attributes` and `last_attributes`: the
        KeyValues before and after each span's sizes."""
        self._head = name + b"\x30" + _SMALL[kind]
        self._attributes = attributes
        tail = last_attributes + (_STATUS_ERROR if error else _STATUS_UNSET) + b"\x85\x01"  # flags: field 16, fixed32
        self._local, self._remote = tail + FLAGS_LOCAL_PARENT, tail + FLAGS_REMOTE_PARENT
        # ids (18 + 10), head, times (18), attributes, tail
        self._length = 46 + len(self._head) + len(attributes) + len(self._local)

    def encode(self, trace_id: int, span_id: int, parent_span_id: int, remote_parent: bool, start_unix_ns: int,
               end_unix_ns: int, sizes: bytes) -> bytes:
        """One span, framed; `sizes`: its size KeyValues."""
        length = self._length + len(sizes)
        if parent_span_id:
            length += 10
        return b"".join((
            b"\x12", _varint(length),
            b"\x0a\x10", trace_id.to_bytes(16, "big"),
            b"\x12\x08", span_id.to_bytes(8, "big"),
            b"\x22\x08" + parent_span_id.to_bytes(8, "big") if parent_span_id else b"",
            self._head,
            _TIMES.pack(0x39, start_unix_ns, 0x41, end_unix_ns),
            self._attributes, sizes,
            self._remote if remote_parent else self._local,
        ))


def span_name(name: str) -> bytes:
    """Span field 5."""
    return _field(5, name.encode())


def encode_request(items: Iterable[SpanItem]) -> bytes:
    """The serialized ExportTraceServiceRequest: spans (framed, SpanFrame) grouped by resource, one scope."""
    groups: dict[bytes, list[bytes]] = {}
    for resource, span in items:
        spans = groups.get(resource)
        if spans is None:
            spans = groups[resource] = [_SCOPE]
        spans.append(span)
    out: list[bytes] = []
    for resource, spans in groups.items():  # one join: a copy of a batch costs ~0.3 us a span (page faults)
        size = sum(map(len, spans))
        resource_field = _field(1, resource)
        scope_spans = b"\x12" + _varint(size)  # ResourceSpans.scope_spans (2), then its spans
        out += (b"\x0a", _varint(len(resource_field) + len(scope_spans) + size), resource_field, scope_spans)
        out += spans
    return b"".join(out)
