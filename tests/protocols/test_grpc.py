"""gRPC calls from real h2 streams cut into H2Chunk records: spans, statuses and metrics."""

from __future__ import annotations

import random

import pytest

from beyla_sidecar.bpf.events import ConnTuple, Role
from beyla_sidecar.export.prometheus import metric_name
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.grpc import CLIENT_METRICS, GRPC, SERVER_METRICS
from beyla_sidecar.protocols.http2 import HTTP2, StreamDone
from beyla_sidecar.protocols.instruments import DURATION_BOUNDS

from .h2wire import Wire, chunks

GRPC_CT = [("content-type", "application/grpc"), ("te", "trailers")]
METHOD = "/helloworld.Greeter/SayHello"
CONN = ConnTuple("10.0.0.1", 40000, "10.0.0.2", 50051)


def call(w: Wire, sid: int, path: str = METHOD, *, status: int | None = 0, trailers_only: bool = False,
         body: int = 12, messages: int = 1, t0: int = 100, ctype: str = "application/grpc") -> None:
    """One gRPC call at t0: request at t0, response headers at t0+10, a message every 10 after,
    trailers last (none when status is None)."""
    w.request(sid, "POST", path, body=17, extra=[("content-type", ctype), ("te", "trailers")],
              authority="greeter.default.svc:50051")
    w.flush(t0)
    if trailers_only:
        w.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"),
                                    ("grpc-status", str(status)), ("grpc-message", "no such user")], end_stream=True)
        w.flush(t0 + 10)
        return
    w.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
    w.flush(t0 + 10)
    for k in range(messages):
        w.server.send_data(sid, b"m" * body, end_stream=status is None and k == messages - 1)
        w.flush(t0 + 20 + 10 * k)
    if status is not None:
        w.server.send_headers(sid, [("grpc-status", str(status))], end_stream=True)
        w.flush(t0 + 20 + 10 * messages)


def run(w: Wire, role: Role = Role.SERVER, seed: int | None = None) -> tuple[HTTP2, list[StreamDone]]:
    h = HTTP2()
    return h, [d for c in chunks(w, role, None if seed is None else random.Random(seed)) for d in h.chunk(c)]


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
def test_unary_ok(seed: int | None) -> None:
    w = Wire()
    call(w, 1)
    h, (d,) = run(w, seed=seed)
    assert d.protocol is h.grpc and isinstance(d.protocol, GRPC)
    rq, rs = d.parsed.request, d.parsed.response
    assert (rq.start_ns, rq.end_ns, rq.size, rs.start_ns, rs.end_ns, rs.size) == (100, 100, 17, 110, 130, 12)  # type: ignore[union-attr]
    desc = d.protocol.describe(rq, rs, SpanKind.SERVER, False)
    assert desc.name == "helloworld.Greeter/SayHello" and desc.error_type is None
    assert desc.attributes == {"rpc.system": "grpc", "rpc.service": "helloworld.Greeter", "rpc.method": "SayHello",
                               "rpc.grpc.status_code": 0, "network.protocol.name": "http",
                               "network.protocol.version": "2"}
    client = d.protocol.describe(rq, rs, SpanKind.CLIENT, False)
    assert client.attributes["server.address"] == "greeter.default.svc"
    assert d.protocol.metric_values(rq, rs) == (30e-9,)


def test_trailers_only_not_found() -> None:
    """NOT_FOUND (5) in a trailers-only response: an error for the client only."""
    w = Wire()
    call(w, 1, status=5, trailers_only=True)
    _, (d,) = run(w, Role.CLIENT)
    rs = d.parsed.response
    assert (rs.status_code, rs.grpc_status, rs.start_ns, rs.end_ns) == (200, 5, 110, 110)  # type: ignore[union-attr]
    server = d.protocol.describe(d.parsed.request, rs, SpanKind.SERVER, False)
    client = d.protocol.describe(d.parsed.request, rs, SpanKind.CLIENT, False)
    assert server.attributes["rpc.grpc.status_code"] == 5 and server.error_type is None
    assert client.attributes["rpc.grpc.status_code"] == 5 and client.error_type == "NOT_FOUND"


@pytest.mark.parametrize(("code", "server_error"), [
    (1, None), (2, "UNKNOWN"), (3, None), (4, "DEADLINE_EXCEEDED"), (7, None), (12, "UNIMPLEMENTED"),
    (13, "INTERNAL"), (14, "UNAVAILABLE"), (15, "DATA_LOSS"), (16, None), (42, None)])
def test_error_types(code: int, server_error: str | None) -> None:
    w = Wire()
    call(w, 1, status=code)
    _, (d,) = run(w)
    server = d.protocol.describe(d.parsed.request, d.parsed.response, SpanKind.SERVER, False)
    client = d.protocol.describe(d.parsed.request, d.parsed.response, SpanKind.CLIENT, False)
    assert server.error_type == server_error
    assert client.error_type == (str(code) if code == 42 else GRPC_CODES[code])


