"""Route grouping: user patterns, the automatic low-cardinality mode, per-service caps, ignores."""

from __future__ import annotations

import pytest

from beyla_sidecar.tracker import routes as routes_mod
from beyla_sidecar.tracker.routes import OVERFLOW_ROUTE, Drop, Routes, auto_route, canonical, compile_pattern


def test_patterns_in_both_styles_report_braces() -> None:
    r = Routes(["/users/:id/orders/{order}", "/users/{id}", "/static/*"], "auto", 100)
    assert r.route("svc", "/users/42") == "/users/{id}"
    assert r.route("svc", "/users/alice/") == "/users/{id}"
    assert r.route("svc", "/users/7/orders/x-1") == "/users/{id}/orders/{order}"
    assert r.route("svc", "/static/css/site.css") == "/static/*"
    assert canonical("/a/:b/c") == "/a/{b}/c"


def test_first_listed_pattern_wins_and_unmatched_falls_back_to_auto() -> None:
    r = Routes(["/v1/{anything}", "/v1/health"], "auto", 100)
    assert r.route("svc", "/v1/health") == "/v1/{anything}"
    assert r.route("svc", "/other/12345") == "/other/{id}"


@pytest.mark.parametrize(("path", "route"), [
    ("/", "/"),
    ("/users/123", "/users/{id}"),
    ("/users/-7/items/3.5", "/users/{id}/items/{id}"),
    ("/orders/550e8400-e29b-41d4-a716-446655440000", "/orders/{id}"),
    ("/orders/550e8400e29b41d4a716446655440000/lines", "/orders/{id}/lines"),
    ("/blobs/sha256:abc", "/blobs/sha256:abc"),  # no long token: kept
    ("/commits/9fceb02d0ae598e95dc970b74767f19372d61af8", "/commits/{id}"),
    ("/objects/0x1f2e3d4c5b", "/objects/{id}"),
    ("/t/dGhpcyBpcyBhIHRva2VuMTIz", "/t/{id}"),  # base64
    ("/t/eyJhbGciOiJIUzI1NiJ9_x-y", "/t/{id}"),  # base64url
    ("/reports/2024-05-17", "/reports/{date}"),
    ("/reports/2024-05-17T10:00:00Z/summary", "/reports/{date}/summary"),
    ("/api/v1/users", "/api/v1/users"),  # short words with digits stay
    ("/internationalization/settings", "/internationalization/settings"),  # long words stay
    ("/assets/jquery-3.6.0.min.js", "/assets/jquery-3.6.0.min.js"),
])
def test_auto_mode(path: str, route: str) -> None:
    assert auto_route(path) == route


def test_unmatched_modes() -> None:
    assert Routes([], "path", 100).route("s", "/users/1") == "/users/1"
    assert Routes([], "wildcard", 100).route("s", "/users/1") == "/**"


def test_no_path_no_route() -> None:
    r = Routes([], "auto", 100)
    assert r.route("s", None) is None
    assert r.route("s", "example.com:443") is None  # CONNECT authority
    assert r.route("s", "*") is None  # OPTIONS *


def test_ten_thousand_distinct_ids_make_one_route() -> None:
    r = Routes([], "auto", 10)
    seen = {r.route("svc", f"/users/{i}/profile") for i in range(10_000)}
    seen |= {r.route("svc", f"/files/{i:032x}") for i in range(10_000)}
    assert seen == {"/users/{id}/profile", "/files/{id}"}
    assert r.overflows == {}
    assert len(r._cache) <= routes_mod.CACHE_SIZE  # the path cache stays bounded


def test_overflow_cap_per_service_is_counted() -> None:
    r = Routes([], "path", 3)
    got = [r.route("a", f"/p{i}") for i in range(10)]
    assert got[:3] == ["/p0", "/p1", "/p2"]
    assert got[3:] == [OVERFLOW_ROUTE] * 7
    assert r.route("a", "/p1") == "/p1"  # known routes keep working
    assert r.route("b", "/p9") == "/p9"  # the cap is per service
    assert r.overflows == {"a": 7}


def test_ignore_patterns_and_modes() -> None:
    r = Routes([], "auto", 100, ignore=["/healthz", "/ready*", "/internal/*"], ignore_mode=Drop.METRICS)
    assert r.dropped("/healthz") is Drop.METRICS
    assert r.dropped("/healthz/") is Drop.METRICS
    assert r.dropped("/readyz") is Drop.METRICS
    assert r.dropped("/ready/x") is Drop.NONE
    assert r.dropped("/internal/a/b") is Drop.METRICS
    assert r.dropped("/users/1") is Drop.NONE
    assert r.dropped(None) is Drop.NONE
    assert Routes([], "auto", 1, ignore=["/healthz"]).dropped("/healthz") is Drop.ALL


def test_literal_segments_are_escaped() -> None:
    assert compile_pattern("/a.b/{x}").fullmatch("/a.b/1")
    assert not compile_pattern("/a.b/{x}").fullmatch("/aXb/1")
