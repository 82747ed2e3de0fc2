"""memcached end to end (issue 13): a real memcached in the pod (Debian's, as user nobody) and real
clients (pymemcache, and a raw socket for the meta commands; apps/memcached_client.py), real
probes, the sidecar's JSON spans and Prometheus metrics. Both ends of every connection are in the
pod: each operation makes a CLIENT span (the client's end) and a SERVER span (memcached's), and
client metrics only."""

from __future__ import annotations

import collections
import shutil
import sys

import pytest

from .inprocess import wait_for
from .pod import APPS, Pod, Sidecar, free_port, wait_port
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf

DURATION_COUNT = "db_client_operation_duration_seconds_count"
# (name, query text, batch size, db.response.status_code, returned rows, error.type) of the spans of
# one side, for the client's sequence (sanitized query text).
EXPECTED = collections.Counter({
    ("set", "set ? ? ? ?", None, None, None, None): 3,
    ("get", "get ?", None, None, 1, None): 1,  # a hit
    ("get", "get ?", None, None, 0, None): 1,  # a miss
    ("get", "get ? ?", None, None, 1, None): 1,  # get_many: one of two
    ("add", "add ? ? ? ?", None, "NOT_STORED", None, None): 1,
    ("gets", "gets ?", None, None, 1, None): 1,
    ("cas", "cas ? ? ? ? ?", None, None, None, None): 1,
    ("cas", "cas ? ? ? ? ?", None, "EXISTS", None, None): 1,
    ("delete", "delete ?", None, None, None, None): 1,
    ("delete", "delete ?", None, "NOT_FOUND", None, None): 1,
    ("incr", "incr ? ?", None, None, None, None): 1,
    ("decr", "decr ? ?", None, None, None, None): 1,
    ("incr", "incr ? ?", None, "NOT_FOUND", None, None): 1,
    ("touch", "touch ? ?", None, None, None, None): 1,
    ("BATCH set", "set ? ? ? ?; set ? ? ? ?; set ? ? ? ?", 3, None, None, None): 1,  # set_many, one write
    ("incr", "incr ? ?", None, "CLIENT_ERROR", None, "CLIENT_ERROR"): 1,
    ("version", "version", None, None, None, None): 1,
    ("set", "set ? ? ? ?", None, "SERVER_ERROR", None, "SERVER_ERROR"): 1,
    ("stats", "stats", None, None, None, None): 1,
    ("_OTHER", None, None, "ERROR", None, "ERROR"): 1,
    # two noreply sets and a get: no reply in between, one exchange
    ("BATCH", "set ? ? ? ? noreply; set ? ? ? ? noreply; get ?", 3, None, None, None): 1,
    ("quit", "quit", None, None, None, None): 1,  # no reply, none due
    ("ms", "ms ? ? T?", None, None, None, None): 1,
    ("mg", "mg ? v", None, None, None, None): 1,
    ("mg", "mg ? v", None, "EN", None, None): 1,
    ("BATCH", "mg ? v q; mg ? v q; mn", 3, None, None, None): 1,
    ("md", "md ?", None, None, None, None): 1,
    ("ma", "ma ?", None, None, None, None): 1,
    ("mn", "mn", None, None, None, None): 1,
})
# db.client.operation.duration counts by (operation, error.type, db.response.status_code)
EXPECTED_METRICS = {
    ("set", "", ""): 3, ("set", "SERVER_ERROR", "SERVER_ERROR"): 1, ("get", "", ""): 3, ("add", "", "NOT_STORED"): 1,
    ("gets", "", ""): 1, ("cas", "", ""): 1, ("cas", "", "EXISTS"): 1, ("delete", "", ""): 1,
    ("delete", "", "NOT_FOUND"): 1, ("incr", "", ""): 1, ("incr", "", "NOT_FOUND"): 1,
    ("incr", "CLIENT_ERROR", "CLIENT_ERROR"): 1, ("decr", "", ""): 1, ("touch", "", ""): 1, ("BATCH set", "", ""): 1,
    ("version", "", ""): 1, ("stats", "", ""): 1, ("_OTHER", "ERROR", "ERROR"): 1, ("BATCH", "", ""): 2,
    ("quit", "", ""): 1, ("ms", "", ""): 1, ("mg", "", ""): 1, ("mg", "", "EN"): 1, ("md", "", ""): 1,
    ("ma", "", ""): 1, ("mn", "", ""): 1,
}
OPERATIONS = EXPECTED.total()


def start_memcached(pod: Pod) -> int:
    """memcached in the pod as user nobody, TCP only; items of at most 1 KiB, so that a 2 KB value
    gets SERVER_ERROR once read whole (a server refusing a larger value before it came in would
    answer in the middle of the request)."""
    assert shutil.which("memcached"), "the Debian package memcached is missing: make test-deps"
    port = free_port()
    pod.spawn(["memcached", "-u", "nobody", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-I", "1k",
               "-o", "slab_chunk_max=512"])
    wait_port(port)
    return port


