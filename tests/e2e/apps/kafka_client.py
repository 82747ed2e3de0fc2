"""Test client: kafka-python's producer and consumer against the test broker (apps/kafka_broker.py).

    kafka_client.py produce PORT SENDS
    kafka_client.py consume PORT RECORDS

`produce` (client id `e2e-producer`), one request at a time (max_in_flight_requests_per_connection=1,
no retries, no idempotence, acks=1; linger_ms is long, so nothing leaves before a flush): SENDS
single records to `e2e-orders`, each flushed and waited for; then 5 records in one batch to
`e2e-orders`; then one record to each of `e2e-orders` and `e2e-audit` flushed together (one
Produce naming both topics); then one record to `e2e-missing`, which the broker refuses
(UNKNOWN_TOPIC_OR_PARTITION). Prints one line per outcome.

`consume` (client id `e2e-consumer`, group `e2e-group`, manual assignment of partition 0 of
`e2e-orders` from offset 0, no auto commit, one request at a time: a metadata refresh never
joins a waiting Fetch in one exchange): polls until RECORDS records came, pauses the partition
and polls once more (the fetch in flight is answered, no new one is sent), commits the position
once, and prints the values.
"""

from __future__ import annotations

import sys

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

SERVERS = "127.0.0.1:%d"


def produce(port: int, sends: int) -> None:
    producer = KafkaProducer(bootstrap_servers=SERVERS % port, client_id="e2e-producer", acks=1, retries=0,
                             enable_idempotence=False, linger_ms=60_000, max_in_flight_requests_per_connection=1)
    for i in range(sends):
        future = producer.send("e2e-orders", b"order %d" % i)
        producer.flush()
        print("sent", future.get(timeout=10).offset, flush=True)
    futures = [producer.send("e2e-orders", b"batched %d" % i) for i in range(5)]
    producer.flush()
    print("batch", [f.get(timeout=10).offset for f in futures], flush=True)
    futures = [producer.send("e2e-orders", b"both"), producer.send("e2e-audit", b"both")]
    producer.flush()
    print("two topics", [f.get(timeout=10).topic for f in futures], flush=True)
    future = producer.send("e2e-missing", b"lost")
    producer.flush()
    try:
        future.get(timeout=10)
    except KafkaError as e:
        print("refused", type(e).__name__, flush=True)
    producer.close()


def consume(port: int, records: int) -> None:
    consumer = KafkaConsumer(bootstrap_servers=SERVERS % port, client_id="e2e-consumer", group_id="e2e-group",
                             enable_auto_commit=False, fetch_max_wait_ms=200,
                             max_in_flight_requests_per_connection=1)
    tp = TopicPartition("e2e-orders", 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    values: list[bytes] = []
    while len(values) < records:
        for batch in consumer.poll(timeout_ms=1000).values():
            values += [r.value for r in batch]
    consumer.pause(tp)
    consumer.poll(timeout_ms=500)
    consumer.commit()
    consumer.close()
    print(len(values), b",".join(values).decode(), flush=True)


if __name__ == "__main__":
    {"produce": produce, "consume": consume}[sys.argv[1]](int(sys.argv[2]), int(sys.argv[3]))
