"""Per-request CPU cost of RED metrics on the pipeline thread (not a test; prints figures).

    .venv/bin/python -m benchmarks.metrics_cost [N]

Feeds N synthetic server exchanges (60 routes, a fresh id in every path, three status
codes) through what `Pipeline._on_exchange` does per exchange, and reports CPU time per
exchange for: describe only (the span path's share, the baseline), + route grouping,
+ our histograms (the metrics path), and the OTel SDK's three histograms for comparison.
Then the memory held by the metrics and route state after 10 000 distinct ids.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from collections.abc import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

from beyla_sidecar.bpf.events import ConnTuple
from beyla_sidecar.export.metrics import Metrics, ServiceMetrics
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.protocols.http1 import HTTP1, HttpRequest, HttpResponse
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange
from beyla_sidecar.tracker.routes import CACHE_SIZE, Routes

CONN = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
RESOURCE = Resource({"service.name": "bench"})


def exchanges(n: int, distinct: bool = True) -> list[Exchange]:
    """Paths `/api/v1/r<k>/<id>`: a new id each time (route cache misses) or 600 paths repeating."""
    proto = HTTP1()
    out = []
    for i in range(n):
        path = f"/api/v1/r{i % 60}/{i if distinct else i % 10}"
        req = HttpRequest(True, 0, 1000, 0, 100, None, "GET", path, "", "1.1", "shop")
        resp = HttpResponse(False, 2000, 3_000_000 + i, 120, 80, None, (200, 404, 500)[i % 3], "1.1")
        out.append(Exchange(proto, SpanKind.SERVER, req, resp, TraceContext(1, 2, 0, False), 1, 1, 1, CONN))
    return out


def cpu_us(exs: list[Exchange], step: Callable[[Exchange], None]) -> float:
    start = time.process_time()
    for ex in exs:
        step(ex)
    return (time.process_time() - start) / len(exs) * 1e6


def main(n: int) -> None:
    for distinct in (True, False):
        per_exchange(exchanges(n, distinct), "every path new" if distinct else "600 paths repeating")
    cardinality()


def record(service: ServiceMetrics, ex: Exchange, route: str | None) -> None:
    """An exchange's metrics, described and keyed anew (the pipeline does that once per shape)."""
    desc = ex.protocol.describe(ex.request, ex.response, ex.kind, False, route=route)
    m = ex.protocol.metric_attributes(ex.kind, ex.conn, desc, route, service.extra)
    if m is not None:
        service.add(service.series(*m), ex.protocol.metric_values(ex.request, ex.response))


def per_exchange(exs: list[Exchange], label: str) -> None:
    routes = Routes((), "auto", 200)
    service = Metrics(all_protocols()).service("bench", RESOURCE)

    def describe(ex: Exchange) -> None:
        ex.protocol.describe(ex.request, ex.response, ex.kind, False, route="/x")

    def routed(ex: Exchange) -> None:
        route = routes.route("bench", ex.protocol.path(ex.request))
        ex.protocol.describe(ex.request, ex.response, ex.kind, False, route=route)

    def metrics(ex: Exchange) -> None:
        route = routes.route("bench", ex.protocol.path(ex.request))
        record(service, ex, route)

    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    sdk = [meter.create_histogram(name) for name in ("d", "q", "r")]

    def otel_sdk(ex: Exchange) -> None:
        route = routes.route("bench", ex.protocol.path(ex.request))
        d = ex.protocol.describe(ex.request, ex.response, ex.kind, False, route=route)
        a = {"http.request.method": "GET", "http.route": route,
             "http.response.status_code": d.attributes["http.response.status_code"]}
        sdk[0].record((ex.end_ns - ex.start_ns) / 1e9, a)
        sdk[1].record(ex.request.size, a)
        sdk[2].record(ex.response.size if ex.response else 0, a)

    base = cpu_us(exs, describe)
    results = {"describe (baseline)": base, "+ routes": cpu_us(exs, routed),
               "+ routes + metrics": cpu_us(exs, metrics), "+ routes + OTel SDK histograms": cpu_us(exs, otel_sdk)}
    print(f"{len(exs)} exchanges, {label}; CPU us per exchange on the pipeline thread:")
    for name, us in results.items():
        print(f"  {name:<32} {us:6.2f}   (+{us - base:.2f} over the baseline)")


def cardinality() -> None:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    routes2, metrics2 = Routes((), "auto", 200), Metrics(all_protocols())
    svc = metrics2.service("bench", RESOURCE)
    for ex in exchanges(10_000):
        ex.request.path = f"/users/{ex.request.path.rsplit('/', 1)[1]}"  # type: ignore[attr-defined]
        route = routes2.route("bench", ex.protocol.path(ex.request))
        record(svc, ex, route)
    held = tracemalloc.get_traced_memory()[0] - before
    series = sum(len(p.points) for s in metrics2.snapshot() for p in s.instruments[:1])
    print(f"10 000 distinct ids -> {series} series per histogram; metrics + route state hold {held / 1024:.0f} KiB "
          f"(the path cache is bounded at {CACHE_SIZE} entries)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
