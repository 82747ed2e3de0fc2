"""Spans leave the sidecar as real OTLP/gRPC and arrive with their resource."""

from __future__ import annotations

import sys
import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .pod import APPS, free_port
from .otlp_receiver import Receiver, value
from .test_http import start_python_server

pytestmark = pytest.mark.bpf


def test_spans_arrive_over_otlp_grpc(pod, start_sidecar) -> None:
    port = free_port()
    start_python_server(pod, port, inside=True, service="otlp-app")
    with Receiver() as receiver:
        sidecar = start_sidecar(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
            BEYLA_TRACE_PRINTER="disabled",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,team=core",
            BEYLA_K8S_POD_NAME="web-7d4f9-abcde", BEYLA_K8S_NAMESPACE="shop",
            BEYLA_K8S_CONTAINER_NAMES="web", BEYLA_K8S_DEPLOYMENT_NAME="web",
        )
        pod.run([sys.executable, str(APPS / "keepalive_client.py"), str(port), "4"])
        deadline = time.monotonic() + 20
        while len(receiver.spans()) < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sidecar.stop() == 0  # the final flush happens on SIGTERM
        received = receiver.spans()

    assert len(received) == 10  # 5 requests (4 GET + 1 POST), server and client side each
    servers = [(r, s) for r, s in received if s.kind == Span.SPAN_KIND_SERVER]
    clients = [(r, s) for r, s in received if s.kind == Span.SPAN_KIND_CLIENT]
    assert len(servers) == 5 and len(clients) == 5
    assert sorted(s.name for _, s in servers) == ["GET /hello"] * 4 + ["POST /echo"]
    resource, span = servers[0]
    assert resource["service.name"] == "otlp-app"
    assert resource["k8s.pod.name"] == "web-7d4f9-abcde" and resource["k8s.namespace.name"] == "shop"
    assert resource["k8s.deployment.name"] == "web" and resource["k8s.container.name"] == "web"
    assert resource["service.instance.id"] == "shop.web-7d4f9-abcde.web"
    assert resource["deployment.environment.name"] == "test" and resource["team"] == "core"
    assert resource["telemetry.distro.name"] == "beyla-sidecar"
    assert resource["process.pid"] > 0 and resource["process.executable.name"].startswith("python")
    assert "process.command_line" not in resource  # may carry secrets: BEYLA_INCLUDE_COMMAND_LINE
    attrs = {a.key: value(a.value) for a in span.attributes}
    assert attrs["http.request.method"] in ("GET", "POST") and attrs["server.port"] == port
    assert len(span.trace_id) == 16 and span.trace_id != bytes(16)
    assert len(span.span_id) == 8 and span.span_id != bytes(8)
    assert span.end_time_unix_nano >= span.start_time_unix_nano > 1_700_000_000 * 10**9
