"""Kafka end to end (issue 13): no Kafka broker is packaged in Debian, so a real client library
(kafka-python's producer and consumer, apps/kafka_client.py) talks to a minimal broker written for
the tests (apps/kafka_broker.py: the real wire protocol through kafka-python's message classes),
both in the pod, with real probes, the sidecar's JSON spans and Prometheus metrics.

Both ends of every connection are in the pod: each Produce, Fetch and OffsetCommit makes a CLIENT
span (the client's end) and a SERVER span (the broker's), and client metrics only; ApiVersions,
Metadata and FindCoordinator are housekeeping (nothing). The clients keep one request in flight
per connection (apps/kafka_client.py), so that every exchange holds one request; how many Fetches
the consumer makes depends on timing, so the broker's own log of what it answered is the count to
match. Run in the broker's two modes: below the flexible versions (Produce 8, Fetch 11,
OffsetCommit 7) and into them (Produce 9, Fetch 12, OffsetCommit 8: compact strings, tagged fields).
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

from .inprocess import wait_for
from .pod import APPS, Pod, free_port, wait_port
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf

SENDS = 12
DURATION_COUNT = "messaging_client_operation_duration_seconds_count"
OPERATIONS = {0: "send", 1: "poll", 8: "commit"}
ERRORS = {3: "UNKNOWN_TOPIC_OR_PARTITION"}

Span = tuple[str, str | None, str | None, str | None, str | None, int | None, str | None]


def expected_spans(log: list[dict]) -> collections.Counter[Span]:
    """(name, destination, partition, client id, group, batch count, error) of each Produce, Fetch
    and OffsetCommit the broker answered (every request names partition 0 of its topics)."""
    out: collections.Counter[Span] = collections.Counter()
    for entry in log:
        operation = OPERATIONS.get(entry["api"])
        if operation is None:
            continue
        topics = entry["topics"]
        topic = topics[0] if len(topics) == 1 else None
        error = next((ERRORS[e] for e in entry["errors"] if e), None)
        out[(f"{operation} {topic}" if topic else operation, topic, "0" if topic else None, entry["client_id"],
             "e2e-group" if operation == "commit" else None, entry["records"] if entry["records"] > 1 else None,
             error)] += 1
    return out


def summary(spans: list[dict], kind: str, port: int) -> collections.Counter[Span]:
    return collections.Counter(
        (s["name"], a.get("messaging.destination.name"), a.get("messaging.destination.partition.id"),
         a.get("messaging.client.id"), a.get("messaging.consumer.group.name"),
         a.get("messaging.batch.message_count"), a.get("error.type"))
        for s in spans if s["kind"] == kind and (a := s["attributes"])["server.port"] == port)


def metric_counts(text: str, port: int) -> dict[tuple[str, str, str], float]:
    """messaging.client.operation.duration counts per (operation, destination, error) to `port`."""
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        if line.startswith(DURATION_COUNT + "{") and f'server_port="{port}"' in line:
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split('",'))
            assert labels["messaging_system"].strip('"') == "kafka"
            name, topic, error = (labels.get(k, "").strip('"') for k in (
                "messaging_operation_name", "messaging_destination_name", "error_type"))
            out[(name, topic, error)] = out.get((name, topic, error), 0.0) + float(line.rsplit(" ", 1)[1])
    return out


@pytest.mark.parametrize("mode", ["classic", "flexible"])
def test_producer_and_consumer_against_a_broker_in_the_pod(pod: Pod, start_sidecar, tmp_path: Path,
                                                           mode: str) -> None:
    port, prom = free_port(), free_port()
    log_path = tmp_path / "broker.jsonl"
    pod.spawn([sys.executable, str(APPS / "kafka_broker.py"), str(port), mode, str(log_path)])
    wait_port(port)
    sidecar = start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1")
    client = [sys.executable, str(APPS / "kafka_client.py")]
    produced = pod.run([*client, "produce", str(port), str(SENDS)]).stdout.decode().splitlines()
    assert produced[-3:] == [f"batch {list(range(SENDS, SENDS + 5))}",
                             "two topics ['e2e-orders', 'e2e-audit']", "refused UnknownTopicOrPartitionError"]
    records = SENDS + 5 + 1
    consumed = pod.run([*client, "consume", str(port), str(records)]).stdout.decode()
    assert consumed.startswith(f"{records} order 0,order 1,")

    log = [json.loads(line) for line in log_path.read_text().splitlines()]
    versions = {e["api"]: e["version"] for e in log}
    assert (versions[0], versions[1], versions[8]) == ((8, 11, 7) if mode == "classic" else (9, 12, 8))
    expected = expected_spans(log)
    # the producer's requests, whatever the timing: SENDS single records, a batch of 5, one Produce
    # naming two topics (a batch of 2), one refused
    sends = {k: v for k, v in expected.items() if k[0].startswith("send")}
    assert sends == {
        ("send e2e-orders", "e2e-orders", "0", "e2e-producer", None, None, None): SENDS,
        ("send e2e-orders", "e2e-orders", "0", "e2e-producer", None, 5, None): 1,
        ("send", None, None, "e2e-producer", None, 2, None): 1,
        ("send e2e-missing", "e2e-missing", "0", "e2e-producer", None, None, "UNKNOWN_TOPIC_OR_PARTITION"): 1}
    assert expected[("commit e2e-orders", "e2e-orders", "0", "e2e-consumer", "e2e-group", None, None)] == 1
    polls = sum(v for k, v in expected.items() if k[0] == "poll e2e-orders")
    assert polls >= 1 and polls + SENDS + 4 == expected.total()

    count = expected.total()
    spans = sidecar.wait_spans(2 * count)
    kafka = [s for s in spans if s["attributes"].get("messaging.system") == "kafka"]
    assert len(kafka) == len(spans) == 2 * count
    assert summary(spans, "CLIENT", port) == summary(spans, "SERVER", port) == expected
    for s in kafka:
        a = s["attributes"]
        kind = {"send": "send", "poll": "receive", "commit": "settle"}[a["messaging.operation.name"]]
        assert a["messaging.operation.type"] == kind and s["name"].startswith(a["messaging.operation.name"])
        assert s["status"] == ("ERROR" if a.get("error.type") else "UNSET")
        assert (a["server.address"], a["network.transport"]) == ("127.0.0.1", "tcp")
        assert s["resource"]["service.name"] == ("kafka_client" if s["kind"] == "CLIENT" else "kafka_broker")

    # metrics: every client operation once, none for the broker's side
    assert wait_for(lambda: sample(scrape(prom), DURATION_COUNT) >= count)
    text = scrape(prom)
    metrics: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for (name, topic, _, _, _, _, error), n in expected.items():
        metrics[(name.split()[0], topic or "", error or "")] += n
    assert metric_counts(text, port) == metrics
    assert sample(text, DURATION_COUNT) == count
    assert sample(text, DURATION_COUNT, messaging_operation_type="receive", messaging_operation_name="poll") == polls
    assert sample(text, DURATION_COUNT, messaging_consumer_group_name="e2e-group") == 1
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sample(text, "beyla_sidecar_pipelined_exchanges_total") == 0
    assert sample(text, "beyla_sidecar_unrecognised_connections_total") == 0
