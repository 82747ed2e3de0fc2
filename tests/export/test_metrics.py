"""Metrics aggregation: HTTP's attributes and buckets, a second protocol's instruments,
cardinality limit, OTel data model."""

from __future__ import annotations

import random
from bisect import bisect_left

from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.resources import Resource

from beyla_sidecar.bpf.events import ConnTuple, ExchangeRecord
from beyla_sidecar.export import metrics as metrics_mod
from beyla_sidecar.export.metrics import Metrics, to_metrics_data
from beyla_sidecar.export.prometheus import exposition
from beyla_sidecar.protocols import all_protocols
from beyla_sidecar.protocols.base import Message, Parsed, Protocol, SpanDescription, SpanKind
from beyla_sidecar.protocols.http1 import HTTP1, HttpRequest, HttpResponse
from beyla_sidecar.protocols.http2 import H2Response, HTTP2
from beyla_sidecar.protocols.instruments import AttributeValue, DURATION_BOUNDS, Instrument, InstrumentSet
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange

CONN = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)
RESOURCE = Resource({"service.name": "shop", "k8s.pod.name": "shop-1"})


def exchange(kind: SpanKind = SpanKind.SERVER, status: int | None = 200, path: str = "/users/1",
             duration_ns: int = 20_000_000, req_size: int = 3, resp_size: int = 100) -> Exchange:
    req = HttpRequest(True, 1_000, 2_000, req_size, 40, None, "GET", path, "", "1.1", "api.local:80")
    resp = (HttpResponse(False, 3_000, 1_000 + duration_ns, resp_size, 50, None, status, "1.1")
            if status is not None else None)
    return Exchange(HTTP1(), kind, req, resp, TraceContext(1, 2, 0, False), 10, 11, 10, CONN)


PING_METRICS = InstrumentSet((Instrument("ping.client.duration", "s", "Duration of pings.", DURATION_BOUNDS),),
                             ("ping.target",))


class Ping(Protocol):
    """A second protocol, defined here only: `PING <target>` answered by `PONG`; clients time it."""

    name = "ping"

    def detect(self, request: bytes, response: bytes) -> bool:
        return request.startswith(b"PING ")

    def parse(self, rec: ExchangeRecord) -> Parsed | None:
        return None

    def describe(self, request: Message, response: Message | None, kind: SpanKind,
                 with_query: bool, *, route: str | None = None, tls: bool = False) -> SpanDescription:
        return SpanDescription("PING", {"ping.target": "db-1"})

    def instruments(self, kind: SpanKind) -> InstrumentSet | None:
        return PING_METRICS if kind is SpanKind.CLIENT else None

    def metric_attributes(self, kind: SpanKind, conn: ConnTuple, desc: SpanDescription, route: str | None,
                          extra: frozenset[str]) -> tuple[InstrumentSet, tuple[AttributeValue | None, ...]] | None:
        return (PING_METRICS, (desc.attributes["ping.target"],)) if kind is SpanKind.CLIENT else None

    def metric_values(self, request: Message, response: Message | None) -> tuple[float | None, ...]:
        return ((response.end_ns - request.start_ns) / 1e9 if response is not None else None,)


def ping(kind: SpanKind = SpanKind.CLIENT) -> Exchange:
    req, resp = Message(True, 1_000, 2_000, 5), Message(False, 3_000, 30_001_000, 5)
    return Exchange(Ping(), kind, req, resp, TraceContext(1, 2, 0, False), 10, 11, 10, CONN)


def record(sm, ex: Exchange, route: str | None = "/users/{id}") -> None:
    """What the pipeline does for an exchange (export/shapes.py keeps the series per shape)."""
    desc = ex.protocol.describe(ex.request, ex.response, ex.kind, False, route=route)
    m = ex.protocol.metric_attributes(ex.kind, ex.conn, desc, route, sm.extra)
    if m is not None:
        sm.add(sm.series(*m), ex.protocol.metric_values(ex.request, ex.response))


def points(metrics: Metrics, name: str) -> list:
    [snap] = metrics.snapshot()
    return [p for i in snap.instruments if i.instrument.name == name for p in i.points]


