"""Exchange + its shape's SpanDescription -> OTLP Span bytes, read back with the official protobuf classes."""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from beyla_sidecar.bpf.events import ConnTuple
from beyla_sidecar.export.spans import Clock, SpanEncoder
from beyla_sidecar.protocols.base import Message, SpanDescription, SpanKind
from beyla_sidecar.protocols.http1 import HTTP1
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange

CONN = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
WALL_OFFSET = 1_000_000_000_000
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SERVER_DESC = SpanDescription("GET /users/{id}", {"http.request.method": "GET", "url.path": "/users/1",
                                                  "http.route": "/users/{id}", "http.response.status_code": 200})


class FixedClock(Clock):
    def sync(self) -> None:
        self.offset = WALL_OFFSET


def exchange(kind: SpanKind, parent: int = 0, remote: bool = False, response: bool = True,
             conn: ConnTuple = CONN) -> Exchange:
    req = Message(True, 5_000, 6_000, size=0, header_size=40)
    resp = Message(False, 7_000, 9_000, size=12, header_size=50) if response else None
    ctx = TraceContext(TRACE_ID, 0xDEF, parent, parent_remote=remote)
    return Exchange(HTTP1(), kind, req, resp, ctx, 100, 101, 17, conn)


def encode(ex: Exchange, desc: SpanDescription, encoder: SpanEncoder | None = None) -> bytes:
    encoder = encoder or SpanEncoder(FixedClock())
    return encoder.encode(ex, encoder.template(desc, ex.protocol.size_attributes))


def decode(ex: Exchange, desc: SpanDescription, encoder: SpanEncoder | None = None) -> Span:
    return ScopeSpans.FromString(encode(ex, desc, encoder)).spans[0]


def kv(key: str, value: str | int | float | bool) -> KeyValue:
    field = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}[type(value)]
    return KeyValue(key=key, value=AnyValue(**{field: value}))


def test_server_span_every_field() -> None:
    span = decode(exchange(SpanKind.SERVER), SERVER_DESC)
    expected = Span(
        trace_id=TRACE_ID.to_bytes(16, "big"), span_id=(0xDEF).to_bytes(8, "big"), name="GET /users/{id}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=WALL_OFFSET + 5_000, end_time_unix_nano=WALL_OFFSET + 9_000,
        attributes=[kv("http.request.method", "GET"), kv("url.path", "/users/1"), kv("http.route", "/users/{id}"),
                    kv("http.response.status_code", 200), kv("http.response.body.size", 12),
                    kv("network.peer.address", "10.0.0.2"), kv("network.peer.port", 40000),
                    kv("network.transport", "tcp"), kv("server.address", "10.0.0.1"), kv("server.port", 8080),
                    kv("client.address", "10.0.0.2"), kv("client.port", 40000)],
        status=Status(),
        flags=0x101,  # sampled; the parent's remoteness is known (no parent: local)
    )
    assert span == expected
    assert span.parent_span_id == b"" and span.trace_state == "" and not span.events and not span.links
    assert span.status.code == Status.STATUS_CODE_UNSET
    # Field for field, byte for byte what the official protobuf writes.
    assert encode(exchange(SpanKind.SERVER), SERVER_DESC) == ScopeSpans(spans=[expected]).SerializeToString()


def test_client_span_with_local_parent_error_and_host() -> None:
    desc = SpanDescription("GET", {"http.request.method": "GET", "server.address": "shop.local",
                                   "http.response.status_code": 404}, error_type="404")
    span = decode(exchange(SpanKind.CLIENT, parent=0x99), desc)
    assert span.kind == Span.SPAN_KIND_CLIENT and span.name == "GET"
    assert span.parent_span_id == (0x99).to_bytes(8, "big") and span.flags == 0x101
    assert span.status == Status(code=Status.STATUS_CODE_ERROR)
    attrs = {a.key: a.value for a in span.attributes}
    assert len(attrs) == len(span.attributes)  # no key twice
    assert attrs["server.address"].string_value == "shop.local"  # the protocol's (Host) beats the address
    assert attrs["server.port"].int_value == 40000 and attrs["error.type"].string_value == "404"
    assert "client.address" not in attrs and "client.port" not in attrs
    assert list(attrs) == ["http.request.method", "server.address", "http.response.status_code",
                           "http.response.body.size", "network.peer.address", "network.peer.port", "network.transport", "server.port",
                           "error.type"]


def test_remote_parent_sets_the_remote_flag() -> None:
    span = decode(exchange(SpanKind.SERVER, parent=0x77, remote=True), SERVER_DESC)
    assert span.parent_span_id == (0x77).to_bytes(8, "big") and span.flags == 0x301


def test_no_response_ends_at_the_request() -> None:
    span = decode(exchange(SpanKind.SERVER, response=False), SpanDescription("GET", {}, error_type="incomplete"))
    assert span.end_time_unix_nano == WALL_OFFSET + 6_000
    assert [(a.key, a.value.string_value) for a in span.attributes][-1] == ("error.type", "incomplete")


def test_clock_resync_moves_later_spans_only() -> None:
    clock = FixedClock()
    encoder = SpanEncoder(clock)
    before = decode(exchange(SpanKind.SERVER), SERVER_DESC, encoder)
    clock.offset += 7
    after = decode(exchange(SpanKind.SERVER), SERVER_DESC, encoder)
    assert after.start_time_unix_nano - before.start_time_unix_nano == 7


def test_connections_and_kinds_keep_their_own_network_attributes() -> None:
    encoder = SpanEncoder(FixedClock())
    other = ConnTuple("10.0.0.1", 8080, "10.0.0.3", 41000)
    spans = [decode(exchange(kind, conn=conn), SpanDescription("GET", {}), encoder)
             for conn in (CONN, other, CONN) for kind in (SpanKind.SERVER, SpanKind.CLIENT)]
    peers = [({a.key: a.value for a in s.attributes}["network.peer.port"].int_value,
              {a.key for a in s.attributes} >= {"client.address"}) for s in spans]
    assert peers == [(40000, True), (40000, False), (41000, True), (41000, False), (40000, True), (40000, False)]


def test_sizes_are_set_per_exchange_when_not_zero() -> None:
    encoder = SpanEncoder(FixedClock())
    template = encoder.template(SERVER_DESC, HTTP1.size_attributes)
    ex = exchange(SpanKind.SERVER)
    sizes = []
    for req_size, resp_size in ((0, 12), (3, 0), (7, 4096)):
        ex.request.size, ex.response.size = req_size, resp_size
        span = ScopeSpans.FromString(encoder.encode(ex, template)).spans[0]
        attrs = {a.key: a.value.int_value for a in span.attributes}
        sizes.append((attrs.get("http.request.body.size"), attrs.get("http.response.body.size")))
    assert sizes == [(None, 12), (3, None), (7, 4096)]


def test_unknown_addresses_and_ports_are_left_out() -> None:
    """A TLS library's memory BIO has no socket: the connection's addresses are unknown."""
    for kind in SpanKind:
        span = decode(exchange(kind, conn=ConnTuple("", 0, "", 0)), SpanDescription("GET", {}))
        assert [(a.key, a.value.string_value) for a in span.attributes] == [
            ("http.response.body.size", ""), ("network.transport", "tcp")]
