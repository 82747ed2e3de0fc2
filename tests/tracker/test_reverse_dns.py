"""Reverse DNS for unnamed destinations: what is queued, the bounded queue, the pacing, failures
cached negatively, names from the pod's answers winning, and flows handing over their unnamed
destinations. The lookup function is replaced: no resolver, no root."""

from __future__ import annotations

import socket
import threading
import time
from ipaddress import IPv4Address, IPv6Address, ip_address

from beyla_sidecar.bpf.netflow import Flow
from beyla_sidecar.tracker.flows import ATTRIBUTES, FlowAttributes
from beyla_sidecar.tracker.names import NameCache
from beyla_sidecar.tracker.reverse_dns import FAILURE_KEEP_SECONDS, NAME_KEEP_SECONDS, QUEUE_SECONDS, ReverseResolver

POD = IPv4Address("10.0.0.2")
PTR = {"10.0.0.9": "db.example.", "10.0.0.10": "Cache.Example"}


def lookup(address: str) -> str:
    if address not in PTR:
        raise socket.herror(1, "Unknown host")
    return PTR[address]


def collect_all(r: ReverseResolver, expected: int, now: float = 0.0, timeout: float = 5.0) -> int:
    got, deadline = 0, time.monotonic() + timeout
    while got < expected and time.monotonic() < deadline:
        got += r.collect(now)
        time.sleep(0.01)
    return got


def test_names_and_failures_go_into_the_cache_at_collect() -> None:
    names = NameCache(100)
    r = ReverseResolver(names, rate=1000, lookup=lookup)
    r.start()
    try:
        for a in ("10.0.0.9", "10.0.0.10", "10.0.0.11"):
            r.want(ip_address(a), 0.0)
        assert collect_all(r, 3) == 3
    finally:
        r.stop()
    assert names.name(ip_address("10.0.0.9"), 1.0) == "db.example"  # trailing dot gone, lower case
    assert names.name(ip_address("10.0.0.10"), 1.0) == "cache.example"
    assert names.name(ip_address("10.0.0.11"), 1.0) is None and names.known(ip_address("10.0.0.11"), 1.0)
    assert (r.stats.lookups, r.stats.failures, r.stats.dropped) == (3, 1, 0)
    # names and failures expire: the address can be asked for again
    assert not names.known(ip_address("10.0.0.11"), FAILURE_KEEP_SECONDS)
    assert names.name(ip_address("10.0.0.9"), NAME_KEEP_SECONDS) is None


def test_known_pending_and_special_addresses_are_not_queued() -> None:
    calls: list[str] = []
    names = NameCache(100)
    names.learn("asked.test", ip_address("10.0.0.9"), 30, now=0.0)
    names.learn_reverse(ip_address("10.0.0.11"), None, FAILURE_KEEP_SECONDS, now=0.0)  # failed recently
    r = ReverseResolver(names, rate=1000, lookup=lambda a: calls.append(a) or "x.test")
    for a in ("10.0.0.9", "10.0.0.11", "127.0.0.1", "fe80::1", "ff02::1", "::", "224.0.0.251",
              "255.255.255.255", "10.0.0.12", "10.0.0.12"):
        r.want(ip_address(a), 1.0)
    r.start()
    try:
        assert collect_all(r, 1) == 1
        time.sleep(0.05)
        assert r.collect(1.0) == 0
    finally:
        r.stop()
    assert calls == ["10.0.0.12"]  # once, though wanted twice
    assert names.name(ip_address("10.0.0.9"), 2.0) == "asked.test"


def test_a_full_queue_drops_and_counts_and_the_address_can_be_asked_again() -> None:
    rate = 2.0
    size = int(rate * QUEUE_SECONDS)
    r = ReverseResolver(NameCache(100), rate=rate, lookup=lookup)  # not started: nothing leaves the queue
    for i in range(size + 5):
        r.want(IPv4Address(f"10.1.0.{i + 1}"), 0.0)
    assert r.stats.dropped == 5
    r.want(IPv4Address("10.1.0.1"), 0.0)  # already queued: neither queued again nor dropped
    assert r.stats.dropped == 5
    r.want(IPv4Address(f"10.1.0.{size + 1}"), 0.0)  # a dropped one, asked again later: dropped again
    assert r.stats.dropped == 6


def test_lookups_are_paced_at_the_rate() -> None:
    started: list[float] = []
    r = ReverseResolver(NameCache(100), rate=20, lookup=lambda a: started.append(time.monotonic()) or "n.test")
    for i in range(6):
        r.want(IPv4Address(f"10.2.0.{i + 1}"), 0.0)
    r.start()
    try:
        assert collect_all(r, 6) == 6
    finally:
        r.stop()
    gaps = [b - a for a, b in zip(started, started[1:])]
    assert len(gaps) == 5 and min(gaps) >= 0.05 - 0.005, gaps  # 1/20 s apart


def test_a_pending_name_never_blocks_and_the_pods_answer_wins_over_it() -> None:
    release = threading.Event()
    names = NameCache(100)
    peer = IPv4Address("10.0.0.9")

    def slow(address: str) -> str:
        release.wait(5)
        return "ptr.example"

    r = ReverseResolver(names, rate=1000, lookup=slow)
    r.start()
    try:
        r.want(peer, 0.0)
        assert r.collect(0.0) == 0 and names.name(peer, 0.0) is None  # pending: no name, no wait
        names.learn("asked.test", peer, 30, now=0.0)  # the pod resolves it meanwhile
        release.set()
        assert collect_all(r, 1) == 1
    finally:
        r.stop()
    assert names.name(peer, 1.0) == "asked.test"


def test_flows_hand_over_the_unnamed_destinations_the_pod_is_a_client_of() -> None:
    wanted: list = []
    names = NameCache(100)
    names.learn("named.test", IPv4Address("10.0.0.8"), 30, now=0.0)
    fa = FlowAttributes(names, {}, (), lambda: {8080}, lambda address, now: wanted.append(address))
    peer, v6 = IPv4Address("10.0.0.9"), IPv6Address("fd00::9")
    flows = [
        Flow(POD, peer, 45000, 443, 6, "egress", 1, 100, 2),                 # client of 443: wanted
        Flow(peer, POD, 443, 45000, 6, "ingress", 1, 100, 2),                # the answers: not again
        Flow(POD, IPv4Address("10.0.0.8"), 45001, 443, 6, "egress", 1, 1, 1),  # named by an answer
        Flow(POD, IPv4Address("10.0.0.7"), 8080, 50000, 6, "egress", 1, 1, 1),  # our server's client
        Flow(IPv6Address("fd00::2"), v6, 0, 0, 58, "egress", 1, 1, 1),     # no ports (ICMPv6): wanted
    ]
    keys = fa.keys(flows, now=0.0)
    assert wanted == [peer, v6]
    assert all(dict(zip(ATTRIBUTES, k))["dst.name"] is None for k in (keys[0], keys[4]))
