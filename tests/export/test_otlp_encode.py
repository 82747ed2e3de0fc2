"""The wire-format writer: whole ExportTraceServiceRequests compared with the official protobuf."""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from beyla_sidecar import __version__
from beyla_sidecar.export.otlp_encode import (
    CACHE_LIMIT, KIND_CLIENT, KIND_SERVER, AttributeCache, SpanFrame, encode_request, encode_resource, key_value,
    span_name,
)

SHOP = {"service.name": "shop", "process.pid": 17, "k8s.pod.name": "shop-1", "ratio": 0.5, "flag": True,
        "process.command_line": "x" * 20_000}  # a length that needs a 3-byte varint
CART = {"service.name": "cart ü", "process.pid": 18}
ATTRS = {"http.request.method": "GET", "http.response.status_code": 201, "negative": -5, "big": 2**62,
         "ok": False, "ms": 1.25, "url.path": "/" + "p" * 300}


def kvs(attributes: dict[str, object]) -> list[KeyValue]:
    out = []
    for key, value in attributes.items():
        field = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}[type(value)]
        out.append(KeyValue(key=key, value=AnyValue(**{field: value})))
    return out


def our_span(i: int, kind: int = KIND_SERVER, parent: int = 0, remote: bool = False, error: bool = False) -> bytes:
    frame = SpanFrame(span_name(f"GET /users/{{id}} ü{i}"), kind, AttributeCache().encode(ATTRS), b"", error)
    return frame.encode(0xABCDEF0123456789 + i, 0x1234 + i, parent, remote, 1_700_000_000_000_000_000 + i,
                        1_700_000_000_500_000_000 + i, b"")


def official_span(i: int, kind: int = KIND_SERVER, parent: int = 0, remote: bool = False,
                  error: bool = False) -> Span:
    return Span(trace_id=(0xABCDEF0123456789 + i).to_bytes(16, "big"), span_id=(0x1234 + i).to_bytes(8, "big"),
                parent_span_id=parent.to_bytes(8, "big") if parent else b"", name=f"GET /users/{{id}} ü{i}",
                kind=kind, start_time_unix_nano=1_700_000_000_000_000_000 + i,
                end_time_unix_nano=1_700_000_000_500_000_000 + i, attributes=kvs(ATTRS),
                status=Status(code=Status.STATUS_CODE_ERROR) if error else Status(),
                flags=0x301 if remote else 0x101)


def test_request_groups_spans_by_resource_in_order() -> None:
    shop, cart = encode_resource(SHOP), encode_resource(CART)
    items = [(shop, our_span(0)), (cart, our_span(1, KIND_CLIENT, parent=0x99)),
             (shop, our_span(2, parent=0x77, remote=True, error=True)),
             (encode_resource(SHOP), our_span(3, KIND_CLIENT))]  # equal bytes: the same resource
    scope = InstrumentationScope(name="beyla-sidecar", version=__version__)
    expected = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=kvs(SHOP)), scope_spans=[ScopeSpans(scope=scope, spans=[
            official_span(0), official_span(2, parent=0x77, remote=True, error=True),
            official_span(3, KIND_CLIENT)])]),
        ResourceSpans(resource=Resource(attributes=kvs(CART)), scope_spans=[ScopeSpans(scope=scope, spans=[
            official_span(1, KIND_CLIENT, parent=0x99)])]),
    ])
    ours = encode_request(items)
    assert ExportTraceServiceRequest.FromString(ours) == expected
    assert ours == expected.SerializeToString()


def test_a_frame_puts_each_spans_sizes_between_its_attributes_and_frames_long_spans() -> None:
    """Attributes, then the span's own sizes, then the last attributes; a span longer than
    16 KiB needs a 3-byte length."""
    cache = AttributeCache()
    frame = SpanFrame(span_name("op"), KIND_CLIENT, cache.encode({"a": 1}), cache.encode({"z": "y" * 20_000}), False)
    framed = [frame.encode(5, 6, parent, remote, 10, 20, sizes)
              for parent, remote, sizes in ((0, False, b""), (7, True, key_value(9, "size", 300)),
                                            (8, False, key_value(9, "size", 1) + key_value(9, "other", 2)))]
    spans = [ScopeSpans.FromString(f).spans for f in framed]
    assert [len(s) for s in spans] == [1, 1, 1]
    assert [[a.key for a in s[0].attributes] for s in spans] == [
        ["a", "z"], ["a", "size", "z"], ["a", "size", "other", "z"]]
    assert [(s[0].parent_span_id, s[0].flags) for s in spans] == [
        (b"", 0x101), ((7).to_bytes(8, "big"), 0x301), ((8).to_bytes(8, "big"), 0x101)]
    assert all(f == ScopeSpans(spans=s).SerializeToString() for f, s in zip(framed, spans))


def test_resource_alone() -> None:
    assert Resource.FromString(encode_resource(SHOP)) == Resource(attributes=kvs(SHOP))
    assert encode_resource({}) == b""


def test_empty_request() -> None:
    assert encode_request([]) == b""


def test_true_and_one_stay_apart_and_the_cache_is_bounded() -> None:
    cache = AttributeCache()
    encoded = [cache.encode({"a": value}) for value in (True, 1, 1.0, "1", False, 0)]
    values = [Span.FromString(e).attributes[0].value for e in encoded]
    assert [v.WhichOneof("value") for v in values] == ["bool_value", "int_value", "double_value", "string_value",
                                                      "bool_value", "int_value"]
    for i in range(CACHE_LIMIT + 10):
        assert Span.FromString(cache.encode({"n": i})).attributes[0].value.int_value == i
    assert len(cache) <= CACHE_LIMIT
