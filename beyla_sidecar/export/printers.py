"""Span printers for stdout: one short human line, or one JSON object, per span.

They read the same encoded spans the OTLP exporter sends (decoded with the official protobuf
classes, off the hot path), so what is printed is exactly what a collector would receive.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

from .otlp_encode import SpanItem


def _value(v: AnyValue) -> object:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _attributes(kvs: Sequence[KeyValue]) -> dict[str, object]:
    return {kv.key: _value(kv.value) for kv in kvs}


def span_dict(span: Span, resource: dict[str, object]) -> dict[str, object]:
    return {
        "name": span.name,
        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        "attributes": _attributes(span.attributes),
        "resource": resource,
    }


def span_json(span: Span, resource: dict[str, object]) -> str:
    return json.dumps(span_dict(span, resource), separators=(",", ":"))


def _outcome(a: dict[str, object]) -> object:
    """The status code the protocol gave (the semantic conventions name every protocol's
    `*.status_code`), else its `error.type`, else `-`."""
    for key, value in a.items():
        if key.endswith(".status_code"):
            return value
    return a.get("error.type", "-")


def span_line(span: Span, resource: dict[str, object]) -> str:
    a = _attributes(span.attributes)
    started = datetime.fromtimestamp(span.start_time_unix_nano / 1e9, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    peer = f"{a.get('network.peer.address', '')}:{a.get('network.peer.port', '')}"
    kind = Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")
    return (f"{started} {kind:<6} {span.name} {_outcome(a)} "
            f"{duration_ms:.3f}ms {resource.get('service.name', '')}[{resource.get('process.pid', '')}] "
            f"peer={peer} trace={span.trace_id.hex()} span={span.span_id.hex()}")


class PrintSink:
    """Writes spans to `out` (stdout) as `text` lines or `json` objects."""

    def __init__(self, fmt: str, out: IO[str] | None = None) -> None:
        self._render = span_line if fmt == "text" else span_json
        self._out = out or sys.stdout

    def export(self, items: Sequence[SpanItem]) -> bool:
        resources: dict[bytes, dict[str, object]] = {}
        lines = []
        for encoded_resource, span in items:
            resource = resources.get(encoded_resource)
            if resource is None:
                resource = resources[encoded_resource] = _attributes(Resource.FromString(encoded_resource).attributes)
            lines.append(self._render(ScopeSpans.FromString(span).spans[0], resource) + "\n")  # framed
        try:
            self._out.write("".join(lines))
            self._out.flush()
        except (OSError, ValueError):
            return False
        return True

    def shutdown(self) -> None:
        pass
