"""Where spans go: OTLP/gRPC and/or a stdout printer, each behind a bounded batch queue.

The queue holds encoded spans (SpanItem: two byte strings), not SDK span objects; a worker
thread per destination exports them in batches with the OTel batch span processor's settings
(OTEL_BSP_*). Every span is counted once: queued, then exported, failed, or abandoned when the
shutdown deadline comes first; or dropped when its queue is full or shut down. Unsampled
exchanges never get here.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog
from opentelemetry.sdk.resources import Resource

from ..config import Config
from ..bpf.events import ConnTuple
from ..protocols.base import SpanDescription
from ..tracker.exchange import Exchange
from .otlp_encode import SpanItem, encode_request, encode_resource
from .printers import PrintSink
from .spans import Clock, SpanEncoder, SpanTemplate, SpanWriter

log = structlog.get_logger()

PRINTER_DELAY_SECONDS = 0.2  # someone is watching stdout: print soon, whatever OTEL_BSP_SCHEDULE_DELAY says
# How long an export aborted at the shutdown deadline (its gRPC channel closed) may take to return.
ABORT_GRACE_SECONDS = 0.5
# Added to the SDK's channel options. No BDP probes: they size the window of what we receive
# (tiny responses) and cost the channel's threads ~9 of the ~30 wake-ups of a 512-span export,
# 0.3-0.5 ms of its ~1.5 ms of CPU (benchmarks: Python receiver, 2 exports a second).
CHANNEL_OPTIONS = (("grpc.http2.bdp_probe", 0),)


@dataclass(slots=True)
class ExportStats:
    """Each field has one writer: the hot path (queued, dropped), the worker (exported, failed) or
    shutdown() (abandoned)."""

    queued: int = 0
    exported: int = 0
    failed: int = 0
    dropped: int = 0  # not queued: queue full, or exporter shut down
    abandoned: int = 0  # queued, but still queued or being exported when the shutdown deadline came


class SpanSink(Protocol):
    """A destination: exports one batch, True when it was delivered."""

    def export(self, items: Sequence[SpanItem]) -> bool: ...

    def shutdown(self) -> None: ...


class BatchSettings(NamedTuple):
    max_queue_size: int
    max_batch_size: int
    schedule_delay: float  # seconds
    export_timeout: float  # seconds

    @classmethod
    def from_config(cls, cfg: Config) -> BatchSettings:
        return cls(cfg.span_queue_size, cfg.span_batch_size, cfg.span_schedule_delay, cfg.span_export_timeout)


class BatchQueue:
    """Bounded queue + worker thread: exports a batch when one is full or the delay is up."""

    def __init__(self, name: str, sink: SpanSink, settings: BatchSettings) -> None:
        self.name = name
        self.stats = ExportStats()
        self._sink = sink
        self._max_queue_size = settings.max_queue_size
        self._max_batch_size = settings.max_batch_size
        self._delay = settings.schedule_delay
        self._queue: deque[SpanItem] = deque()  # append/popleft are atomic: no lock on the hot path
        self._wake = threading.Event()
        self._delivered = threading.Event()  # set by the worker each time a batch left the queue
        self._stalled = False  # the producer's last wait for room saw no batch leave (make_room)
        self._closed = False
        self._aborted = False  # the shutdown deadline passed: export nothing more
        self._worker = threading.Thread(target=self._run, name=f"span-export-{name}", daemon=True)
        self._worker.start()

    def put(self, item: SpanItem) -> None:
        queue = self._queue
        if len(queue) >= self._max_queue_size or self._closed:
            self.stats.dropped += 1
            return
        queue.append(item)
        self.stats.queued += 1
        if len(queue) >= self._max_batch_size and not self._wake.is_set():
            self._wake.set()

    def make_room(self, burst: int, timeout: float) -> None:
        """Before the producer queues up to `burst` spans: if they would not fit and the worker has
        a full batch to take, wait up to `timeout` for it to take one, so that a burst stays in the
        ring buffer (megabytes) instead of overflowing this queue. A worker that took nothing
        during the last wait (a collector down, retrying) is not waited for again until it takes a
        batch: the producer's metrics must not slow down with it."""
        queue = self._queue
        if (self._stalled or self._closed or len(queue) + burst <= self._max_queue_size
                or len(queue) < self._max_batch_size):
            return
        self._delivered.clear()
        if len(queue) + burst > self._max_queue_size:  # the worker may have taken one meanwhile
            self._stalled = not self._delivered.wait(timeout)

    def _run(self) -> None:
        while not self._closed:
            full = self._wake.wait(self._delay)
            self._wake.clear()
            if not self._closed:  # woken by a full batch: send full ones, the rest waits for the delay
                self._export(full_batches_only=full)
        self._export()  # what was queued before close()

    def _export(self, full_batches_only: bool = False) -> None:
        queue, size = self._queue, self._max_batch_size
        while queue and (len(queue) >= size or not full_batches_only) and not self._aborted:
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            self._stalled = False
            self._delivered.set()
            self._deliver(batch)

    def _deliver(self, batch: list[SpanItem]) -> None:
        try:
            ok = self._sink.export(batch)
        except Exception:  # an exporter bug must not kill the export thread
            log.exception("span export raised", exporter=self.name, spans=len(batch))
            ok = False
        if ok:
            self.stats.exported += len(batch)
        elif not self._aborted:  # else cut short at the deadline: shutdown() counts it abandoned
            self.stats.failed += len(batch)

    def close(self) -> None:
        """Refuse new spans; the worker exports the queued ones now."""
        self._closed = True
        self._wake.set()

    def shutdown(self, deadline: float) -> int:
        """Close, let the worker export until `deadline` (time.monotonic()), then abort its export
        and stop the sink. Returns the spans abandoned."""
        self.close()
        self._worker.join(max(0.0, deadline - time.monotonic()))
        self._aborted = self._worker.is_alive()
        self._sink.shutdown()  # closes the gRPC channel: the export in flight fails now, retries stop
        self._worker.join(ABORT_GRACE_SECONDS)
        s = self.stats
        # Whatever is neither delivered nor failed: still queued, or in the export cut short (even
        # one whose sink ignored the abort).
        s.abandoned = s.queued - s.exported - s.failed
        return s.abandoned


