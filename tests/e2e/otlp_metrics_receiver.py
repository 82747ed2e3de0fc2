"""A real OTLP/gRPC metrics receiver for tests: decodes ExportMetricsServiceRequest protobufs."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from .otlp_receiver import value

# (service.name, metric name, sorted attribute items) -> (time_unix_nano, count)
Latest = dict[tuple[str, str, tuple[tuple[str, object], ...]], tuple[int, int]]


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, port: int = 0) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        with self.lock:
            self.requests.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def resources(self) -> list[dict]:
        with self.lock:
            return [{a.key: value(a.value) for a in rm.resource.attributes}
                    for req in self.requests for rm in req.resource_metrics]

    def counts(self) -> dict[tuple[str, str, tuple[tuple[str, object], ...]], int]:
        """Latest cumulative histogram count per (service, metric, attributes)."""
        latest: Latest = {}
        with self.lock:
            for req in self.requests:
                for rm in req.resource_metrics:
                    service = next(value(a.value) for a in rm.resource.attributes if a.key == "service.name")
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            for dp in metric.histogram.data_points:
                                attrs = tuple(sorted((a.key, value(a.value)) for a in dp.attributes))
                                key = (service, metric.name, attrs)
                                if dp.time_unix_nano >= latest.get(key, (0, 0))[0]:
                                    latest[key] = (dp.time_unix_nano, dp.count)
        return {k: count for k, (_, count) in latest.items()}

    def __enter__(self) -> MetricsReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)
