"""Redis end to end (issue 13): a real redis-server in the pod and real clients (redis-cli,
redis-benchmark, and a raw-socket RESP3 client with pipelines), real probes, the sidecar's JSON
spans and Prometheus metrics. Both ends of every connection are in the pod: each command makes a
CLIENT span (the client's end) and a SERVER span (redis-server's), and client metrics only."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .inprocess import wait_for
from .pod import APPS, Pod, Sidecar, free_port, wait_port
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf

PASSWORD = "e2e-Secr3t-pw"
DURATION_COUNT = "db_client_operation_duration_seconds_count"


def start_redis(pod: Pod, port: int, tmp: Path) -> None:
    assert shutil.which("redis-server") and shutil.which("redis-benchmark"), \
        "the Debian package redis-server (with redis-tools) is missing: make test-deps"
    pod.spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--requirepass", PASSWORD, "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    wait_port(port)


def cli(pod: Pod, port: int, *args: str) -> str:
    """redis-cli in the pod, one connection (AUTH first, as -a makes it)."""
    out = pod.run(["redis-cli", "-p", str(port), "-a", PASSWORD, "--no-auth-warning", *args])
    return out.stdout.decode().strip()


def start(start_sidecar, **env: str) -> tuple[Sidecar, int]:
    prom = free_port()
    sidecar = start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1", **env)
    return sidecar, prom


def summary(spans: list[dict], kind: str, port: int) -> collections.Counter:
    """(name, namespace, query text, batch size, error) of the spans of one kind for `port`."""
    return collections.Counter(
        (s["name"], s["attributes"].get("db.namespace"), s["attributes"].get("db.query.text"),
         s["attributes"].get("db.operation.batch.size"), s["attributes"].get("error.type"))
        for s in spans if s["kind"] == kind and s["attributes"]["server.port"] == port)


def metric_counts(text: str, port: int) -> dict[tuple[str, str], float]:
    """db.client.operation.duration counts per (operation, error) of the client spans to `port`."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith(DURATION_COUNT + "{") and f'server_port="{port}"' in line:
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split('",'))
            key = (labels["db_operation_name"].strip('"'), labels.get("error_type", "").strip('"'))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_redis_cli_commands_make_client_and_server_spans(pod: Pod, start_sidecar, tmp_path: Path) -> None:
    port = free_port()
    start_redis(pod, port, tmp_path)
    sidecar, prom = start(start_sidecar)
    assert cli(pod, port, "SET", "user:1", "alice") == "OK"
    assert cli(pod, port, "GET", "user:1") == "alice"
    assert cli(pod, port, "-n", "3", "INCR", "visits") == "1"  # SELECT 3 first, on the same connection
    assert cli(pod, port, "LPUSH", "user:1", "x").startswith("WRONGTYPE")
    assert cli(pod, port, "PING") == "PONG"
    spans = sidecar.wait_spans(2 * 11)
    expected = collections.Counter({
        ("AUTH", None, "AUTH ?", None, None): 5,
        ("SET", None, "SET ? ?", None, None): 1,
        ("GET", None, "GET ?", None, None): 1,
        ("SELECT", None, "SELECT ?", None, None): 1,
        ("INCR", "3", "INCR ?", None, None): 1,
        ("LPUSH", None, "LPUSH ? ?", None, "WRONGTYPE"): 1,
        ("PING", None, "PING", None, None): 1,
    })
    assert len(spans) == 2 * 11
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == expected
    for s in spans:
        a = s["attributes"]
        assert a["db.system.name"] == "redis" and a["db.operation.name"] == s["name"]
        assert s["status"] == ("ERROR" if s["name"] == "LPUSH" else "UNSET")
        assert a.get("db.response.status_code") == ("WRONGTYPE" if s["name"] == "LPUSH" else None)
        assert (a["server.address"], a["network.transport"]) == ("127.0.0.1", "tcp")
    # (redis-server's service name is its executable's, Debian's redis-check-rdb: redis-server
    # rewrites its environment area with its process title, so OTEL_SERVICE_NAME cannot be read)
    assert {s["resource"]["service.name"] for s in spans if s["kind"] == "CLIENT"} == {"redis-cli"}
    # metrics: every client operation once, none for the server's side
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= 11)
    text = scrape(prom)
    assert metric_counts(text, port) == {("AUTH", ""): 5, ("SET", ""): 1, ("GET", ""): 1, ("SELECT", ""): 1,
                                         ("INCR", ""): 1, ("LPUSH", "WRONGTYPE"): 1, ("PING", ""): 1}
    assert sample(text, DURATION_COUNT) == 11
    assert sample(text, DURATION_COUNT, db_operation_name="INCR", db_namespace="3", db_system_name="redis") == 1
    assert sample(text, DURATION_COUNT, db_operation_name="LPUSH", db_response_status_code="WRONGTYPE") == 1
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sample(text, "beyla_sidecar_unrecognised_connections_total") == 0
    assert PASSWORD not in sidecar.out.read_text() + sidecar.err.read_text()


