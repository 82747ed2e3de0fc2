"""Prometheus text exposition and the scrape endpoint (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request

import psutil
import pytest
from opentelemetry.sdk.resources import Resource

from beyla_sidecar.export import selfmetrics
from beyla_sidecar.export.metrics import Metrics
from beyla_sidecar.export.prometheus import (
    Family,
    PrometheusServer,
    exposition,
    format_value,
    metric_name,
    render,
    sanitize,
)
from beyla_sidecar.protocols import all_protocols

from .test_metrics import exchange, record

RESOURCE = Resource({"service.name": "shop", "service.namespace": "prod", "k8s.pod.name": "shop-1",
                     "host.name": "node-a", "process.pid": 7})


def page() -> str:
    m = Metrics(all_protocols())
    sm = m.service("shop", RESOURCE)
    record(sm, exchange(duration_ns=20_000_000))
    record(sm, exchange(duration_ns=300_000_000))
    return exposition(m.snapshot(), selfmetrics.families(selfmetrics.SelfStats(
        events_read=10, parse_failures={"http": 2}, protocol_state_drops={"redis": 0, "postgresql": 5}, spans_dropped={"otlp": 3}, spans_abandoned={"otlp": 4},
        metric_exports_abandoned=1, context_propagation={"injected": 6, "doubt": 1}), psutil.Process()))


def lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_names() -> None:
    assert metric_name("http.server.request.duration", "s") == "http_server_request_duration_seconds"
    assert metric_name("http.server.request.body.size", "By") == "http_server_request_body_size_bytes"
    assert sanitize("k8s.pod.name") == "k8s_pod_name" and sanitize("9x-y") == "_9x_y"
    assert [format_value(v) for v in (1.0, 0.005, 1048576.0, float("inf"), 3)] == ["1", "0.005", "1048576", "+Inf", "3"]


def test_histogram_lines() -> None:
    text = page()
    labels = ('service_name="shop",service_namespace="prod",k8s_pod_name="shop-1",'
              'http_request_method="GET",http_response_status_code="200",http_route="/users/{id}"')
    buckets = lines(text, "http_server_request_duration_seconds_bucket{")
    assert len(buckets) == 15  # 14 boundaries + +Inf, cumulative
    assert f"http_server_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 0" in buckets
    assert f"http_server_request_duration_seconds_bucket{{{labels},le=\"0.025\"}} 1" in buckets
    assert f"http_server_request_duration_seconds_bucket{{{labels},le=\"0.5\"}} 2" in buckets
    assert f"http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2" in buckets
    assert f"http_server_request_duration_seconds_count{{{labels}}} 2" in text
    assert f"http_server_request_duration_seconds_sum{{{labels}}} 0.32" in text
    assert "# TYPE http_server_request_duration_seconds histogram" in text
    assert "# TYPE http_server_response_body_size_bytes histogram" in text


def test_target_info_and_self_metrics() -> None:
    text = page()
    [info] = lines(text, "target_info{")
    assert 'service_name="shop"' in info and 'host_name="node-a"' in info and 'process_pid="7"' in info
    assert "beyla_sidecar_events_read_total 10" in text
    assert 'beyla_sidecar_parse_failures_total{protocol="http"} 2' in text
    assert lines(text, "beyla_sidecar_protocol_state_dropped_total{") == [
        'beyla_sidecar_protocol_state_dropped_total{protocol="postgresql"} 5',
        'beyla_sidecar_protocol_state_dropped_total{protocol="redis"} 0']
    assert 'beyla_sidecar_spans_dropped_total{exporter="otlp"} 3' in text
    assert 'beyla_sidecar_spans_abandoned_total{exporter="otlp"} 4' in text
    assert "beyla_sidecar_metric_exports_abandoned_total 1" in text
    assert lines(text, "beyla_sidecar_context_propagation_total{") == [
        'beyla_sidecar_context_propagation_total{outcome="doubt"} 1',
        'beyla_sidecar_context_propagation_total{outcome="injected"} 6']
    assert "# TYPE beyla_sidecar_resident_memory_bytes gauge" in text
    [rss] = lines(text, "beyla_sidecar_resident_memory_bytes ")
    assert int(rss.split()[1]) > 1_000_000


def test_label_values_are_escaped() -> None:
    fam = Family("x_total", "counter", "a\\b\nc", [("x_total", {"path": 'a"b\\c\nd'}, 1)])
    assert render([fam]) == ('# HELP x_total a\\\\b c\n# TYPE x_total counter\n'
                             'x_total{path="a\\"b\\\\c\\nd"} 1\n')


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_accepts_the_page() -> None:
    result = subprocess.run(["promtool", "check", "metrics"], input=page().encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def test_endpoint() -> None:
    ready = [False]
    server = PrometheusServer("127.0.0.1", 0, page, lambda: ready[0])
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        status, ctype, body = get(base + "/metrics")
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert "http_server_request_duration_seconds_bucket" in body
        assert get(base + "/healthz")[0] == 200
        assert get(base + "/readyz")[0] == 503
        ready[0] = True
        assert get(base + "/readyz")[0] == 200
        assert get(base + "/nope")[0] == 404
    finally:
        server.stop()


def test_a_failing_collector_gives_500_and_the_endpoint_survives() -> None:
    def broken() -> str:
        raise RuntimeError("bug")

    server = PrometheusServer("127.0.0.1", 0, broken, lambda: True)
    server.start()
    try:
        assert get(f"http://127.0.0.1:{server.port}/metrics")[0] == 500
        assert get(f"http://127.0.0.1:{server.port}/healthz")[0] == 200
    finally:
        server.stop()
