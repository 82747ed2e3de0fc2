"""Metric instruments, as a protocol declares them, and what one exchange records in them.

A protocol declares, per span kind, an `InstrumentSet`: histograms that always share one
attribute set (HTTP's duration and body sizes do, as would gRPC's or a database's). It names
the attribute values of exchanges of one shape (in the order the set names them), and each
exchange's values (one per instrument). export/metrics.py aggregates them knowing no protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Message

# Seconds: the OTel semantic conventions' boundaries for HTTP request durations, a fit for most requests.
DURATION_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Sizes in bytes (the conventions give none): powers of two up to 1 MiB.
SIZE_BOUNDS = (0.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
               16384.0, 65536.0, 262144.0, 1048576.0)

AttributeValue = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Instrument:
    """One explicit-bucket histogram (OTel name, UCUM unit, ascending bucket bounds)."""

    name: str
    unit: str
    description: str
    bounds: tuple[float, ...]


# eq=False: a set is hashed by identity, the cheapest dict key for the per-exchange lookup.
@dataclass(frozen=True, slots=True, eq=False)
class InstrumentSet:
    """Histograms recorded together, with the names of their attributes."""

    instruments: tuple[Instrument, ...]
    attributes: tuple[str, ...]


# The semantic conventions' buckets for db.client.operation.duration.
DB_DURATION_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# One set for every database protocol: two would make two metrics of the same name in OTLP.
DB_CLIENT_METRICS = InstrumentSet(
    (Instrument("db.client.operation.duration", "s", "Duration of database client operations.",
                DB_DURATION_BOUNDS),),
    ("db.system.name", "db.operation.name", "db.namespace", "error.type", "server.address", "server.port",
     "db.response.status_code"))

# messaging.client.operation.duration: the conventions give it the HTTP duration buckets. One set
# for every messaging protocol, as for databases.
MESSAGING_CLIENT_METRICS = InstrumentSet(
    (Instrument("messaging.client.operation.duration", "s",
                "Duration of messaging operations initiated by a producer or consumer client.", DURATION_BOUNDS),),
    ("messaging.system", "messaging.operation.name", "messaging.operation.type", "messaging.destination.name",
     "messaging.consumer.group.name", "error.type", "server.address", "server.port"))


def duration(request: Message, response: Message | None) -> float:
    """An exchange's duration in seconds: from the request's first byte to the response's last
    (an unanswered request's end: when its connection closed)."""
    end = response.end_ns if response is not None else request.end_ns
    return (end - request.start_ns) / 1e9
