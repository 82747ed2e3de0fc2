"""Periodic push of the cumulative metrics to an OTLP/gRPC collector, from its own thread.

Nothing queues: every export sends a fresh snapshot of cumulative state, so a collector
that is down or slow costs one failed (counted) export per interval and no memory, and the
first export after it comes back carries everything counted meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

log = structlog.get_logger()

# How long stop() lets the final export run before aborting its retries.
SHUTDOWN_GRACE_SECONDS = 5.0


def _otlp(endpoint: str, timeout: float) -> MetricExporter:
    # Imported lazily: grpc start-up costs ~100 ms and only OTLP users need it.
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=endpoint, timeout=timeout)


class MetricPush:
    """Exports `collect()` every `interval` seconds, and once more on stop()."""

    def __init__(self, collect: Callable[[], MetricsData], interval: float, timeout: float,
                 endpoint: str = "", exporter: MetricExporter | None = None) -> None:
        self._collect = collect
        self._interval = interval
        self._exporter = exporter or _otlp(endpoint, timeout)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="otlp-metrics", daemon=True)
        self.exports = 0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.export()
        self.export()

    def export(self) -> None:
        data = self._collect()
        if not data.resource_metrics:
            return
        self.exports += 1
        try:
            result = self._exporter.export(data)
        except Exception as exc:  # an exporter bug must not kill the export thread
            log.error("metric export raised", error=repr(exc))
            result = MetricExportResult.FAILURE
        if result is not MetricExportResult.SUCCESS:
            self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(SHUTDOWN_GRACE_SECONDS)
        self._exporter.shutdown()  # also aborts the retries of an export still running
        self._thread.join()
