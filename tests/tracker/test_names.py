"""The address -> name cache learnt from DNS answers: TTLs (with a floor), size bound, eviction count."""

from __future__ import annotations

from ipaddress import IPv4Address

from beyla_sidecar.tracker.names import MIN_KEEP_SECONDS, NameCache, kubernetes_service

A, B, C = IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")


def test_a_name_lives_for_its_ttl_but_at_least_the_floor() -> None:
    cache = NameCache(10)
    cache.learn("short.test", A, 0, now=100.0)
    cache.learn("long.test", B, 3600, now=100.0)
    assert cache.name(A, 100.0 + MIN_KEEP_SECONDS - 1) == "short.test"
    assert cache.name(A, 100.0 + MIN_KEEP_SECONDS) is None
    assert cache.name(B, 100.0 + 3599) == "long.test"
    assert cache.name(C, 100.0) is None


def test_the_bound_drops_the_oldest_answer_and_counts_it() -> None:
    cache = NameCache(2)
    cache.learn("a.test", A, 30, now=0.0)
    cache.learn("b.test", B, 30, now=0.0)
    cache.learn("a2.test", A, 30, now=1.0)  # A answered again: the freshest now
    cache.learn("c.test", C, 30, now=2.0)
    assert (cache.name(A, 3.0), cache.name(B, 3.0), cache.name(C, 3.0)) == ("a2.test", None, "c.test")
    assert len(cache) == 2 and cache.evictions == 1


def test_kubernetes_service_names() -> None:
    assert kubernetes_service("orders.shop.svc.cluster.local") == ("orders", "shop")
    assert kubernetes_service("pod-0.db.data.svc.cluster.local") == ("db", "data")
    assert kubernetes_service("backend.test") is None
    assert kubernetes_service("svc.cluster.local") is None


def test_a_dns_answer_wins_over_a_reverse_name() -> None:
    cache = NameCache(10)
    cache.learn_reverse(A, "ptr.test", 300, now=0.0)
    assert cache.name(A, 1.0) == "ptr.test"
    cache.learn("asked.test", A, 30, now=2.0)  # replaces the reverse name
    assert cache.name(A, 3.0) == "asked.test"
    cache.learn_reverse(A, "ptr.test", 300, now=4.0)  # never replaces an answer while it lives
    assert cache.name(A, 5.0) == "asked.test"
    cache.learn_reverse(A, "ptr.test", 300, now=2.0 + MIN_KEEP_SECONDS)  # the answer has expired
    assert cache.name(A, 3.0 + MIN_KEEP_SECONDS) == "ptr.test"


def test_a_failed_reverse_lookup_is_known_without_a_name_until_it_expires() -> None:
    cache = NameCache(10)
    cache.learn_reverse(A, None, 120, now=0.0)
    assert cache.name(A, 1.0) is None and cache.known(A, 1.0)
    assert not cache.known(A, 120.0) and not cache.known(B, 0.0)
    cache.learn("asked.test", A, 30, now=0.0)  # an answer replaces a failure too
    assert cache.name(A, 1.0) == "asked.test"


def test_reverse_entries_share_the_bound() -> None:
    cache = NameCache(2)
    cache.learn("a.test", A, 30, now=0.0)
    cache.learn_reverse(B, None, 120, now=0.0)
    cache.learn_reverse(C, "c.test", 300, now=1.0)
    assert len(cache) == 2 and cache.evictions == 1 and not cache.known(A, 2.0)