GETS = 50


def test_resp3_pipelines_errors_and_raw_text(pod: Pod, start_sidecar, tmp_path: Path) -> None:
    """One connection of the raw-socket client (apps/redis_client.py) with BEYLA_DB_QUERY_TEXT=raw:
    HELLO 3 with a password, RESP3 replies, GETS commands -> GETS spans, pipelines -> one batch span
    each, an error reply inside a pipeline, and bytes that are no request (a counted parse failure)."""
    port = free_port()
    start_redis(pod, port, tmp_path)
    sidecar, prom = start(start_sidecar, BEYLA_DB_QUERY_TEXT="raw")
    out = pod.run([sys.executable, str(APPS / "redis_client.py"), str(port), PASSWORD, str(GETS)]).stdout.decode()
    lines = out.splitlines()
    assert lines[0].startswith("{'server': 'redis'") and "'proto': ':3'" in lines[0]
    assert lines[-1] == "-ERR Protocol error: invalid bulk length"
    assert lines.count("-WRONGTYPE Operation against a key holding the wrong kind of value") == 1
    count = GETS + 5
    spans = sidecar.wait_spans(2 * count)
    assert len(spans) == 2 * count
    expected = collections.Counter({
        ("HELLO", None, "HELLO ? ? ? ? ? ?", None, None): 1,  # the password never, even raw
        ("SET", None, 'SET greeting "hello world"', None, None): 1,
        ("GET", None, "GET greeting", None, None): GETS,
        ("BATCH INCR", None, "; ".join(["INCR n"] * 10), 10, None): 1,
        ("BATCH", None, "SET s v; LPUSH s x; GET s", 3, "WRONGTYPE"): 1,
        ("HGETALL", None, "HGETALL h", None, None): 1,
    })
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == expected
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= count)
    text = scrape(prom)
    assert metric_counts(text, port) == {("HELLO", ""): 1, ("SET", ""): 1, ("GET", ""): GETS,
                                         ("BATCH INCR", ""): 1, ("BATCH", "WRONGTYPE"): 1, ("HGETALL", ""): 1}
    assert sample(text, DURATION_COUNT) == count
    # the last request is no Redis request, at both ends
    assert sample(text, "beyla_sidecar_parse_failures_total", protocol="redis") == 2
    assert PASSWORD not in sidecar.out.read_text() + sidecar.err.read_text()


BENCH_REQUESTS, BENCH_PIPELINE = 200, 5


def test_redis_benchmark_pipelines(pod: Pod, start_sidecar, tmp_path: Path) -> None:
    """redis-benchmark -P 5: each write holds 5 SETs (225 bytes, inside the request prefix), answered
    by 5 replies: one exchange, one `BATCH SET` span of batch size 5 per write. Its first write also
    holds its AUTH; a set-up connection sends AUTH, then two CONFIG GETs in one write."""
    port = free_port()
    start_redis(pod, port, tmp_path)
    sidecar, prom = start(start_sidecar)
    pod.run(["redis-benchmark", "-p", str(port), "-a", PASSWORD, "-n", str(BENCH_REQUESTS), "-c", "1",
             "-P", str(BENCH_PIPELINE), "-t", "set", "-q"])
    sets = "; ".join(["SET ? ?"] * BENCH_PIPELINE)
    batches = BENCH_REQUESTS // BENCH_PIPELINE - 1
    expected = collections.Counter({
        ("AUTH", None, "AUTH ?", None, None): 1,
        ("BATCH CONFIG", None, "CONFIG GET ?; CONFIG GET ?", 2, None): 1,
        ("BATCH", None, "AUTH ?; " + sets, BENCH_PIPELINE + 1, None): 1,
        ("BATCH SET", None, sets, BENCH_PIPELINE, None): batches,
    })
    spans = sidecar.wait_spans(2 * expected.total())
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == expected
    assert len(spans) == 2 * expected.total()
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= expected.total())
    assert metric_counts(scrape(prom), port) == {("AUTH", ""): 1, ("BATCH CONFIG", ""): 1, ("BATCH", ""): 1,
                                                 ("BATCH SET", ""): batches}
