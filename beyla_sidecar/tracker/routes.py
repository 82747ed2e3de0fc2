"""URL path -> low-cardinality route (`/users/{id}`), per-service route caps, ignored paths.

Routes live between protocols and exporters because both spans (`METHOD route`) and
metrics (`http.route`) need the same answer, and any protocol with a URL path (HTTP/1.x
today, HTTP/2 and gRPC later) shares it. Order of decision for one path:

1. a user pattern (`BEYLA_ROUTES_PATTERNS`) that matches wins, first listed first;
2. otherwise the unmatched mode: `auto` (default) replaces segments that look like ids
   (numbers, UUIDs, hex and base64-ish tokens -> `{id}`, dates -> `{date}`), `path`
   keeps the path, `wildcard` gives `/**`;
3. a service that already has `max_per_service` distinct routes gets `/**` for any new
   one, and that is counted (`overflows`): the classic label explosion stays bounded.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable

OVERFLOW_ROUTE = "/**"
# Paths remembered with their grouped route; cleared when full, so memory stays bounded.
CACHE_SIZE = 4096

_PARAM = re.compile(r"^(?:\{[^/{}]+\}|:[^/]+)$")
# numbers, hex (8+ digits, so hashes and UUIDs without dashes), UUIDs: one match for all
_ID = re.compile(r"[+-]?[0-9]+(?:[.,][0-9]+)?|(?:0x)?[0-9a-fA-F]{8,}"
                 r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_TOKEN = re.compile(r"[A-Za-z0-9_\-+=~]{16,}")  # base64(url)-ish
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T_ ][0-9:.]+Z?)?")
_DIGIT = re.compile(r"[0-9]")


class Drop(enum.Flag):
    """Which signals an ignored path is kept out of."""

    NONE = 0
    METRICS = enum.auto()
    TRACES = enum.auto()
    ALL = METRICS | TRACES


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`/users/{id}` or `/users/:id` (one segment each); a `*` segment is any rest of the
    path, a `*` inside a segment any characters of that segment (`/ready*`)."""
    parts = []
    for segment in pattern.strip().strip("/").split("/"):
        if segment == "*":
            parts.append(".*")
        elif _PARAM.match(segment):
            parts.append("[^/]+")
        else:
            parts.append("[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return re.compile("/" + "/".join(parts) + "/?" if parts != [""] else "/")


def canonical(pattern: str) -> str:
    """A pattern as reported in `http.route`: `:id` written as `{id}`."""
    segments = pattern.strip().strip("/").split("/")
    return "/" + "/".join("{" + s[1:] + "}" if s.startswith(":") and len(s) > 1 else s for s in segments)


def auto_segment(segment: str) -> str:
    """A placeholder when a path segment looks like an identifier, else the segment."""
    if segment.isdigit():
        return "{id}"
    if not _DIGIT.search(segment):
        return segment  # words without a digit are route names, not ids
    if _ID.fullmatch(segment):
        return "{id}"
    if _DATE.fullmatch(segment):
        return "{date}"
    if len(segment) >= 16 and _TOKEN.fullmatch(segment):
        return "{id}"
    return segment


def auto_route(path: str) -> str:
    return "/".join([auto_segment(s) for s in path.split("/")])


class Routes:
    """Route of each path, per service; not thread-safe (the pipeline thread owns it)."""

    def __init__(self, patterns: Iterable[str], unmatched: str, max_per_service: int,
                 ignore: Iterable[str] = (), ignore_mode: Drop = Drop.ALL) -> None:
        self._patterns = [(compile_pattern(p), canonical(p)) for p in patterns]
        self._unmatched = unmatched
        self._max = max_per_service
        self._ignore = [compile_pattern(p) for p in ignore]
        self._ignore_mode = ignore_mode
        self._cache: dict[str, str] = {}
        self._by_service: dict[str, set[str]] = {}
        self.overflows: dict[str, int] = {}  # service -> requests whose route went to OVERFLOW_ROUTE

    def dropped(self, path: str | None) -> Drop:
        """The signals this path is kept out of (BEYLA_ROUTES_IGNORE)."""
        if path is None or not self._ignore:
            return Drop.NONE
        for pattern in self._ignore:
            if pattern.fullmatch(path):
                return self._ignore_mode
        return Drop.NONE

    def route(self, service: str, path: str | None) -> str | None:
        """`http.route` for `path` in `service`; None when there is no path to group."""
        if not path or path[0] != "/":
            return None  # CONNECT authority, OPTIONS *: no route
        route = self._cache.get(path)
        if route is None:
            route = self._group(path)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[path] = route
        known = self._by_service.get(service)
        if known is None:
            known = self._by_service[service] = set()
        if route not in known:
            if len(known) >= self._max:
                self.count_overflow(service)
                return OVERFLOW_ROUTE
            known.add(route)
        return route

    def count_overflow(self, service: str) -> None:
        """One more request of `service` whose route is OVERFLOW_ROUTE, known from an earlier route()."""
        self.overflows[service] = self.overflows.get(service, 0) + 1

    def _group(self, path: str) -> str:
        for pattern, route in self._patterns:
            if pattern.fullmatch(path):
                return route
        if self._unmatched == "auto":
            return auto_route(path)
        if self._unmatched == "wildcard":
            return OVERFLOW_ROUTE
        return path
