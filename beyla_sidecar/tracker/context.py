"""Trace identity: random ids, W3C traceparent, and which server span a thread is serving."""

from __future__ import annotations

import random
from dataclasses import dataclass


def new_span_id() -> int:
    while True:
        value = random.getrandbits(64)
        if value:
            return value


def new_trace_id() -> int:
    while True:
        value = random.getrandbits(128)
        if value:
            return value


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: int
    span_id: int
    parent_span_id: int = 0  # 0: root span
    parent_remote: bool = False  # parent came from an incoming traceparent header
    sampled: bool = True


def parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    """(trace_id, parent_span_id, sampled) from a W3C traceparent, None if absent or invalid."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        version, trace_id, span_id, flags = int(parts[0], 16), int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if version == 0xFF or trace_id == 0 or span_id == 0 or (version == 0 and len(parts) != 4):
        return None
    return trace_id, span_id, bool(flags & 1)


def server_context(traceparent: str | None) -> TraceContext:
    """Context of a server span: child of the caller's span when a valid traceparent came in."""
    incoming = parse_traceparent(traceparent)
    if incoming is None:
        return TraceContext(new_trace_id(), new_span_id())
    trace_id, parent, sampled = incoming
    return TraceContext(trace_id, new_span_id(), parent, True, sampled)


def client_context(serving: TraceContext | None) -> TraceContext:
    """Context of a client span: child of the server span its thread is serving, if any."""
    if serving is None:
        return TraceContext(new_trace_id(), new_span_id())
    return TraceContext(serving.trace_id, new_span_id(), serving.span_id, False, serving.sampled)
