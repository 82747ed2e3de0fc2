"""Prometheus text exposition (format 0.0.4) and the scrape endpoint: /metrics, /healthz, /readyz.

OTel names map the usual way: dots become underscores and the unit becomes a suffix
(`http.server.request.duration` in `s` -> `http_server_request_duration_seconds`, with
`_bucket{le=...}`, `_sum`, `_count`). Every series carries its service's `service_name`
(and `service_namespace`, `k8s_*`) so that several services of one pod stay apart; each
service's full resource is one `target_info` series.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from opentelemetry.sdk.resources import Resource

from .metrics import ServiceSnapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNIT_SUFFIXES = {"s": "seconds", "By": "bytes"}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")

log = structlog.get_logger()

Labels = dict[str, str]


@dataclass(slots=True)
class Family:
    """One metric family: `# HELP`, `# TYPE` and its samples (full sample name, labels, value)."""

    name: str
    type: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)


def sanitize(name: str) -> str:
    """An OTel attribute or metric name as a Prometheus label or metric name."""
    out = _INVALID.sub("_", name)
    return "_" + out if out[:1].isdigit() else out


def metric_name(name: str, unit: str) -> str:
    base = sanitize(name)
    suffix = UNIT_SUFFIXES.get(unit)
    return f"{base}_{suffix}" if suffix and not base.endswith(suffix) else base


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def render(families: Iterable[Family]) -> str:
    lines = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        lines.append(f"# TYPE {fam.name} {fam.type}")
        lines.extend(f"{name}{_labels(labels)} {format_value(value)}" for name, labels, value in fam.samples)
    return "\n".join(lines) + "\n"


def service_labels(resource: Resource) -> Labels:
    """The resource attributes copied onto every series of that service."""
    return {sanitize(k): str(v) for k, v in resource.attributes.items()
            if k in ("service.name", "service.namespace") or k.startswith("k8s.")}


def histogram_families(snapshots: list[ServiceSnapshot]) -> list[Family]:
    families: dict[str, Family] = {}
    for snap in snapshots:
        common = service_labels(snap.resource)
        for inst in snap.instruments:
            i = inst.instrument
            name = metric_name(i.name, i.unit)
            fam = families.get(name)
            if fam is None:
                fam = families[name] = Family(name, "histogram", i.description)
            bounds = [format_value(b) for b in i.bounds] + ["+Inf"]
            for p in inst.points:
                labels = {**common, **{sanitize(k): str(v).lower() if isinstance(v, bool) else str(v)
                                       for k, v in p.attributes.items()}}
                running = 0
                for le, count in zip(bounds, p.buckets.counts):
                    running += count
                    fam.samples.append((f"{name}_bucket", {**labels, "le": le}, running))
                fam.samples.append((f"{name}_sum", labels, p.buckets.sum))
                fam.samples.append((f"{name}_count", labels, p.buckets.count))
    return list(families.values())


def target_info(resources: Iterable[Resource]) -> Family:
    fam = Family("target_info", "gauge", "Target metadata: the OTel resource of each service.")
    for resource in resources:
        fam.samples.append(("target_info", {sanitize(k): str(v) for k, v in resource.attributes.items()}, 1))
    return fam


def exposition(snapshots: list[ServiceSnapshot], extra: Iterable[Family], counters: Iterable[Family] = (),
               resources: Iterable[Resource] = ()) -> str:
    """The whole `/metrics` page: the protocols' histograms, `counters` (other metrics, of
    `resources`), target_info, then `extra` families (the sidecar's own)."""
    families = [*histogram_families(snapshots), *counters]
    unique = {tuple(sorted(r.attributes.items())): r for r in (*(s.resource for s in snapshots), *resources)}
    if unique:
        families.append(target_info(unique.values()))
    return render([*families, *extra])


class PrometheusServer:
    """A small threaded HTTP server: `/metrics` renders `collect()`, `/readyz` asks `ready()`."""

    def __init__(self, address: str, port: int, collect: Callable[[], str], ready: Callable[[], bool]) -> None:
        handler = type("Handler", (_Handler,), {"collect": staticmethod(collect), "ready": staticmethod(ready)})
        self._server = ThreadingHTTPServer((address, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    collect: Callable[[], str]
    ready: Callable[[], bool]

    def log_message(self, *args: object) -> None:
        pass  # one line per scrape would drown the sidecar's own log

    def _reply(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.partition("?")[0]
        if path == "/metrics":
            try:
                body = self.collect()
            except Exception as exc:  # a bug in a collector must not kill the endpoint
                log.error("metrics collection failed", error=repr(exc))
                self._reply(500, "collection failed\n")
                return
            self._reply(200, body, CONTENT_TYPE)
        elif path == "/healthz":
            self._reply(200, "ok\n")
        elif path == "/readyz":
            ok = self.ready()
            self._reply(200 if ok else 503, "ready\n" if ok else "not ready: probes not attached\n")
        else:
            self._reply(404, "not found: /metrics, /healthz, /readyz\n")

