"""RED metrics end to end: real probes, a real Prometheus scraping the sidecar, a real OTLP receiver.

Counts are exact: what curl sent per route and status is what PromQL and the OTLP receiver see.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from .otlp_metrics_receiver import MetricsReceiver
from .otlp_receiver import Receiver
from .pod import Pod, free_port
from .prometheus_server import Prometheus, available
from .nginx import start_nginx
from .test_http import start_python_server

pytestmark = pytest.mark.bpf

SERVICE = "metrics-app"
LABELS = ("http_route", "http_response_status_code")
# (curl arguments, route, status, count); curl's [a-b] globs send one request per value on one
# keep-alive connection; the ids differ per request, the route must not.
LOAD = [
    (["{base}/users/[1001-1040]"], "/users/{id}", "200", 40),
    (["{base}/items/sku-[1-25]"], "/items/{sku}", "404", 25),  # a BEYLA_ROUTES_PATTERNS route
    (["{base}/error?n=[1-15]"], "/error", "500", 15),
    (["-d", "hello", "{base}/echo?n=[1-10]"], "/echo", "201", 10),
    (["{base}/healthz?n=[1-20]"], None, "404", 20),  # BEYLA_ROUTES_IGNORE: in no metric
]
EXPECTED = {(route, status): float(n) for _, route, status, n in LOAD if route}


def send_load(pod: Pod, port: int) -> None:
    for args, *_ in LOAD:
        pod.run(["curl", "-sS", "--fail-early", *[a.format(base=f"http://127.0.0.1:{port}") for a in args]])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if m and m.group(1) == name and all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
            total += float(m.group(3))
    return total


def sidecar_env(prom_port: int, **extra: str) -> dict[str, str]:
    return {"BEYLA_PROMETHEUS_PORT": str(prom_port), "BEYLA_PROMETHEUS_ADDRESS": "127.0.0.1",
            "BEYLA_TRACE_PRINTER": "disabled", **extra}


@pytest.mark.skipif(not available(), reason="the Debian package prometheus is not installed (make test-deps)")
def test_prometheus_and_otlp_see_exactly_what_was_sent(pod: Pod, start_sidecar) -> None:
    app, prom_port = free_port(), free_port()
    start_python_server(pod, app, inside=True, service=SERVICE)
    with MetricsReceiver() as receiver:
        sidecar = start_sidecar(**sidecar_env(
            prom_port,
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
            OTEL_METRIC_EXPORT_INTERVAL="1000",
            BEYLA_ROUTES_PATTERNS="/items/:sku",
            BEYLA_ROUTES_IGNORE="/healthz",
            BEYLA_K8S_POD_NAME="shop-7d4f9-abcde", BEYLA_K8S_NAMESPACE="shop", BEYLA_K8S_CONTAINER_NAMES="web",
        ))
        prometheus = Prometheus(pod.tmp, prom_port)
        try:
            send_load(pod, app)
            server_counts = prometheus.wait_for(
                f'sum by (http_route, http_response_status_code) '
                f'(http_server_request_duration_seconds_count{{service_name="{SERVICE}"}})', LABELS, EXPECTED)
            assert server_counts == EXPECTED
            # the +Inf bucket, the body-size histograms and curl's client side agree
            assert prometheus.by(f'sum(http_server_request_duration_seconds_bucket{{service_name="{SERVICE}",'
                                 f'le="+Inf"}})') == {(): 90.0}
            assert prometheus.by(f'sum(http_server_request_body_size_bytes_count{{service_name="{SERVICE}"}})') \
                == {(): 90.0}
            assert prometheus.by(f'sum(http_server_request_body_size_bytes_sum{{service_name="{SERVICE}"}})') \
                == {(): 50.0}  # 10 POSTs of "hello"
            client = prometheus.wait_for(
                'sum by (http_route, http_response_status_code) '
                '(http_client_request_duration_seconds_count{service_name="curl"})', LABELS, EXPECTED)
            assert client == EXPECTED
            errors = prometheus.by(f'sum by (error_type) (http_server_request_duration_seconds_count'
                                   f'{{service_name="{SERVICE}",error_type!=""}})', "error_type")
            assert errors == {("500",): 15.0}
            [info] = prometheus.query(f'target_info{{service_name="{SERVICE}"}}')
            assert info["metric"]["k8s_pod_name"] == "shop-7d4f9-abcde"
            assert info["metric"]["service_instance_id"] == "shop.shop-7d4f9-abcde.web"
            assert prometheus.by('beyla_sidecar_events_lost_total') == {(): 0.0}
            assert prometheus.by('beyla_sidecar_requests_completed_total')[()] >= 2 * 110
            assert prometheus.by('up') == {(): 1.0}

            otlp = {}
            deadline = time.monotonic() + 20
            while otlp != EXPECTED and time.monotonic() < deadline:
                time.sleep(0.5)
                otlp = {}
                for (service, name, attrs), count in receiver.counts().items():
                    a = dict(attrs)
                    if service == SERVICE and name == "http.server.request.duration":
                        key = (a["http.route"], str(a["http.response.status_code"]))
                        otlp[key] = otlp.get(key, 0) + float(count)
            assert otlp == EXPECTED
            resource = next(r for r in receiver.resources() if r["service.name"] == SERVICE)
            assert resource["k8s.pod.name"] == "shop-7d4f9-abcde" and "process.pid" not in resource
        finally:
            prometheus.close()
            assert sidecar.stop() == 0


def test_route_cap_and_cardinality(pod: Pod, start_sidecar) -> None:
    web, prom_port = free_port(), free_port()
    start_nginx(pod, web)  # nginx: fast enough for thousands of requests (404s for these paths)
    start_sidecar(**sidecar_env(prom_port, BEYLA_ROUTES_MAX_PER_SERVICE="3"))
    base = f"http://127.0.0.1:{web}"
    pod.run(["curl", "-sS", f"{base}/users/[1-3000]"])  # 3000 distinct ids: one route
    pod.run(["curl", "-sS", f"{base}/index.html", f"{base}/a[1-2]", f"{base}/other/[1-5]", f"{base}/more/[1-5]"])
    count = "http_server_request_duration_seconds_count"
    deadline = time.monotonic() + 20
    while sample(text := scrape(prom_port), count, service_name="nginx") < 3013 and time.monotonic() < deadline:
        time.sleep(0.2)
    routes = set(re.findall(r'http_server_request_duration_seconds_count\{[^}]*http_route="([^"]*)"', text))
    assert routes == {"/users/{id}", "/index.html", "/a1", "/**"}  # cap 3, the rest overflowed
    assert sample(text, count, service_name="nginx", http_route="/users/{id}") == 3000
    assert sample(text, count, service_name="nginx", http_route="/**") == 11
    assert sample(text, "beyla_sidecar_route_overflows_total", service_name="nginx") == 11


def test_collector_down_bounded_memory_counted_failures_then_recovery(pod: Pod, start_sidecar) -> None:
    web, prom_port, collector = free_port(), free_port(), free_port()
    start_nginx(pod, web)
    start_sidecar(**sidecar_env(
        prom_port, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector}",
        OTEL_METRIC_EXPORT_INTERVAL="500", OTEL_METRIC_EXPORT_TIMEOUT="1000", OTEL_EXPORTER_OTLP_TIMEOUT="1"))
    rounds, per_round = 4, 5000
    rss = []
    for _ in range(rounds):
        pod.run(["curl", "-sS", f"http://127.0.0.1:{web}/users/[1-{per_round}]"], timeout=120)
        time.sleep(1)
        rss.append(sample(scrape(prom_port), "beyla_sidecar_resident_memory_bytes"))
    text = scrape(prom_port)
    sent = rounds * per_round
    assert sample(text, "beyla_sidecar_metric_exports_failed_total") >= 2
    assert sample(text, "beyla_sidecar_spans_exported_total", exporter="otlp") == 0
    dropped = sample(text, "beyla_sidecar_spans_dropped_total", exporter="otlp")
    failed = sample(text, "beyla_sidecar_spans_failed_total", exporter="otlp")
    assert dropped > 0 and dropped + failed <= 2 * sent
    # Spans beyond the 2048-span queue are dropped; metrics are cumulative state: RSS stops growing.
    print(f"sidecar RSS after each round of {2 * per_round} exchanges, collector down: "
          f"{[round(r / 2**20, 1) for r in rss]} MiB")
    assert rss[-1] - rss[1] < 16 * 2**20
    assert rss[-1] < 250 * 2**20

    with MetricsReceiver(collector) as receiver:  # the collector comes up late: everything arrives
        key = ("nginx", "http.server.request.duration",
               (("http.request.method", "GET"), ("http.response.status_code", 404), ("http.route", "/users/{id}")))
        deadline = time.monotonic() + 30
        while receiver.counts().get(key) != sent and time.monotonic() < deadline:
            time.sleep(0.5)
        assert receiver.counts().get(key) == sent


class SlowCollector(Receiver):
    """Answers each export after 90 ms: alive, but slower than the traffic, and each batch leaves the
    span queue within the 100 ms the sidecar waits for one (pipeline.SPAN_ROOM_SECONDS)."""

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        time.sleep(0.09)
        return super().Export(request, context)


def test_a_collector_slower_than_the_traffic_costs_spans_never_exchanges(pod: Pod, start_sidecar) -> None:
    """The span queue makes the sidecar wait for the exporter only while the ring buffer is less
    than half full: past that, spans are dropped and counted, and no record is lost in the kernel
    (metrics exact). Waiting for each batch would drain ~5 700 records a second here."""
    web, prom_port, connections = free_port(), free_port(), 16
    start_nginx(pod, web, {"index.html": b"ok\n"})
    pace = pod.tmp / "pace.lua"
    pace.write_text("function delay() return 1 end\n")  # ~1 ms between a connection's requests
    with SlowCollector() as collector:
        start_sidecar(**sidecar_env(prom_port, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{collector.port}",
                                    BEYLA_RINGBUF_SIZE=str(2 << 20)))  # ~8 000 exchanges
        out = pod.run(["wrk", "-t1", f"-c{connections}", "-d4s", "-s", str(pace), f"http://127.0.0.1:{web}/index.html"],
                      inside=False, timeout=60).stdout.decode()  # only nginx is in the pod
        requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
        assert requests > 25000, out  # above the collector's ~5 700 spans a second
        count = "http_server_request_duration_seconds_count"
        deadline = time.monotonic() + 30
        while sample(text := scrape(prom_port), count, service_name="nginx") < requests and time.monotonic() < deadline:
            time.sleep(0.5)
        # wrk does not count the requests in flight when it stops; nginx may have answered them
        assert requests <= sample(text, count, service_name="nginx") <= requests + connections
        assert sample(text, "beyla_sidecar_events_lost_total") == 0
        assert sample(text, "beyla_sidecar_spans_dropped_total", exporter="otlp") > 0
