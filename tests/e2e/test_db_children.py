"""Database calls made while a thread serves an HTTP request are that request's children (issue 13):
a real threaded HTTP server whose handler queries a real redis-server (and a real PostgreSQL),
curl as the client, real probes, the sidecar's JSON spans."""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

from .pod import APPS, Pod, free_port, wait_port
from .test_postgresql import Server, server  # noqa: F401 (server: the fixture)
from .test_redis import PASSWORD, start_redis

pytestmark = pytest.mark.bpf

REQUESTS = 8


def children(spans: list[dict], parent: dict) -> list[dict]:
    return [s for s in spans if s["parent_span_id"] == parent["span_id"] and s["trace_id"] == parent["trace_id"]]


def test_redis_calls_are_children_of_the_request_that_made_them(pod: Pod, start_sidecar, tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    start_redis(pod, redis_port, tmp_path)
    sidecar = start_sidecar()
    pod.spawn([sys.executable, str(APPS / "db_handler.py"), str(port), str(redis_port), PASSWORD])
    wait_port(port)
    for i in range(REQUESTS):
        out = pod.run(["curl", "-sS", f"http://127.0.0.1:{port}/orders/{i}"]).stdout
        assert out == b"$-1\r\n"  # no such key: a nil reply
    # per request: curl's CLIENT span, the handler's SERVER span, the handler's AUTH and GET
    # (CLIENT, a new connection per serving thread) and redis-server's two SERVER spans
    spans = sidecar.wait_spans(6 * REQUESTS)
    assert len(spans) == 6 * REQUESTS
    kinds = collections.Counter((s["kind"], s["name"]) for s in spans)
    assert kinds == {("CLIENT", "GET"): REQUESTS, ("SERVER", "GET"): REQUESTS, ("CLIENT", "AUTH"): REQUESTS,
                     ("SERVER", "AUTH"): REQUESTS, ("SERVER", "GET /orders/{id}"): REQUESTS,
                     ("CLIENT", "GET /orders/{id}"): REQUESTS}
    requests = [s for s in spans if s["kind"] == "SERVER" and s["name"].startswith("GET /")]
    for request in requests:
        calls = children(spans, request)
        assert sorted((s["name"], s["attributes"]["db.system.name"], s["attributes"]["server.port"])
                      for s in calls) == [("AUTH", "redis", redis_port), ("GET", "redis", redis_port)]
        for call in calls:  # inside the request's time
            assert request["start_time_unix_nano"] <= call["start_time_unix_nano"]
            assert call["end_time_unix_nano"] <= request["end_time_unix_nano"]
    # and no database span of the handler is left without its request
    handler_calls = [s for s in spans if s["kind"] == "CLIENT" and s["attributes"].get("db.system.name")]
    assert all(s["parent_span_id"] in {r["span_id"] for r in requests} for s in handler_calls)


def test_postgresql_and_redis_calls_are_children_of_their_request(pod: Pod, server: Server, start_sidecar,
                                                                  tmp_path: Path) -> None:
    redis_port, port = free_port(), free_port()
    start_redis(pod, redis_port, tmp_path)
    sidecar = start_sidecar()
    pod.spawn([sys.executable, str(APPS / "db_handler.py"), str(port), str(redis_port), PASSWORD, server.dsn])
    wait_port(port)
    for i in range(REQUESTS):
        out = pod.run(["curl", "-sS", f"http://127.0.0.1:{port}/orders/{i}"]).stdout
        assert out == b"$-1\r\nNone"  # no such key, no such row
    # per request as above, plus the handler's SELECT (CLIENT) and postgres's (SERVER); the
    # connection's startup and authentication make no span
    spans = sidecar.wait_spans(8 * REQUESTS)
    assert len(spans) == 8 * REQUESTS
    requests = [s for s in spans if s["kind"] == "SERVER" and s["name"] == "GET /orders/{id}"]
    assert len(requests) == REQUESTS
    for request in requests:
        calls = children(spans, request)
        assert sorted((s["name"], s["attributes"]["db.system.name"]) for s in calls) == [
            ("AUTH", "redis"), ("GET", "redis"), ("SELECT orders", "postgresql")]
        [select] = [s for s in calls if s["name"] == "SELECT orders"]
        assert select["attributes"]["db.query.text"] == "SELECT qty FROM orders WHERE item = $1"
        assert (select["attributes"]["db.namespace"], select["attributes"]["server.port"]) == ("shop", server.port)
        for call in calls:
            assert request["start_time_unix_nano"] <= call["start_time_unix_nano"]
            assert call["end_time_unix_nano"] <= request["end_time_unix_nano"]
    servers = collections.Counter(s["name"] for s in spans if s["kind"] == "SERVER")
    assert servers == {"GET /orders/{id}": REQUESTS, "AUTH": REQUESTS, "GET": REQUESTS, "SELECT orders": REQUESTS}
