"""Where spans go: OTLP/gRPC and/or a stdout printer, each behind a bounded batch queue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ..config import Config
from .printers import PrintExporter


@dataclass(slots=True)
class ExportStats:
    queued: int = 0  # handed to the batch processor
    exported: int = 0
    failed: int = 0
    dropped: int = 0  # not queued: queue full

    @property
    def in_flight(self) -> int:
        """Spans queued or being exported right now."""
        return self.queued - self.exported - self.failed


class _Counting(SpanExporter):
    """Counts what the wrapped exporter delivered and what it failed to."""

    def __init__(self, inner: SpanExporter, stats: ExportStats) -> None:
        self._inner = inner
        self._stats = stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._stats.exported += len(spans)
        else:
            self._stats.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _otlp(endpoint: str) -> SpanExporter:
    # Imported lazily: grpc start-up costs ~100 ms and only OTLP users need it.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from .otlp_encode import SpanEncoder

    class Exporter(OTLPSpanExporter):
        """The SDK's exporter (retries, headers, TLS, compression) with the direct encoder."""

        _encoder = SpanEncoder()

        def _translate_data(self, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
            return ExportTraceServiceRequest.FromString(self._encoder.encode(data))

    return Exporter(endpoint=endpoint)


class TraceExport:
    """Fan-out of finished spans to the configured destinations."""

    def __init__(self, cfg: Config) -> None:
        self.stats: dict[str, ExportStats] = {}
        self._queue_size = cfg.span_queue_size
        self._processors: list[tuple[BatchSpanProcessor, ExportStats]] = []
        if cfg.traces_endpoint:
            self._add("otlp", _otlp(cfg.traces_endpoint))
        if cfg.printer != "disabled":
            self._add("stdout", PrintExporter(cfg.printer), schedule_delay_millis=200)

    @property
    def destinations(self) -> list[str]:
        return list(self.stats)

    def _add(self, name: str, exporter: SpanExporter, **batch: float) -> None:
        stats = self.stats[name] = ExportStats()
        processor = BatchSpanProcessor(_Counting(exporter, stats), max_queue_size=self._queue_size, **batch)
        self._processors.append((processor, stats))

    def submit(self, span: ReadableSpan) -> None:
        for processor, stats in self._processors:
            # The SDK's queue drops silently when full: refuse (and count) before it would.
            if stats.in_flight >= self._queue_size:
                stats.dropped += 1
                continue
            stats.queued += 1
            processor.on_end(span)

    def flush(self, timeout_millis: int = 5000) -> None:
        for processor, _ in self._processors:
            processor.force_flush(timeout_millis)

    def shutdown(self) -> None:
        for processor, _ in self._processors:
            processor.shutdown()