def start(start_sidecar, **env: str) -> tuple[Sidecar, int]:
    prom = free_port()
    sidecar = start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1", **env)
    return sidecar, prom


def run_client(pod: Pod, port: int) -> list[str]:
    return pod.run([sys.executable, str(APPS / "memcached_client.py"), str(port)]).stdout.decode().splitlines()


def summary(spans: list[dict], kind: str, port: int) -> collections.Counter:
    return collections.Counter(
        (s["name"], s["attributes"].get("db.query.text"), s["attributes"].get("db.operation.batch.size"),
         s["attributes"].get("db.response.status_code"), s["attributes"].get("db.response.returned_rows"),
         s["attributes"].get("error.type"))
        for s in spans if s["kind"] == kind and s["attributes"]["server.port"] == port)


def metric_counts(text: str, port: int) -> dict[tuple[str, str, str], float]:
    """db.client.operation.duration counts per (operation, error, status code) of the client spans to `port`."""
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith(DURATION_COUNT + "{") and f'server_port="{port}"' in line:
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split('",'))
            assert labels["db_system_name"].strip('"') == "memcached"
            key = tuple(labels.get(k, "").strip('"') for k in
                        ("db_operation_name", "error_type", "db_response_status_code"))
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])  # type: ignore[index]
    return out


def test_pymemcache_and_meta_commands_make_client_and_server_spans(pod: Pod, start_sidecar) -> None:
    port = start_memcached(pod)
    sidecar, prom = start(start_sidecar)
    lines = run_client(pod, port)
    assert lines[:4] == ["set True", "get b'alice'", "get None", "get_many {'user:1': b'alice'}"]
    assert "incr b'cannot increment or decrement non-numeric value'" in lines
    assert "set b'object too large for cache'" in lines and "bogus b'bogus'" in lines
    assert lines[-7:] == ["ms HD", "mg VA 2|hi", "mg EN", "mg VA 1|1|MN", "md HD", "ma HD", "mn MN"]
    spans = sidecar.wait_spans(2 * OPERATIONS)
    assert len(spans) == 2 * OPERATIONS
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == EXPECTED
    for s in spans:
        a = s["attributes"]
        assert a["db.system.name"] == "memcached" and a["db.operation.name"] == s["name"]
        assert s["status"] == ("ERROR" if "error.type" in a else "UNSET")
        assert (a["server.address"], a["network.transport"]) == ("127.0.0.1", "tcp")
    assert {s["resource"]["service.name"] for s in spans if s["kind"] == "SERVER"} == {"memcached"}
    # metrics: every client operation once, none for the server's side
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= OPERATIONS)
    text = scrape(prom)
    assert metric_counts(text, port) == EXPECTED_METRICS
    assert sample(text, DURATION_COUNT) == OPERATIONS
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sample(text, "beyla_sidecar_unrecognised_connections_total") == 0


def test_raw_query_text_never_holds_values(pod: Pod, start_sidecar) -> None:
    """BEYLA_DB_QUERY_TEXT=raw: the command lines as sent (keys, flags, lengths), never the data
    blocks (the cached values)."""
    port = start_memcached(pod)
    sidecar, _ = start(start_sidecar, BEYLA_DB_QUERY_TEXT="raw")
    run_client(pod, port)
    spans = sidecar.wait_spans(2 * OPERATIONS)
    assert len(spans) == 2 * OPERATIONS
    texts = collections.Counter(s["attributes"].get("db.query.text") for s in spans if s["kind"] == "CLIENT")
    assert texts["get user:1"] == texts["get user:2"] == texts["gets user:1"] == texts["get user:1 user:2"] == 1
    assert texts["set user:1 0 0 5"] == 1
    assert sorted(str(t).rsplit(" ", 1)[0] for t in texts if str(t).startswith("cas ")) == \
        ["cas user:1 0 0 3", "cas user:1 0 0 5"]  # then the cas unique, the same stale one
    assert texts["incr counter 5"] == 1 and texts["ms mk 2 T60"] == 1 and texts["mg a v q; mg nokey v q; mn"] == 1
    assert texts["set a 0 0 1; set b 0 0 1; set c 0 0 1"] == 1 and texts["set big 0 0 2000"] == 1
    assert texts["set q1 0 0 2 noreply; set q2 0 0 2 noreply; get q1"] == 1
    attributes = str([s["attributes"] for s in spans])  # (the ids are hex: `abc` may be in them)
    assert not any(v in attributes for v in ("alice", "bob", "carol", "xxxx", "v1", "v2", "abc"))