def _otlp(endpoint: str, timeout: float) -> SpanSink:
    # Imported lazily: grpc start-up costs ~100 ms and only OTLP users need it.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
    from opentelemetry.sdk.trace.export import SpanExportResult

    export_method = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    class Exporter(OTLPSpanExporter):
        """The SDK's exporter (endpoint, headers, TLS, compression, retries with backoff), sending our
        bytes as they are: the generated stub would parse and re-serialize them (~2 us per span)."""

        def __init__(self) -> None:
            super().__init__(endpoint=endpoint, channel_options=CHANNEL_OPTIONS)
            self._timeout = min(self._timeout, timeout)  # per export, retries included
            self._raw_stub()  # also for SDKs older than the reconnect hook below

        def _initialize_channel_and_stub(self) -> None:  # the SDK reconnects through it
            super()._initialize_channel_and_stub()
            self._raw_stub()

        def _raw_stub(self) -> None:
            self._client = _RawStub(self._channel.unary_unary(
                export_method, request_serializer=None,
                response_deserializer=ExportTraceServiceResponse.FromString))

        def _translate_data(self, data: Sequence[SpanItem]) -> bytes:  # type: ignore[override]
            return encode_request(data)

    class Sink:
        def __init__(self) -> None:
            self._exporter = Exporter()

        def export(self, items: Sequence[SpanItem]) -> bool:
            return self._exporter.export(items) is SpanExportResult.SUCCESS  # type: ignore[arg-type]

        def shutdown(self) -> None:
            self._exporter.shutdown()

    return Sink()


@dataclass(frozen=True, slots=True)
class _RawStub:
    """TraceService taking an already serialized ExportTraceServiceRequest."""

    Export: Callable[..., object]  # noqa: N815 (the gRPC method name the SDK calls)


class TraceExport:
    """Encodes sampled exchanges once and fans them out to the configured destinations."""

    def __init__(self, cfg: Config, clock: Clock) -> None:
        self._encoder = SpanEncoder(clock)
        self._queues: list[BatchQueue] = []
        settings = BatchSettings.from_config(cfg)
        if cfg.traces_endpoint:
            self.add("otlp", _otlp(cfg.traces_endpoint, settings.export_timeout), settings)
        if cfg.printer != "disabled":
            self.add("stdout", PrintSink(cfg.printer), settings._replace(schedule_delay=PRINTER_DELAY_SECONDS))

    def add(self, name: str, sink: SpanSink, settings: BatchSettings) -> None:
        self._queues.append(BatchQueue(name, sink, settings))

    @property
    def stats(self) -> dict[str, ExportStats]:
        return {q.name: q.stats for q in self._queues}

    @property
    def destinations(self) -> list[str]:
        return [q.name for q in self._queues]

    @staticmethod
    def resource(resource: Resource) -> bytes:
        """A process's resource, encoded once; pass it to every submit() of its spans."""
        return encode_resource(resource.attributes)

    @property
    def enabled(self) -> bool:
        """Does any destination take spans? (If not, exchanges need no trace context.)"""
        return bool(self._queues)

    def template(self, desc: SpanDescription, sizes: tuple[str | None, str | None]) -> SpanTemplate:
        return self._encoder.template(desc, sizes)

    def submit(self, ex: Exchange, template: SpanTemplate, resource: bytes) -> None:
        """Queue the span of a sampled exchange, of the shape `template` encodes, on every destination."""
        self.put(resource, self._encoder.encode(ex, template))

    def writer(self, conn: ConnTuple, server: bool, template: SpanTemplate) -> SpanWriter:
        """What encodes a connection's spans of `template` (tracker/known.py's short way: put() them)."""
        return self._encoder.writer(conn, server, template)

    def make_room(self, burst: int, timeout: float) -> None:
        """BatchQueue.make_room on every destination: each may wait up to `timeout`."""
        for queue in self._queues:
            queue.make_room(burst, timeout)

    def put(self, resource: bytes, span: bytes) -> None:
        """Queue an encoded span (SpanWriter) of the process of `resource` on every destination."""
        item = (resource, span)
        for queue in self._queues:
            queue.put(item)

    def shutdown(self, deadline: float) -> dict[str, int]:
        """Export what is queued until `deadline` (time.monotonic()), every destination at once;
        the spans abandoned, by destination."""
        for queue in self._queues:
            queue.close()  # all final exports run together, each within the same deadline
        return {queue.name: queue.shutdown(deadline) for queue in self._queues}
