"""The direct OTLP encoder produces what the SDK's encoder produces, message for message."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from beyla_sidecar.export.otlp_encode import SpanEncoder

SCOPE = InstrumentationScope("beyla-sidecar", "0.1.0")
SHOP = Resource({"service.name": "shop", "process.pid": 17, "k8s.pod.name": "shop-1", "ratio": 0.5,
                 "flag": True})
CART = Resource({"service.name": "cart", "process.pid": 18})


def span(i: int, resource: Resource, kind: SpanKind = SpanKind.SERVER, parent: int = 0, remote: bool = False,
         status: Status = Status(StatusCode.UNSET)) -> ReadableSpan:
    flags = TraceFlags(TraceFlags.SAMPLED)
    return ReadableSpan(
        name=f"GET /users/{{id}} ü{i}",
        context=SpanContext(0xABCDEF0123456789 + i, 0x1234 + i, is_remote=False, trace_flags=flags),
        parent=SpanContext(0xABCDEF0123456789 + i, parent, is_remote=remote, trace_flags=flags) if parent else None,
        resource=resource,
        attributes={"http.request.method": "GET", "http.response.status_code": 200 + i, "server.port": 8080,
                    "http.route": "/users/{id}", "negative": -5, "big": 2**62, "ok": False, "ms": 1.25},
        kind=kind, status=status, start_time=1_700_000_000_000_000_000 + i, end_time=1_700_000_000_500_000_000 + i,
        instrumentation_scope=SCOPE,
    )


def both(spans: list[ReadableSpan]) -> tuple[ExportTraceServiceRequest, ExportTraceServiceRequest]:
    ours = ExportTraceServiceRequest.FromString(SpanEncoder().encode(spans))
    return ours, encode_spans(spans)


def test_same_message_as_the_sdk_encoder() -> None:
    spans = [span(0, SHOP), span(1, SHOP, SpanKind.CLIENT, parent=0x99),
             span(2, CART, parent=0x77, remote=True, status=Status(StatusCode.ERROR, "boom")),
             span(3, SHOP, status=Status(StatusCode.ERROR)), span(4, CART, SpanKind.INTERNAL)]
    ours, sdk = both(spans)
    assert ours == sdk
    assert len(ours.resource_spans) == 2 and len(ours.resource_spans[0].scope_spans[0].spans) == 3


def test_flags_say_whether_the_parent_is_remote() -> None:
    ours, _ = both([span(0, SHOP), span(1, SHOP, parent=5, remote=True)])
    assert [s.flags for s in ours.resource_spans[0].scope_spans[0].spans] == [0x100, 0x300]


def test_empty_batch() -> None:
    assert SpanEncoder().encode([]) == b""


def test_true_and_one_stay_apart_and_the_cache_is_bounded() -> None:
    from beyla_sidecar.export.otlp_encode import CACHE_LIMIT

    encoder = SpanEncoder()
    spans = [span(0, Resource({"a": True})), span(1, Resource({"a": 1}))]
    ours = ExportTraceServiceRequest.FromString(encoder.encode(spans))
    values = [rs.resource.attributes[0].value for rs in ours.resource_spans]
    assert values[0].WhichOneof("value") == "bool_value" and values[1].WhichOneof("value") == "int_value"
    for i in range(CACHE_LIMIT + 10):
        encoder.encode([span(i, SHOP)])
    assert len(encoder._kvs) <= CACHE_LIMIT
