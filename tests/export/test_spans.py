"""Exchange -> OTel span conversion and the stdout printers."""

from __future__ import annotations

import io
import json

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from beyla_sidecar.bpf.events import ConnTuple
from beyla_sidecar.export.printers import PrintExporter
from beyla_sidecar.export.spans import Clock, to_span
from beyla_sidecar.protocols.base import SpanKind as ProtoKind
from beyla_sidecar.protocols.http1 import HTTP1, HttpRequest, HttpResponse
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange

CONN = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
RESOURCE = Resource({"service.name": "shop", "process.pid": 17})


class FixedClock(Clock):
    def sync(self) -> None:
        self.offset = 1_000_000_000_000


def exchange(kind: ProtoKind, status: int = 200, parent: int = 0, query: str = "") -> Exchange:
    req = HttpRequest(True, 5_000, 6_000, size=0, header_size=40, method="GET", path="/users/1",
                      query=query, version="1.1", host="shop.local:8080")
    resp = HttpResponse(False, 7_000, 9_000, size=12, header_size=50, status_code=status, version="1.1")
    ctx = TraceContext(0xABC, 0xDEF, parent, parent_remote=bool(parent))
    return Exchange(HTTP1(), kind, req, resp, ctx, 100, 101, 17, CONN)


def span_of(ex: Exchange, with_query: bool = False, route: str | None = None) -> ReadableSpan:
    desc = ex.protocol.describe(ex.request, ex.response, ex.kind, with_query, route=route)
    return to_span(ex, desc, RESOURCE, FixedClock())


def test_server_span() -> None:
    span = span_of(exchange(ProtoKind.SERVER, query="token=secret"), route="/users/{id}")
    assert span.name == "GET /users/{id}" and span.kind is SpanKind.SERVER
    assert span.start_time == 1_000_000_005_000 and span.end_time == 1_000_000_009_000
    assert span.context.trace_id == 0xABC and span.context.span_id == 0xDEF and span.parent is None
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes) == {
        "http.request.method": "GET", "url.path": "/users/1", "http.route": "/users/{id}", "url.scheme": "http",
        "network.protocol.version": "1.1", "http.response.status_code": 200, "http.response.body.size": 12,
        "server.address": "10.0.0.1", "server.port": 8080, "client.address": "10.0.0.2", "client.port": 40000,
        "network.peer.address": "10.0.0.2", "network.peer.port": 40000, "network.transport": "tcp",
    }


def test_client_span_with_parent_error_and_query() -> None:
    span = span_of(exchange(ProtoKind.CLIENT, status=404, parent=0x99, query="q=1"), with_query=True)
    assert span.name == "GET"  # no route: the method alone, never the raw path
    assert span.kind is SpanKind.CLIENT and span.parent is not None
    assert span.parent.span_id == 0x99 and span.parent.is_remote
    assert span.status.status_code is StatusCode.ERROR
    a = span.attributes
    assert a["error.type"] == "404" and a["url.query"] == "q=1"
    assert a["server.address"] == "shop.local" and a["server.port"] == 40000  # Host header, remote port
    assert "client.address" not in a


def test_server_5xx_is_an_error_4xx_is_not() -> None:
    assert span_of(exchange(ProtoKind.SERVER, 503)).attributes["error.type"] == "503"
    assert "error.type" not in span_of(exchange(ProtoKind.SERVER, 404)).attributes


def test_json_printer_line() -> None:
    out = io.StringIO()
    PrintExporter("json", out).export([span_of(exchange(ProtoKind.SERVER))])
    doc = json.loads(out.getvalue())
    assert set(doc) == {"name", "kind", "trace_id", "span_id", "parent_span_id", "start_time_unix_nano",
                        "end_time_unix_nano", "status", "attributes", "resource"}
    assert doc["trace_id"] == "%032x" % 0xABC and doc["span_id"] == "%016x" % 0xDEF
    assert doc["parent_span_id"] == "" and doc["kind"] == "SERVER" and doc["status"] == "UNSET"
    assert doc["resource"] == {"service.name": "shop", "process.pid": 17}


def test_text_printer_line() -> None:
    out = io.StringIO()
    PrintExporter("text", out).export([span_of(exchange(ProtoKind.CLIENT, 500), route="/users/{id}")])
    line = out.getvalue()
    assert line.count("\n") == 1
    assert " CLIENT GET /users/{id} 500 0.004ms shop[17] peer=10.0.0.2:40000 " in line
