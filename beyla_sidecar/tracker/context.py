"""Trace identity: random ids, W3C traceparent, the sampling decision."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


_TUPLE_NEW = tuple.__new__  # a NamedTuple's own __new__ is one more Python call per context
_LOW_64 = (1 << 64) - 1


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


class TraceContext(NamedTuple):  # a tuple: built for every exchange, a frozen dataclass costs 3x
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


class Sampler(Protocol):
    """The OTEL_TRACES_SAMPLER decision for a new span.

    `parent_sampled` is the parent's sampled flag (remote: the traceparent's; local: the
    serving span's), None for a root span.
    """

    def __call__(self, trace_id: int, parent_sampled: bool | None) -> bool: ...


@dataclass(frozen=True, slots=True)
class AlwaysOn:
    def __call__(self, trace_id: int, parent_sampled: bool | None) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class AlwaysOff:
    def __call__(self, trace_id: int, parent_sampled: bool | None) -> bool:
        return False


TRACE_ID_LOW_64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class TraceIdRatio:
    """The OTel SDKs' TraceIdRatioBased: a pure function of the trace id's low 64 bits, so
    every service (and other SDKs) keeps or drops the same traces."""

    ratio: float
    bound: int = field(init=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"sampling ratio {self.ratio} is not within 0..1")
        object.__setattr__(self, "bound", round(self.ratio * (TRACE_ID_LOW_64 + 1)))

    def __call__(self, trace_id: int, parent_sampled: bool | None) -> bool:
        return trace_id & TRACE_ID_LOW_64 < self.bound


@dataclass(frozen=True, slots=True)
class ParentBased:
    """A parent's decision is followed (remote or local); `root` decides for root spans."""

    root: Sampler

    def __call__(self, trace_id: int, parent_sampled: bool | None) -> bool:
        return self.root(trace_id, None) if parent_sampled is None else parent_sampled


def make_sampler(name: str, ratio: float = 1.0) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER names; `ratio` (OTEL_TRACES_SAMPLER_ARG) for the ratio ones."""
    base = name.removeprefix("parentbased_")
    root: Sampler
    match base:
        case "always_on":
            root = AlwaysOn()
        case "always_off":
            root = AlwaysOff()
        case "traceidratio":
            root = TraceIdRatio(ratio)
        case _:
            raise ValueError(f"unknown sampler {name!r}")
    if name == "parentbased_always_on":
        return PARENT_BASED_ALWAYS_ON  # the default, recognised by identity on the hot path
    return ParentBased(root) if base != name else root


# The OTel default: keep what the caller kept, drop what it dropped, sample every root.
PARENT_BASED_ALWAYS_ON: Sampler = ParentBased(AlwaysOn())


def server_context(traceparent: str | None, sampler: Sampler = PARENT_BASED_ALWAYS_ON, kernel_trace: int = 0,
                   remote_span: int = 0) -> TraceContext:
    """Context of a server span: child of the caller's span when a valid traceparent came in,
    else when a TCP option brought the caller's (kernel_trace, remote_span); else a new trace,
    the kernel's trace id when it gave one (its outgoing calls carry it: propagation)."""
    incoming = parse_traceparent(traceparent) if traceparent is not None else None
    if incoming is None and remote_span and kernel_trace:
        incoming = kernel_trace, remote_span, True
    if incoming is None:
        return root_context(sampler, kernel_trace)
    trace_id, parent, parent_sampled = incoming
    return TraceContext(trace_id, new_span_id(), parent, True, sampler(trace_id, parent_sampled))


def client_context(serving: TraceContext | None, sampler: Sampler = PARENT_BASED_ALWAYS_ON, kernel_trace: int = 0,
                   kernel_span: int = 0) -> TraceContext:
    """Context of a client span: child of the server span its thread is serving, if any. With
    propagation the kernel chose the ids it wrote into the request: the span takes them (the
    callee names that span id as its parent); a serving span of another trace is no parent."""
    if kernel_span and kernel_trace:
        if serving is not None and serving.trace_id == kernel_trace:
            return TraceContext(kernel_trace, kernel_span, serving.span_id, False, serving.sampled)
        return TraceContext(kernel_trace, kernel_span, 0, False,
                            True if sampler is PARENT_BASED_ALWAYS_ON else sampler(kernel_trace, None))
    if serving is None:
        return root_context(sampler)
    return TraceContext(serving.trace_id, new_span_id(), serving.span_id, False,
                        sampler(serving.trace_id, serving.sampled))


def root_context(sampler: Sampler, trace_id: int = 0) -> TraceContext:
    """A new trace (in trace_id when given): both ids from one draw (random.getrandbits costs
    more than the bits)."""
    bits = random.getrandbits(192)
    if trace_id:
        trace_id, span_id = trace_id, bits & _LOW_64 or new_span_id()
    else:
        trace_id, span_id = bits >> 64, bits & _LOW_64
        if not trace_id or not span_id:
            trace_id, span_id = new_trace_id(), new_span_id()
    sampled = True if sampler is PARENT_BASED_ALWAYS_ON else sampler(trace_id, None)
    return _TUPLE_NEW(TraceContext, (trace_id, span_id, 0, False, sampled))
