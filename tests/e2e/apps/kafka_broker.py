"""Test server: a minimal single-node Kafka broker (no Kafka broker is packaged in Debian).

    kafka_broker.py PORT MODE LOG

Speaks the real wire protocol through kafka-python's message classes (the encoder and decoder the
clients use, from Kafka's own message schemas), and advertises in ApiVersions only the versions it
answers. MODE picks them: `classic` stops below the flexible versions (Produce 8, Fetch 11,
OffsetCommit 7, Metadata 8, ApiVersions 2); `flexible` goes one step into them (Produce 9,
Fetch 12, OffsetCommit 8, Metadata 12, ApiVersions 3: compact strings, tagged fields).

Topics `e2e-orders` and `e2e-audit` (one partition each) keep what is produced (record batches
as sent, base offsets rewritten) and serve it to Fetch; `e2e-missing` is listed by Metadata but
every Produce to it is answered UNKNOWN_TOPIC_OR_PARTITION. A Fetch finding no new record waits
up to its max_wait_ms. No fetch sessions (session id 0: every Fetch lists its partitions), no
consumer-group membership (FindCoordinator names this broker; OffsetCommit is acknowledged, not
kept), no ListOffsets or OffsetFetch (the test's consumer seeks to its offset). Any other request
closes the connection (logged), as Kafka does with what it does not know.
Each request answered is one JSON line in LOG: api key, version, client id, topics, errors,
records stored (Produce).
"""

from __future__ import annotations

import json
import socketserver
import struct
import sys
import threading
import time
from typing import Any

from kafka.protocol.consumer import FetchRequest, FetchResponse
from kafka.protocol.consumer.group import OffsetCommitRequest, OffsetCommitResponse
from kafka.protocol.metadata import (
    ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse,
)
from kafka.protocol.producer import ProduceRequest, ProduceResponse

TOPICS = ("e2e-orders", "e2e-audit", "e2e-missing")
MISSING = "e2e-missing"
UNKNOWN_TOPIC_OR_PARTITION, UNSUPPORTED_VERSION = 3, 35
NODE_ID = 0
# Request and response classes of the APIs answered, and their versions per mode (lowest, highest).
APIS: dict[int, tuple[Any, Any]] = {
    0: (ProduceRequest, ProduceResponse), 1: (FetchRequest, FetchResponse), 3: (MetadataRequest, MetadataResponse),
    8: (OffsetCommitRequest, OffsetCommitResponse), 10: (FindCoordinatorRequest, FindCoordinatorResponse),
    18: (ApiVersionsRequest, ApiVersionsResponse),
}
VERSIONS = {
    "classic": {0: (3, 8), 1: (4, 11), 3: (1, 8), 8: (2, 7), 10: (0, 2), 18: (0, 2)},
    "flexible": {0: (3, 9), 1: (4, 12), 3: (1, 12), 8: (2, 8), 10: (0, 3), 18: (0, 3)},
}


class Log:
    """What each partition holds: record batches as (base offset, record count, bytes)."""

    def __init__(self) -> None:
        self.batches: dict[str, list[tuple[int, int, bytes]]] = {t: [] for t in TOPICS if t != MISSING}
        self.cond = threading.Condition()

    def end(self, topic: str) -> int:
        batches = self.batches[topic]
        return batches[-1][0] + batches[-1][1] if batches else 0

    def append(self, topic: str, records: bytes) -> tuple[int, int]:
        """Appends the batches of `records`; returns the first one's base offset and the records added."""
        with self.cond:
            base = offset = self.end(topic)
            p = 0
            while p < len(records):
                length = struct.unpack_from(">i", records, p + 8)[0]
                count = struct.unpack_from(">i", records, p + 57)[0]
                batch = struct.pack(">q", offset) + records[p + 8:p + 12 + length]  # base offset is not in the CRC
                self.batches[topic].append((offset, count, batch))
                offset += count
                p += 12 + length
            self.cond.notify_all()
            return base, offset - base

    def read(self, topic: str, offset: int) -> bytes:
        return b"".join(b for base, count, b in self.batches.get(topic, ()) if base + count > offset)


class Broker(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, mode: str, log_path: str) -> None:
        super().__init__(("127.0.0.1", port), Connection)
        self.port = port
        self.versions = VERSIONS[mode]
        self.log = Log()
        self.out = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the server's life)
        self.out_lock = threading.Lock()

    def record(self, key: int, version: int, client_id: str | None, topics: list[str], errors: list[int],
               records: int = 0) -> None:
        with self.out_lock:
            self.out.write(json.dumps({"api": key, "version": version, "client_id": client_id, "topics": topics,
                                       "errors": errors, "records": records}) + "\n")


