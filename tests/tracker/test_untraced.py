"""Exchanges the tracker must not report: those of a connection its process's selection left out
(reported while the verdict was pending), and pipelined batches (counted per protocol)."""

from __future__ import annotations

from beyla_sidecar.bpf.events import ConnTuple, EventType

from .records import REQ, RESP, conn_event, exchange
from .test_connections import Recorder

TUPLE = ConnTuple("10.0.0.1", 8080, "10.0.0.2", 40000)


def test_excluded_connection_reports_nothing_and_is_not_unrecognised() -> None:
    r = Recorder()
    r.tracker.handle(conn_event(EventType.CONN_OPEN, 1, conn=TUPLE), excluded=True)
    for start in (100, 200):
        r.tracker.exchange(exchange(1, start))
    r.tracker.handle(conn_event(EventType.CONN_CLOSE, 1))
    s = r.tracker.stats
    assert r.out == [] and s.exchanges == 0 and s.unrecognised_connections == {} and len(r.tracker) == 0
    r.tracker.handle(conn_event(EventType.CONN_OPEN, 1, conn=TUPLE))  # the address, reused: traced
    r.tracker.exchange(exchange(1, 300))
    assert len(r.out) == 1


def test_pipelined_exchange_is_counted_not_reported() -> None:
    r = Recorder()
    r.tracker.handle(conn_event(EventType.CONN_OPEN, 1, conn=TUPLE))
    r.tracker.exchange(exchange(1, 100, REQ * 3, RESP * 3))
    r.tracker.exchange(exchange(1, 200))
    assert len(r.out) == 1 and r.tracker.stats.pipelined == {"http": 1}
    assert r.tracker.stats.parse_failures == {}