def test_server_attributes_and_buckets() -> None:
    m = Metrics(all_protocols())
    sm = m.service("shop", RESOURCE)
    for _ in range(3):
        record(sm, exchange(duration_ns=20_000_000))  # 0.02 s: bucket le=0.025
    record(sm, exchange(status=500, duration_ns=10_000_000))  # exactly 0.01: bucket le=0.01 (inclusive)
    [ok, err] = points(m, "http.server.request.duration")
    assert ok.attributes == {"http.request.method": "GET", "http.response.status_code": 200,
                             "http.route": "/users/{id}"}
    assert err.attributes["error.type"] == "500"
    assert ok.buckets.count == 3 and abs(ok.buckets.sum - 0.06) < 1e-9
    assert ok.buckets.counts[DURATION_BOUNDS.index(0.025)] == 3
    assert err.buckets.counts[DURATION_BOUNDS.index(0.01)] == 1
    [req_ok, _] = points(m, "http.server.request.body.size")
    [resp_ok, _] = points(m, "http.server.response.body.size")
    assert (req_ok.buckets.sum, resp_ok.buckets.sum) == (9, 300)


def test_client_attributes_and_no_response() -> None:
    m = Metrics(all_protocols())
    sm = m.service("shop", RESOURCE)
    record(sm, exchange(SpanKind.CLIENT, status=404))
    record(sm, exchange(SpanKind.CLIENT, status=None))  # connection closed before a response
    dur = points(m, "http.client.request.duration")
    assert {tuple(sorted(p.attributes.items())) for p in dur} == {
        (("error.type", "404"), ("http.request.method", "GET"), ("http.response.status_code", 404),
         ("http.route", "/users/{id}"), ("server.address", "api.local"), ("server.port", 40000)),
        (("error.type", "incomplete"), ("http.request.method", "GET"), ("http.route", "/users/{id}"),
         ("server.address", "api.local"), ("server.port", 40000)),
    }
    assert len(points(m, "http.client.response.body.size")) == 1  # no response: no response size
    assert len(points(m, "http.client.request.body.size")) == 2


def test_extra_attributes_are_opt_in() -> None:
    m = Metrics(all_protocols(), ("url.path", "client.address"))
    record(m.service("shop", RESOURCE), exchange(path="/users/7"))
    [p] = points(m, "http.server.request.duration")
    assert p.attributes["url.path"] == "/users/7" and p.attributes["client.address"] == "10.0.0.2"
    plain = Metrics(all_protocols())
    record(plain.service("shop", RESOURCE), exchange())
    assert "url.path" not in points(plain, "http.server.request.duration")[0].attributes


def test_exchanges_their_protocol_does_not_measure_are_ignored() -> None:
    m = Metrics((*all_protocols(), Ping()))
    record(m.service("shop", RESOURCE), ping(SpanKind.SERVER), route=None)
    assert m.snapshot()[0].instruments == []


def test_a_new_protocol_needs_no_change_to_the_exporters() -> None:
    m = Metrics((*all_protocols(), Ping()))
    sm = m.service("shop", RESOURCE)
    record(sm, ping(), route=None)
    record(sm, exchange())
    record(sm, ping(), route=None)
    [p] = points(m, "ping.client.duration")
    assert p.attributes == {"ping.target": "db-1"}
    assert p.buckets.count == 2 and p.buckets.counts[DURATION_BOUNDS.index(0.05)] == 2
    labels = 'service_name="shop",k8s_pod_name="shop-1",ping_target="db-1"'
    text = exposition(m.snapshot(), [])
    assert "# HELP ping_client_duration_seconds Duration of pings." in text
    assert f'ping_client_duration_seconds_bucket{{{labels},le="0.05"}} 2' in text
    assert f"ping_client_duration_seconds_count{{{labels}}} 2" in text
    [rm] = to_metrics_data(m.snapshot(), now_ns=5).resource_metrics
    metrics = {metric.name: metric for metric in rm.scope_metrics[0].metrics}
    assert list(metrics) == ["http.server.request.duration", "http.server.request.body.size",
                             "http.server.response.body.size", "ping.client.duration"]
    [dp] = metrics["ping.client.duration"].data.data_points
    assert dp.attributes == {"ping.target": "db-1"} and dp.count == 2 and metrics["ping.client.duration"].unit == "s"