class Connection(socketserver.BaseRequestHandler):
    server: Broker

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.request.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def handle(self) -> None:
        try:
            while True:
                size = struct.unpack(">i", self.recv_exact(4))[0]
                payload = self.recv_exact(size)
                key, version = struct.unpack_from(">hh", payload)
                answer = self.answer(key, version, payload)
                if answer is None:
                    return
                self.request.sendall(answer)
        except (EOFError, ConnectionError):
            return

    def answer(self, key: int, version: int, payload: bytes) -> bytes | None:
        """The framed response to one request; None: an API this broker does not answer (the
        connection closes, as Kafka's does)."""
        if key not in APIS:
            self.server.record(key, version, None, [], [-1])
            return None
        request_class, response_class = APIS[key]
        low, high = self.server.versions[key]
        if key == 18 and version > high:  # a v0 answer listing the versions known (what Kafka does)
            correlation = struct.unpack_from(">i", payload, 4)[0]
            self.server.record(key, version, None, [], [UNSUPPORTED_VERSION])
            return self.encode(response_class, 0, correlation, error_code=UNSUPPORTED_VERSION,
                               api_keys=self.api_keys())
        if not low <= version <= high:
            self.server.record(key, version, None, [], [-1])
            return None
        req = request_class.decode(payload, version=version, header=True)
        handler = getattr(self, f"api_{key}")
        fields, topics, errors, *records = handler(req, version)
        self.server.record(key, version, req.header.client_id, topics, errors, *records)
        return self.encode(response_class, version, req.header.correlation_id, **fields)

    @staticmethod
    def encode(response_class: Any, version: int, correlation: int, **fields: Any) -> bytes:
        response = response_class(version=version, **fields)
        response.with_header(correlation)
        return bytes(response.encode(header=True, framed=True))

    def api_keys(self) -> list[Any]:
        item = ApiVersionsResponse.ApiVersion
        return [item(api_key=k, min_version=low, max_version=high) for k, (low, high) in sorted(
            self.server.versions.items())]

    def api_18(self, req: Any, version: int) -> tuple[dict[str, Any], list[str], list[int]]:
        return {"error_code": 0, "api_keys": self.api_keys(), "throttle_time_ms": 0}, [], [0]

    def api_3(self, req: Any, version: int) -> tuple[dict[str, Any], list[str], list[int]]:
        """Metadata: this broker, leader of partition 0 of every topic asked for (all when none)."""
        r = MetadataResponse
        names = [t.name for t in req.topics] if req.topics else list(TOPICS)
        topics = [r.MetadataResponseTopic(version=version, error_code=0, name=name, is_internal=False, partitions=[
            r.MetadataResponseTopic.MetadataResponsePartition(
                version=version, error_code=0, partition_index=0, leader_id=NODE_ID, leader_epoch=0,
                replica_nodes=[NODE_ID], isr_nodes=[NODE_ID], offline_replicas=[])])
            for name in names]
        brokers = [r.MetadataResponseBroker(version=version, node_id=NODE_ID, host="127.0.0.1",
                                            port=self.server.port, rack=None)]
        fields = {"throttle_time_ms": 0, "brokers": brokers, "cluster_id": "e2e", "controller_id": NODE_ID,
                  "topics": topics}
        return fields, names, [0] * len(names)

    def api_10(self, req: Any, version: int) -> tuple[dict[str, Any], list[str], list[int]]:
        return {"throttle_time_ms": 0, "error_code": 0, "error_message": None, "node_id": NODE_ID,
                "host": "127.0.0.1", "port": self.server.port}, [], [0]

    def api_0(self, req: Any, version: int) -> tuple[dict[str, Any], list[str], list[int], int]:
        """Produce: stored, but for `e2e-missing`; the last item is the records received."""
        r = ProduceResponse.TopicProduceResponse
        topics, errors, responses = [], [], []
        received = 0
        for t in req.topic_data:
            parts = []
            for p in t.partition_data:
                error = UNKNOWN_TOPIC_OR_PARTITION if t.name == MISSING or p.index != 0 else 0
                base, added = self.server.log.append(t.name, bytes(p.records)) if not error else (-1, 0)
                received += added
                parts.append(r.PartitionProduceResponse(version=version, index=p.index, error_code=error,
                                                        base_offset=base))
                errors.append(error)
            topics.append(t.name)
            responses.append(r(version=version, name=t.name, partition_responses=parts))
        return {"responses": responses, "throttle_time_ms": 0}, topics, errors, received

    def api_1(self, req: Any, version: int) -> tuple[dict[str, Any], list[str], list[int]]:
        """Fetch: what each partition holds from its offset on, after up to max_wait_ms for some."""
        log = self.server.log
        wanted = [(t.topic, p.partition, p.fetch_offset) for t in req.topics for p in t.partitions]

        def ready() -> bool:
            return any(log.end(name) > offset for name, _, offset in wanted if name in log.batches)

        deadline = time.monotonic() + req.max_wait_ms / 1000
        with log.cond:
            while not ready() and time.monotonic() < deadline:
                log.cond.wait(deadline - time.monotonic())
        r = FetchResponse.FetchableTopicResponse
        responses, errors = [], []
        for t in req.topics:
            parts = []
            for p in t.partitions:
                error = 0 if t.topic in log.batches and p.partition == 0 else UNKNOWN_TOPIC_OR_PARTITION
                end = log.end(t.topic) if not error else -1
                parts.append(r.PartitionData(
                    version=version, partition_index=p.partition, error_code=error, high_watermark=end,
                    last_stable_offset=end, log_start_offset=0, aborted_transactions=None,
                    preferred_read_replica=-1, records=log.read(t.topic, p.fetch_offset) if not error else None))
                errors.append(error)
            responses.append(r(version=version, topic=t.topic, partitions=parts))
        return ({"throttle_time_ms": 0, "error_code": 0, "session_id": 0, "responses": responses},
                [t.topic for t in req.topics], errors)

    def api_8(self, req: Any, version: int) -> tuple[dict[str, Any], list[str], list[int]]:
        r = OffsetCommitResponse.OffsetCommitResponseTopic
        topics = [r(version=version, name=t.name, partitions=[r.OffsetCommitResponsePartition(
            version=version, partition_index=p.partition_index, error_code=0) for p in t.partitions])
            for t in req.topics]
        return {"throttle_time_ms": 0, "topics": topics}, [t.name for t in req.topics], [0]


def main() -> None:
    port, mode, log_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    with Broker(port, mode, log_path) as broker:
        broker.serve_forever()


if __name__ == "__main__":
    main()