GRPC_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
              "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
              "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


def test_server_streaming_lasts_until_end_stream() -> None:
    w = Wire()
    call(w, 1, "/pkg.Feed/Watch", messages=5, body=100)
    for seed in (None, 4):
        _, (d,) = run(w, seed=seed)
        rs = d.parsed.response
        assert (rs.start_ns, rs.end_ns, rs.size) == (110, 170, 500)  # type: ignore[union-attr]
        assert d.protocol.describe(d.parsed.request, rs, SpanKind.SERVER, False).name == "pkg.Feed/Watch"


def test_status_without_grpc_status() -> None:
    """No grpc-status: the RST_STREAM code or the HTTP status decides, as gRPC clients do."""
    w = Wire()
    call(w, 1, status=None)  # 200 and END_STREAM without trailers: UNKNOWN
    w.request(3, "POST", METHOD, extra=GRPC_CT)
    w.flush(300)
    w.client.reset_stream(3, 8)  # client cancelled (its deadline): CANCELLED
    w.flush(310)
    w.request(5, "POST", METHOD, extra=GRPC_CT)
    w.flush(400)
    w.response(5, 404)  # a proxy's 404: UNIMPLEMENTED
    w.flush(410)
    w.request(7, "POST", METHOD, extra=GRPC_CT)
    w.flush(500)
    w.server.reset_stream(7, 7)  # REFUSED_STREAM: UNAVAILABLE
    w.flush(510)
    _, out = run(w)
    got = {d.stream_id: d.protocol.describe(d.parsed.request, d.parsed.response, SpanKind.CLIENT, False) for d in out}
    assert {k: (v.attributes["rpc.grpc.status_code"], v.error_type) for k, v in got.items()} == {
        1: (2, "UNKNOWN"), 3: (1, "CANCELLED"), 5: (12, "UNIMPLEMENTED"), 7: (14, "UNAVAILABLE")}


def test_twenty_concurrent_calls() -> None:
    w = Wire()
    sids = [1 + 2 * k for k in range(20)]
    for k, sid in enumerate(sids):
        w.request(sid, "POST", f"/pkg.S/M{k}", body=5, extra=GRPC_CT)
    w.flush(100)
    for k, sid in enumerate(sids):
        w.server.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
        w.server.send_data(sid, b"r" * k)
    w.flush(200)
    for k, sid in enumerate(reversed(sids)):
        w.server.send_headers(sid, [("grpc-status", str(k % 3))], end_stream=True)
        w.flush(300 + k)
    h, out = run(w, seed=9)
    assert len(out) == 20 and all(d.protocol is h.grpc for d in out)
    for d in out:
        k = sids.index(d.stream_id)
        assert d.parsed.request.path == f"/pkg.S/M{k}" and d.parsed.response.size == k  # type: ignore[attr-defined,union-attr]
        assert d.parsed.response.grpc_status == (19 - k) % 3 and d.parsed.response.end_ns == 300 + 19 - k  # type: ignore[union-attr]


@pytest.mark.parametrize(("ctype", "grpc"), [("application/grpc", True), ("application/grpc+proto", True),
                                             ("application/grpc;charset=x", True), ("application/grpc-web", False),
                                             ("application/json", False)])
def test_content_type_decides(ctype: str, grpc: bool) -> None:
    w = Wire()
    call(w, 1, ctype=ctype)
    h, (d,) = run(w)
    assert (d.protocol is h.grpc) is grpc and (d.protocol is h) is not grpc


def test_metrics() -> None:
    w = Wire()
    call(w, 1, status=14)
    _, (d,) = run(w)
    g = d.protocol
    server = g.describe(d.parsed.request, d.parsed.response, SpanKind.SERVER, False)
    client = g.describe(d.parsed.request, d.parsed.response, SpanKind.CLIENT, False)
    assert g.metric_attributes(SpanKind.SERVER, CONN, server, None, frozenset()) == (
        SERVER_METRICS, ("grpc", "helloworld.Greeter", "SayHello", 14, "UNAVAILABLE"))
    assert g.metric_attributes(SpanKind.CLIENT, CONN, client, None, frozenset()) == (
        CLIENT_METRICS, ("grpc", "helloworld.Greeter", "SayHello", 14, "UNAVAILABLE", "greeter.default.svc", 50051))
    assert g.instruments(SpanKind.SERVER) is SERVER_METRICS and g.instruments(SpanKind.CLIENT) is CLIENT_METRICS
    (s,), (c,) = SERVER_METRICS.instruments, CLIENT_METRICS.instruments
    assert (s.name, s.unit, s.bounds, c.name, c.unit) == (
        "rpc.server.call.duration", "s", DURATION_BOUNDS, "rpc.client.call.duration", "s")
    assert metric_name(s.name, s.unit) == "rpc_server_call_duration_seconds"
    assert metric_name(c.name, c.unit) == "rpc_client_call_duration_seconds"
    assert g.path(d.parsed.request) is None and not g.detect(b"", b"")