def test_cardinality_limit_overflows_into_one_series(monkeypatch) -> None:
    monkeypatch.setattr(metrics_mod, "MAX_SERIES", 5)
    m = Metrics(all_protocols())
    sm = m.service("shop", RESOURCE)
    for i in range(20):
        record(sm, exchange(), route=f"/r{i}")
    dur = points(m, "http.server.request.duration")
    assert len(dur) == 6
    overflow = [p for p in dur if p.attributes == {"otel.metric.overflow": True}]
    assert len(overflow) == 1 and overflow[0].buckets.count == 15
    assert sum(p.buckets.count for p in dur) == 20


def test_services_are_separate_and_reused() -> None:
    m = Metrics(all_protocols())
    a = m.service("a", Resource({"service.name": "a"}))
    assert m.service("a", Resource({"service.name": "other"})) is a
    m.service("b", Resource({"service.name": "b"}))
    assert [s.resource.attributes["service.name"] for s in m.snapshot()] == ["a", "b"]


def test_to_metrics_data_is_cumulative_with_resource() -> None:
    m = Metrics(all_protocols())
    record(m.service("shop", RESOURCE), exchange())
    m.service("idle", Resource({"service.name": "idle"}))  # nothing recorded: left out
    data = to_metrics_data(m.snapshot(), now_ns=5)
    [rm] = data.resource_metrics
    assert rm.resource is RESOURCE
    [scope] = rm.scope_metrics
    names = [metric.name for metric in scope.metrics]
    assert names == ["http.server.request.duration", "http.server.request.body.size",
                     "http.server.response.body.size"]
    hist = scope.metrics[0].data
    assert scope.metrics[0].unit == "s" and hist.aggregation_temporality is AggregationTemporality.CUMULATIVE
    [dp] = hist.data_points
    assert dp.count == 1 and dp.time_unix_nano == 5 and list(dp.explicit_bounds) == list(DURATION_BOUNDS)
    assert len(dp.bucket_counts) == len(DURATION_BOUNDS) + 1 and dp.min == dp.max == 0.02


def test_snapshot_is_a_copy() -> None:
    m = Metrics(all_protocols())
    sm = m.service("shop", RESOURCE)
    record(sm, exchange())
    before = m.snapshot()
    record(sm, exchange())
    assert before[0].instruments[0].points[0].buckets.count == 1



def test_grpc_calls_of_the_registered_http2_are_measured() -> None:
    protocols = all_protocols()
    [http2] = [p for p in protocols if isinstance(p, HTTP2)]
    assert http2.grpc in protocols  # its instruments are declared
    m = Metrics(protocols)
    sm = m.service("greeter", RESOURCE)
    req = HttpRequest(True, 1_000, 2_000, 5, 40, None, "POST", "/demo.Greeter/Find", "", "2", "svc:50051")
    resp = H2Response(False, 3_000, 1_000 + 30_000_000, 0, 20, None, 200, "2", None, 5)
    record(sm, Exchange(http2.grpc, SpanKind.SERVER, req, resp, TraceContext(1, 2, 0, False), 10, 11, 10, CONN), None)
    [point] = points(m, "rpc.server.call.duration")
    assert point.attributes == {"rpc.system": "grpc", "rpc.service": "demo.Greeter", "rpc.method": "Find",
                                "rpc.grpc.status_code": 5}
    assert point.buckets.count == 1 and abs(point.buckets.sum - 0.03) < 1e-9


def test_values_added_in_batches_give_what_one_by_one_gives() -> None:
    """Series.flush sorts a batch and bisects it once per bound: the buckets, count, min and max
    of adding each value by itself, and the same sum (added in arrival order)."""
    rnd = random.Random(7)
    bounds = DURATION_BOUNDS
    values = [rnd.choice((0.0, bounds[3], bounds[-1] * 2, rnd.random() * 3, rnd.expovariate(50)))
              for _ in range(3 * metrics_mod.PENDING_LIMIT + 17)]
    counts, total = [0] * (len(bounds) + 1), 0.0
    for v in values:
        counts[bisect_left(bounds, v)] += 1
        total += v
    ping = Ping()
    sm = Metrics([ping]).service("svc", RESOURCE)
    series = sm.series(PING_METRICS, ("host",))
    for v in values[:100]:
        sm.add(series, (v,))
    [first] = sm.snapshot().instruments[0].points  # a snapshot flushes what is pending
    for v in values[100:]:
        sm.add(series, (v,))
    sm.flush()
    b = series.histograms[0]
    assert first.buckets.count == 100 and b.count == len(values)
    assert b.counts == counts and b.sum == total and (b.min, b.max) == (min(values), max(values))
    assert not series.pending
