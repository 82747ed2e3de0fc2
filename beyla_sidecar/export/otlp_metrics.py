"""Periodic push of the cumulative metrics to an OTLP/gRPC collector, from its own thread.

Nothing queues: every export sends a fresh snapshot of cumulative state, so a collector
that is down or slow costs one failed (counted) export per interval and no memory, and the
first export after it comes back carries everything counted meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from .traces import ABORT_GRACE_SECONDS

log = structlog.get_logger()


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
        self.exports = 0  # attempted: each one then succeeds, fails or is abandoned
        self.failures = 0
        self.abandoned = 0  # cut short by the shutdown deadline
        self._aborted = False

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.export()
        self.export()  # the final one, with everything counted until close()

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
        if result is MetricExportResult.SUCCESS:
            return
        if self._aborted:
            self.abandoned += 1
        else:
            self.failures += 1

    def close(self) -> None:
        """Start the final export now."""
        self._stop.set()

    def stop(self, deadline: float) -> int:
        """Close, let the final export run until `deadline` (time.monotonic()), then abort it and
        stop the exporter. Returns the exports abandoned."""
        self.close()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._aborted = self._thread.is_alive()
        self._exporter.shutdown()  # closes the gRPC channel: the export in flight fails now, retries stop
        self._thread.join(ABORT_GRACE_SECONDS)
        return self.abandoned
