"""Span exporters that print to stdout: one short human line, or one JSON object, per span."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def span_dict(span: ReadableSpan) -> dict[str, object]:
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": _hex(ctx.trace_id, 32),
        "span_id": _hex(ctx.span_id, 16),
        "parent_span_id": _hex(span.parent.span_id, 16) if span.parent else "",
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "resource": dict(span.resource.attributes),
    }


def span_line(span: ReadableSpan) -> str:
    a = span.attributes or {}
    ctx = span.get_span_context()
    assert ctx is not None and span.start_time is not None and span.end_time is not None
    started = datetime.fromtimestamp(span.start_time / 1e9, tz=timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    duration_ms = (span.end_time - span.start_time) / 1e6
    peer = f"{a.get('network.peer.address', '')}:{a.get('network.peer.port', '')}"
    res = span.resource.attributes
    return (f"{started} {span.kind.name:<6} {span.name} {a.get('http.response.status_code', '-')} "
            f"{duration_ms:.3f}ms {res.get('service.name', '')}[{res.get('process.pid', '')}] "
            f"peer={peer} trace={_hex(ctx.trace_id, 32)} span={_hex(ctx.span_id, 16)}")


class PrintExporter(SpanExporter):
    def __init__(self, fmt: str, out: IO[str] | None = None) -> None:
        self._render = span_line if fmt == "text" else (lambda s: json.dumps(span_dict(s), separators=(",", ":")))
        self._out = out or sys.stdout

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._out.write("".join(self._render(s) + "\n" for s in spans))
            self._out.flush()
        except (OSError, ValueError):
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass
