"""The stdout printers, fed the same encoded spans as the OTLP exporter."""

from __future__ import annotations

import io
import json

from beyla_sidecar.export.otlp_encode import SpanItem, encode_resource
from beyla_sidecar.export.printers import PrintSink
from beyla_sidecar.protocols.base import SpanDescription, SpanKind

from .test_spans import SERVER_DESC, TRACE_ID, WALL_OFFSET, encode, exchange

RESOURCE = encode_resource({"service.name": "shop", "process.pid": 17})


def item(kind: SpanKind, desc: SpanDescription, parent: int = 0) -> SpanItem:
    return (RESOURCE, encode(exchange(kind, parent=parent), desc))


def test_json_printer_line() -> None:
    out = io.StringIO()
    assert PrintSink("json", out).export([item(SpanKind.SERVER, SERVER_DESC)])
    doc = json.loads(out.getvalue())
    assert doc == {
        "name": "GET /users/{id}", "kind": "SERVER", "trace_id": "%032x" % TRACE_ID, "span_id": "%016x" % 0xDEF,
        "parent_span_id": "", "start_time_unix_nano": WALL_OFFSET + 5_000, "end_time_unix_nano": WALL_OFFSET + 9_000,
        "status": "UNSET",
        "attributes": {"http.request.method": "GET", "url.path": "/users/1", "http.route": "/users/{id}",
                       "http.response.status_code": 200, "http.response.body.size": 12,
                       "network.peer.address": "10.0.0.2",
                       "network.peer.port": 40000, "network.transport": "tcp", "server.address": "10.0.0.1",
                       "server.port": 8080, "client.address": "10.0.0.2", "client.port": 40000},
        "resource": {"service.name": "shop", "process.pid": 17},
    }


def test_text_printer_lines() -> None:
    out = io.StringIO()
    error = SpanDescription("GET /users/{id}", {"http.response.status_code": 500}, error_type="500")
    assert PrintSink("text", out).export([item(SpanKind.CLIENT, error, parent=0x99), item(SpanKind.SERVER, SERVER_DESC)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert (f" CLIENT GET /users/{{id}} 500 0.004ms shop[17] peer=10.0.0.2:40000 trace={TRACE_ID:032x} "
            f"span={0xDEF:016x}") in lines[0]
    assert " SERVER GET /users/{id} 200 0.004ms shop[17] " in lines[1]


def test_text_printer_status_is_what_the_protocol_describes() -> None:
    out = io.StringIO()
    grpc = SpanDescription("shop.Cart/Add", {"rpc.grpc.status_code": 14}, error_type="UNAVAILABLE")
    incomplete = SpanDescription("GET", {"http.request.method": "GET"}, error_type="incomplete")
    redis = SpanDescription("SET", {"db.system.name": "redis"})
    assert PrintSink("text", out).export([item(SpanKind.CLIENT, d) for d in (grpc, incomplete, redis)])
    assert [line.split()[3] for line in out.getvalue().splitlines()] == ["14", "incomplete", "-"]


def test_closed_output_is_a_failed_export() -> None:
    out = io.StringIO()
    out.close()
    assert PrintSink("text", out).export([item(SpanKind.SERVER, SERVER_DESC)]) is False
