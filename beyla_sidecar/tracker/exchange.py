"""The tracker's output: one request joined with its response, with its trace identity."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..bpf.events import ConnTuple
from ..protocols.base import Message, Protocol, SpanKind
from .context import TraceContext
from .known import Known


@dataclass(slots=True)
class Exchange:
    protocol: Protocol
    kind: SpanKind
    request: Message
    response: Message | None
    context: TraceContext | None  # None: no span destination, no trace identity
    pid: int  # host pid
    tid: int  # host tid
    ns_pid: int
    conn: ConnTuple
    tls: bool = False  # parsed from TLS plaintext (the library probes), not socket bytes
    known: Known | None = field(default=None, compare=False)  # its records' key, to learn once its shape is worked out (known.py)

    @property
    def start_ns(self) -> int:
        return self.request.start_ns

    @property
    def end_ns(self) -> int:
        return self.response.end_ns if self.response is not None else self.request.end_ns
