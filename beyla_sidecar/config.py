"""Every environment variable the sidecar and the webhook read: name, type, default, doc.

Nothing else in the package reads the environment for configuration. Values are parsed
and validated once at start-up; a bad value raises `ConfigError` with one message that
names the variable and the fix.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


def _env(name: str, default: str, doc: str, parse: Callable[[str], Any] = str) -> Any:
    return field(default=None, metadata={"env": name, "default": default, "doc": doc, "parse": parse})


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("expected an integer") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def _port(raw: str) -> int:
    port = _int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("expected a TCP port 0-65535 (0 disables)")
    return port


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


MAX_CONNECTIONS_LIMIT = 1 << 20  # 1.2 GiB of kernel memory; far more fails in the kernel (E2BIG)


def _max_connections(raw: str) -> int:
    value = _positive_int(raw)
    if value > MAX_CONNECTIONS_LIMIT:
        raise ValueError(f"expected at most {MAX_CONNECTIONS_LIMIT}")
    return value


def _capture(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected {low}..{high} bytes (the probes' compiled-in maximum)")
        return value
    return parse


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(repr(a) for a in allowed)}")
        return value

    return parse


def _pid_namespace(raw: str) -> str | int:
    value = raw.strip().lower()
    if value in ("self", "host"):
        return value
    inode = int(value) if re.fullmatch(r"[0-9]+", value) else 0
    if not 0 < inode < 1 << 32:
        raise ValueError("expected 'self', 'host' or a PID-namespace inode number "
                         "(see `stat -L -c %i /proc/<pid>/ns/pid`)")
    if inode not in _visible_pid_namespaces():
        raise ValueError("no process visible here is in that PID namespace (its processes must be "
                         "in this /proc: the sidecar's own, or the host's with hostPID)")
    return inode


def _visible_pid_namespaces() -> set[int]:
    inodes = set()
    for link in Path("/proc").glob("[0-9]*/ns/pid"):
        try:
            inodes.add(link.stat().st_ino)
        except OSError:  # exited meanwhile, or not ours to inspect
            pass
    return inodes


def _milliseconds(high: int) -> Callable[[str], float]:
    """Milliseconds above 0 and at most `high`, returned in seconds. The bounds also refuse nan
    and inf, which would otherwise fail far from here (a thread's wait, an int conversion)."""
    def parse(raw: str) -> float:
        value = _float(raw)
        if not 0 < value <= high:
            raise ValueError(f"expected a number of milliseconds above 0 and at most {high}")
        return value / 1000.0

    return parse


_duration_ms = _milliseconds(86_400_000)  # a day: longer is surely a mistake
_poll_interval_ms = _milliseconds(1000)  # records wait up to one interval in the ring

RINGBUF_MAX_BYTES = 1 << 30


def _ringbuf_size(raw: str) -> int:
    """A power of two of at least a page (the kernel's rule for BPF_MAP_TYPE_RINGBUF)."""
    value = _int(raw)
    page = os.sysconf("SC_PAGE_SIZE")
    if not page <= value <= RINGBUF_MAX_BYTES or value & (value - 1):
        raise ValueError(f"expected a power of two from {page} (the page size) to {RINGBUF_MAX_BYTES} (1 GiB)")
    return value


def _ipv4(raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw.strip()))
    except ValueError:
        raise ValueError("expected an IPv4 address: 0.0.0.0 (every interface) or one of this host's, "
                         "e.g. 127.0.0.1") from None


def _endpoint(raw: str) -> str:
    """An OTLP/gRPC endpoint URL; empty: none."""
    value = raw.strip()
    if not value:
        return ""
    url = urlsplit(value)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("expected an http:// (plaintext) or https:// URL, e.g. http://otel-collector:4317")
    if url.port == 0:  # reading .port also refuses one that is not a number or above 65535
        raise ValueError("port 0 cannot be connected to")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError("a gRPC endpoint has no path (a path such as /v1/traces is OTLP/HTTP, not supported)")
    return value


# A header name or attribute key: printable ASCII but separators (RFC 7230 token, W3C Baggage key).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _pairs(raw: str, what: str) -> list[tuple[str, str]]:
    """`k=v,k2=v2` as OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS are written (values
    percent-encoded, returned as written); empty items are allowed, e.g. a trailing comma."""
    out = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not _TOKEN.fullmatch(key.strip()):
            raise ValueError(f"{item.strip()!r}: expected {what}=value pairs separated by commas, each "
                             f"{what} without spaces, quotes or ()<>@,;:/[]?={{}}")
        out.append((key.strip(), value.strip()))
    return out


def _resource_attributes(raw: str) -> str:
    _pairs(raw, "key")
    return raw


def _otlp_headers(raw: str) -> str:
    for name, value in _pairs(raw, "name"):
        # The SDK silently drops a header whose value has one of these, and gRPC refuses
        # metadata that is not printable ASCII.
        decoded = unquote(value)
        if re.search(r'[";\\]', value) or not (decoded.isascii() and decoded.isprintable()):
            raise ValueError(f"the value of {name!r} must be printable ASCII, with \" ; \\ percent-encoded")
    return raw


def _pem(label: str, marker: str) -> Callable[[str], str]:
    """A readable file with a PEM `-----BEGIN <marker>-----` block; empty: none."""
    def parse(raw: str) -> str:
        if not raw:
            return raw
        try:
            data = Path(raw).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read it: {exc.strerror}") from None
        if not re.search(rb"-----BEGIN " + marker.encode() + rb"-----", data):
            raise ValueError(f"it holds no PEM {label}")
        return raw

    return parse


def _sdk_seconds(raw: str) -> float:
    value = _float(raw)
    if not 0 < value <= 86_400:
        raise ValueError("expected seconds (the OTel Python exporter's unit, not the spec's milliseconds) "
                         "above 0 and at most 86400")
    return value


def _sdk_compression(raw: str) -> str:
    if raw.strip().lower() != "gzip":
        raise ValueError("expected gzip; for no compression leave it unset (the OTel Python exporter "
                         "refuses `none` and an empty value)")
    return "gzip"


def _sdk_insecure(raw: str) -> bool:
    if raw.lower() not in ("true", "false"):  # the SDK reads anything but `true` as false
        raise ValueError("expected true or false")
    return raw.lower() == "true"


def _sdk_env(setting: str, default: str, doc: str, parse: Callable[[str], Any]) -> Any:
    """OTEL_EXPORTER_OTLP_<setting>, which the OTel SDK's exporters read themselves, each preferring
    its signal's form (OTEL_EXPORTER_OTLP_TRACES_<setting>, ..._METRICS_...). Every form that is set
    is checked here, where the SDK would raise mid-start or quietly misread it; unset: None, the
    SDK's default (`default`, shown in the table) applies."""
    names = tuple(f"OTEL_EXPORTER_OTLP_{signal}{setting}" for signal in ("", "TRACES_", "METRICS_"))
    doc += f" `{names[1]}` and `{names[2]}` set it for one signal."
    return field(default=None, metadata={"env": names[0], "default": default, "doc": doc, "parse": parse,
                                         "sdk_names": names})


def _regex(raw: str) -> re.Pattern[str] | None:
    if not raw.strip():
        return None
    try:
        return re.compile(raw.strip())
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def _port_ranges(raw: str) -> tuple[tuple[int, int], ...]:
    """`80,443,8000-8999` -> ((80, 80), (443, 443), (8000, 8999))."""
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        lo, _, hi = item.partition("-")
        if not lo.strip().isdigit() or (hi and not hi.strip().isdigit()):
            raise ValueError(f"{item!r}: expected a port or a range like 8000-8999")
        first, last = int(lo), int(hi or lo)
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"{item!r}: ports are 1-65535, a range low-high")
        out.append((first, last))
    return tuple(out)


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _route_patterns(raw: str) -> tuple[str, ...]:
    patterns = _list(raw)
    for p in patterns:
        if not p.startswith("/"):
            raise ValueError(f"{p!r}: a route pattern starts with / (e.g. /users/{{id}} or /users/:id)")
    return patterns


SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio")
DEFAULT_SAMPLER = "parentbased_always_on"  # the OTel SDKs' default


def _sampler(raw: str) -> str:
    return _choice(*SAMPLERS)(raw) if raw.strip() else DEFAULT_SAMPLER  # empty: unset, as OTel specifies


def _ratio(raw: str) -> float:
    if not raw.strip():
        return 1.0
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a sampling ratio from 0 to 1, e.g. 0.25")
    return value


def _metric_attributes(raw: str) -> tuple[str, ...]:
    names = _list(raw)
    for name in names:
        if name not in ("url.path", "client.address"):
            raise ValueError(f"{name!r}: only url.path and client.address can be added")
    return names


NETWORK_EXTRA_ATTRIBUTES = ("src.port", "dst.port")


def _network_attributes(raw: str) -> tuple[str, ...]:
    names = _list(raw)
    for name in names:
        if name not in NETWORK_EXTRA_ATTRIBUTES:
            raise ValueError(f"{name!r}: only src.port and dst.port can be added")
    return names


MAX_REVERSE_DNS_RATE = 1000.0


def _lookup_rate(raw: str) -> float:
    value = _float(raw)
    if not 0.0 < value <= MAX_REVERSE_DNS_RATE:  # also refuses nan and inf
        raise ValueError(f"expected lookups per second above 0 and at most {MAX_REVERSE_DNS_RATE:g}")
    return value


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ms|s|m)")


def _duration(low: float, high: float) -> Callable[[str], float]:
    """A duration `500ms`, `5s` or `1m` (a bare number: seconds), in seconds, within [low, high]."""
    def parse(raw: str) -> float:
        value = raw.strip().lower()
        match = _DURATION.fullmatch(value) or _DURATION.fullmatch(value + "s")
        if not match:
            raise ValueError("expected a duration such as 500ms, 5s or 1m")
        seconds = float(match[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match[2]]
        if not low <= seconds <= high:
            raise ValueError(f"expected a duration from {low:g}s to {high:g}s")
        return seconds
    return parse


@dataclass(frozen=True)
class Config:
    """Configuration of `beyla-sidecar run`."""

    pid_namespace: str | int = _env(
        "BEYLA_PID_NAMESPACE", "self",
        "Which processes to instrument: `self` (the sidecar's own PID namespace, i.e. its pod), "
        "`host` (the initial namespace, for local use) or a namespace inode number.",
        _pid_namespace)
    request_capture_size: int = _env(
        "BEYLA_REQUEST_CAPTURE_SIZE", "256",
        "First bytes of each request kept by the kernel for parsing (64-512): the request line "
        "and what follows. Byte counts are exact and head ends and traceparent are found in the "
        "kernel whatever the head's size.", _capture(64, 512))
    response_capture_size: int = _env(
        "BEYLA_RESPONSE_CAPTURE_SIZE", "256",
        "First bytes of each response kept by the kernel for parsing (16-256). The status line "
        "is enough; a head that fits spares the probes a scan for its end (cheaper than the copy).",
        _capture(16, 256))
    max_connections: int = _env(
        "BEYLA_MAX_CONNECTIONS", "8192",
        "Connections the kernel tracks at once (least recently used ones are dropped beyond); "
        "each costs about 1.2 KiB of kernel memory. At most 1048576.", _max_connections)
    attach_strategy: str = _env(
        "BEYLA_ATTACH", "auto",
        "Kernel hooks: `auto` picks the best the kernel offers, `tracepoint` forces "
        "tracepoints and tp_btf (work everywhere with BTF).", _choice("auto", "tracepoint"))
    context_propagation: str = _env(
        "BEYLA_BPF_CONTEXT_PROPAGATION", "disabled",
        "Trace context written by the kernel into what the pod's processes send, so that a call to "
        "another instrumented pod continues the trace: `headers` (a `traceparent` header in plaintext "
        "HTTP/1.x requests that have none), `tcp` (a TCP header option, OBI's layout: any TCP protocol, "
        "TLS too), `all` (both) or `disabled`. Needs CAP_NET_ADMIN and the pod's cgroup (BEYLA_CGROUP2_MOUNT).",
        _choice("disabled", "headers", "tcp", "all"))
    asyncio_tasks: bool = _env(
        "BEYLA_ASYNCIO_TASKS", "true",
        "Uprobes on CPython 3.8-3.11's `_asyncio` module (found stripped or not) tell which asyncio Task "
        "made each call, so that on an event loop serving many requests at once a call is the child of "
        "the request whose handler made it. false: the thread's order of requests alone decides.", _bool)
    cgroup2_mount: str = _env(
        "BEYLA_CGROUP2_MOUNT", "/sys/fs/cgroup",
        "Where a cgroup2 filesystem showing the pod's cgroup is mounted (the node's, read-only is enough): "
        "context propagation attaches to the pod's cgroup, the parent of the sidecar's own.")
    ringbuf_size: int = _env(
        "BEYLA_RINGBUF_SIZE", "8388608",
        "Ring buffer size in bytes: a power of two from the page size (usually 4096) to 1 GiB.", _ringbuf_size)
    poll_interval: float = _env(
        "BEYLA_POLL_INTERVAL_MS", "500",
        "How often the ring buffer is drained, above 0 and at most 1000 (a lower value backs off to "
        "500 ms while the pod is idle, then 1 s until a response begins; a drain also comes when a "
        "response can have been quiet for 500 ms, to end its span); probes submit without "
        "wake-ups until the ring is a quarter full, but for an exec (a short-lived process is named "
        "from /proc while it runs). Each drain costs 0.3-0.6 ms of CPU whatever it finds (cold caches), "
        "so fewer, larger batches are cheaper; spans wait longer in the export batch anyway "
        "(OTEL_BSP_SCHEDULE_DELAY).", _poll_interval_ms)
    trace_printer: str = _env(
        "BEYLA_TRACE_PRINTER", "",
        "Print spans to stdout: `text` (one line each), `json` (one object per line) or "
        "`disabled`. Default: `text` when no OTLP endpoint is set, else disabled.",
        _choice("", "text", "json", "disabled"))
    service_name: str = _env(
        "BEYLA_SERVICE_NAME", "",
        "service.name for processes whose own environment has no OTEL_SERVICE_NAME "
        "(default: the pod's owner, else what an interpreter runs, `app` for `python app.py`, "
        "else the executable name).")
    otel_service_name: str = _env(
        "OTEL_SERVICE_NAME", "", "Standard OTel variable; used after BEYLA_SERVICE_NAME.")
    service_namespace: str = _env("BEYLA_SERVICE_NAMESPACE", "", "service.namespace resource attribute.")
    service_version: str = _env("BEYLA_SERVICE_VERSION", "", "service.version resource attribute.")
    include_query: bool = _env(
        "BEYLA_INCLUDE_QUERY", "false",
        "Export `url.query` on spans. Off by default: query strings often carry secrets.", _bool)
    db_query_text: str = _env(
        "BEYLA_DB_QUERY_TEXT", "sanitized",
        "`db.query.text` on database spans: `sanitized` (the command with `?` for every argument or "
        "literal), `raw` (arguments too, as far as the captured prefix holds them; passwords, e.g. "
        "of Redis AUTH and HELLO, never) or `off`.", _choice("raw", "sanitized", "off"))
    include_command_line: bool = _env(
        "BEYLA_INCLUDE_COMMAND_LINE", "false",
        "Export `process.command_line` in span resources. Off by default: command lines carry "
        "secrets (`curl -H 'Authorization: ...'`, `--password=...`).", _bool)
    log_level: str = _env(
        "BEYLA_LOG_LEVEL", "info", "Log level: debug, info, warning, error.",
        _choice("debug", "info", "warning", "error"))
    otlp_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "",
        "OTLP/gRPC collector, e.g. `http://otel-collector:4317` (`https://` for TLS); enables OTLP export.",
        _endpoint)
    otlp_traces_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "",
        "OTLP/gRPC endpoint for traces only (overrides OTEL_EXPORTER_OTLP_ENDPOINT).", _endpoint)
    otlp_protocol: str = _env(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc",
        "OTLP transport; only `grpc` is supported.", _choice("grpc"))
    # Read by the OTel SDK's exporter itself; declared here to be documented and checked.
    otlp_timeout: float | None = _sdk_env(
        "TIMEOUT", "10",
        "Seconds one OTLP call may take (the OTel Python exporter's unit; the spec says milliseconds). "
        "Spans: at most OTEL_BSP_EXPORT_TIMEOUT; metrics use OTEL_METRIC_EXPORT_TIMEOUT instead.",
        _sdk_seconds)
    otlp_compression: str | None = _sdk_env(
        "COMPRESSION", "", "`gzip`, or unset for none.", _sdk_compression)
    otlp_headers: str | None = _sdk_env(
        "HEADERS", "",
        "gRPC metadata sent with every export: `name=value,name2=value2`, values may be percent-encoded.",
        _otlp_headers)
    otlp_insecure: bool | None = _sdk_env(
        "INSECURE", "",
        "Unset, the endpoint's scheme decides (`http://` plaintext, `https://` TLS). `false` makes an "
        "`http://` endpoint use TLS; `https://` is TLS whatever it says.", _sdk_insecure)
    otlp_certificate: str | None = _sdk_env(
        "CERTIFICATE", "",
        "PEM file of the CA certificates that verify the collector (TLS); default: the system's.",
        _pem("certificate", "CERTIFICATE"))
    otlp_client_key: str | None = _sdk_env(
        "CLIENT_KEY", "",
        "PEM private key for mutual TLS; the SDK reads it only when OTEL_EXPORTER_OTLP_CERTIFICATE is set.",
        _pem("private key", "(?:[A-Z]+ )?PRIVATE KEY"))
    otlp_client_certificate: str | None = _sdk_env(
        "CLIENT_CERTIFICATE", "",
        "PEM certificate (chain) for mutual TLS, with OTEL_EXPORTER_OTLP_CLIENT_KEY.",
        _pem("certificate", "CERTIFICATE"))
    resource_attributes: str = _env(
        "OTEL_RESOURCE_ATTRIBUTES", "",
        "Extra resource attributes `k=v,k2=v2` (values may be percent-encoded), merged into every "
        "span's resource.", _resource_attributes)
    # Kubernetes downward API (set by the webhook; by hand see examples/pod-manual.yaml).
    k8s_pod_name: str = _env("BEYLA_K8S_POD_NAME", "", "k8s.pod.name (fieldRef metadata.name).")
    k8s_namespace: str = _env("BEYLA_K8S_NAMESPACE", "", "k8s.namespace.name (fieldRef metadata.namespace).")
    k8s_pod_uid: str = _env("BEYLA_K8S_POD_UID", "", "k8s.pod.uid (fieldRef metadata.uid).")
    k8s_node_name: str = _env("BEYLA_K8S_NODE_NAME", "", "k8s.node.name (fieldRef spec.nodeName).")
    k8s_pod_ip: str = _env("BEYLA_K8S_POD_IP", "", "k8s.pod.ip (fieldRef status.podIP).")
    k8s_service_account: str = _env(
        "BEYLA_K8S_SERVICE_ACCOUNT", "", "k8s.pod.service_account.name (fieldRef spec.serviceAccountName).")
    k8s_container_names: str = _env(
        "BEYLA_K8S_CONTAINER_NAMES", "",
        "Comma-separated names of the pod's application containers; k8s.container.name when there is one.")
    k8s_deployment_name: str = _env("BEYLA_K8S_DEPLOYMENT_NAME", "", "k8s.deployment.name.")
    k8s_replicaset_name: str = _env("BEYLA_K8S_REPLICASET_NAME", "", "k8s.replicaset.name.")
    k8s_statefulset_name: str = _env("BEYLA_K8S_STATEFULSET_NAME", "", "k8s.statefulset.name.")
    k8s_daemonset_name: str = _env("BEYLA_K8S_DAEMONSET_NAME", "", "k8s.daemonset.name.")
    k8s_job_name: str = _env("BEYLA_K8S_JOB_NAME", "", "k8s.job.name.")
    k8s_cronjob_name: str = _env("BEYLA_K8S_CRONJOB_NAME", "", "k8s.cronjob.name.")
    # --- Process selection (issue 4: discover/selection.py; enforced in the probes by allowed_pids) ---
    executable_name: re.Pattern[str] | None = _env(
        "BEYLA_EXECUTABLE_NAME", "",
        "Instrument only processes whose executable's full path matches this regular expression "
        "(searched, e.g. `nginx` or `/app/server$`). Empty: every process of the pod but the sidecar.",
        _regex)
    open_ports: tuple[tuple[int, int], ...] = _env(
        "BEYLA_OPEN_PORT", "",
        "Instrument only processes listening on one of these TCP ports: `80,443,8000-8999`. With "
        "BEYLA_EXECUTABLE_NAME, a process must match both. Empty: no port condition.", _port_ranges)
    # --- Metrics, Prometheus endpoint and routes (issue 3: export/metrics.py, export/prometheus.py,
    # export/otlp_metrics.py, tracker/routes.py) ---
    prometheus_port: int = _env(
        "BEYLA_PROMETHEUS_PORT", "0",
        "Port of the Prometheus endpoint (`/metrics`, `/healthz`, `/readyz`); 0 disables it. "
        "`make run` uses 9400.", _port)
    prometheus_address: str = _env(
        "BEYLA_PROMETHEUS_ADDRESS", "0.0.0.0",
        "IPv4 address the Prometheus endpoint listens on (0.0.0.0: every interface).", _ipv4)
    otlp_metrics_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "",
        "OTLP/gRPC endpoint for metrics only (overrides OTEL_EXPORTER_OTLP_ENDPOINT).", _endpoint)
    metric_export_interval: float = _env(
        "OTEL_METRIC_EXPORT_INTERVAL", "60000",
        "Milliseconds between two OTLP metric exports (cumulative temporality).", _duration_ms)
    metric_export_timeout: float = _env(
        "OTEL_METRIC_EXPORT_TIMEOUT", "30000",
        "Milliseconds one OTLP metric export may take, retries included.", _duration_ms)
    metric_extra_attributes: tuple[str, ...] = _env(
        "BEYLA_METRICS_EXTRA_ATTRIBUTES", "",
        "Attributes added to HTTP metrics, off by default for cardinality: `url.path` and/or "
        "`client.address` (comma-separated).", _metric_attributes)
    routes_patterns: tuple[str, ...] = _env(
        "BEYLA_ROUTES_PATTERNS", "",
        "Comma-separated route patterns, `/users/{id}` or `/users/:id` (one segment each; a `*` segment "
        "matches the rest of the path, `*` in a segment any characters); the first that matches a path "
        "is its `http.route`.", _route_patterns)
    routes_unmatched: str = _env(
        "BEYLA_ROUTES_UNMATCHED", "auto",
        "Route of paths no pattern matches: `auto` (ids, UUIDs, hex/base64 tokens, dates become "
        "`{id}`/`{date}`), `path` (the path unchanged) or `wildcard` (`/**`).",
        _choice("auto", "path", "wildcard"))
    routes_max_per_service: int = _env(
        "BEYLA_ROUTES_MAX_PER_SERVICE", "200",
        "Distinct routes per service; further routes become `/**` and count in "
        "beyla_sidecar_route_overflows_total.", _positive_int)
    routes_ignore: tuple[str, ...] = _env(
        "BEYLA_ROUTES_IGNORE", "",
        "Comma-separated path patterns (same syntax as BEYLA_ROUTES_PATTERNS) left out of telemetry, "
        "e.g. `/healthz,/readyz,/metrics`.", _route_patterns)
    routes_ignore_mode: str = _env(
        "BEYLA_ROUTES_IGNORE_MODE", "all",
        "What BEYLA_ROUTES_IGNORE paths are left out of: `all`, `metrics` or `traces`.",
        _choice("all", "metrics", "traces"))
    span_queue_size: int = _env(
        "OTEL_BSP_MAX_QUEUE_SIZE", "2048",
        "Spans queued per exporter; when full, new spans are dropped and counted in "
        "beyla_sidecar_spans_dropped_total.", _positive_int)
    span_schedule_delay: float = _env(
        "OTEL_BSP_SCHEDULE_DELAY", "5000",
        "Milliseconds between two OTLP span exports (sooner when a batch is full). The stdout printer "
        "prints every 200 ms.", _duration_ms)
    span_batch_size: int = _env(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512",
        "Most spans sent in one export; at most OTEL_BSP_MAX_QUEUE_SIZE.", _positive_int)
    span_export_timeout: float = _env(
        "OTEL_BSP_EXPORT_TIMEOUT", "30000",
        "Milliseconds one OTLP span export may take, retries included (the exporter's own "
        "OTEL_EXPORTER_OTLP_TIMEOUT applies too: the shorter wins).", _duration_ms)
    traces_sampler: str = _env(
        "OTEL_TRACES_SAMPLER", DEFAULT_SAMPLER,
        "Which exchanges become spans (metrics always count every exchange): `always_on`, `always_off`, "
        "`traceidratio`, or `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio` "
        "(these follow the caller's sampled flag from an incoming traceparent).", _sampler)
    traces_sampler_arg: float = _env(
        "OTEL_TRACES_SAMPLER_ARG", "1.0",
        "Ratio (0 to 1) of the `traceidratio` samplers, decided on the trace id as every OTel SDK "
        "does, so all services keep the same traces.", _ratio)
    shutdown_timeout: float = _env(
        "BEYLA_SHUTDOWN_TIMEOUT_MS", "5000",
        "Milliseconds the final export of spans and metrics may take after SIGTERM (one deadline for "
        "both, retries included); what is not delivered by then is abandoned, logged and counted in "
        "beyla_sidecar_spans_abandoned_total and beyla_sidecar_metric_exports_abandoned_total. The "
        "rest of the shutdown adds under a second (detaching the probes: ~0.6 s, the kernel's grace "
        "periods): keep the sum under what the pod's "
        "terminationGracePeriodSeconds (30 s by default) leaves once the app has exited (a native "
        "sidecar is stopped after the app).", _duration_ms)
    # --- Network metrics (issue 10: bpf/netflow.py, protocols/dns.py, tracker/names.py,
    # tracker/flows.py, network.py, export/counters.py) ---
    network_metrics: bool = _env(
        "BEYLA_NETWORK_METRICS", "false",
        "L3/L4 flow metrics of the pod (beyla.network.flow.bytes/packets), named from the "
        "pod's own DNS answers, and TCP health per destination (beyla.network.tcp.*: failed "
        "connections, resets, retransmits, RTT). Needs capability NET_RAW (a packet socket in the "
        "pod's network namespace, with a BPF socket filter).", _bool)
    network_flush_interval: float = _env(
        "BEYLA_NETWORK_FLUSH_INTERVAL", "5s",
        "How often the kernel's flow and TCP health maps are drained into the metrics (100ms to 1m).",
        _duration(0.1, 60.0))
    network_flow_map_size: int = _env(
        "BEYLA_NETWORK_FLOW_MAP_SIZE", "16384",
        "Flows (5-tuple, direction, interface) the kernel counts between two flushes; packets of new "
        "flows beyond are counted in beyla_sidecar_network_flow_map_full_packets_total. About 60 bytes "
        "of kernel memory per flow and CPU.", _positive_int)
    network_tcp_map_size: int = _env(
        "BEYLA_NETWORK_TCP_MAP_SIZE", "4096",
        "TCP destinations (pod address, peer address, server port) the kernel counts TCP health "
        "events of between two flushes; events of new destinations beyond are counted in "
        "beyla_sidecar_network_tcp_map_full_total. About 220 bytes of kernel memory each.", _positive_int)
    network_max_flows: int = _env(
        "BEYLA_NETWORK_MAX_FLOWS", "2000",
        "Attribute sets of the flow metrics, and separately of the TCP health metrics; beyond, they go "
        "to one series with otel.metric.overflow=true, counted in "
        "beyla_sidecar_network_flow_overflows_total (beyla_sidecar_network_tcp_overflows_total).", _positive_int)
    network_dns_cache_size: int = _env(
        "BEYLA_NETWORK_DNS_CACHE_SIZE", "10000",
        "Addresses named from DNS answers kept at once (each for its TTL, at least 5 minutes), "
        "reverse-DNS names and failures included.", _positive_int)
    network_reverse_dns: bool = _env(
        "BEYLA_NETWORK_REVERSE_DNS", "false",
        "Name the destinations no DNS answer of the pod named by a reverse (PTR) lookup through the pod's "
        "own resolver (/etc/resolv.conf), in a background thread: a flow goes out without dst.name until "
        "the answer is in; names from the pod's own answers always win. Names are kept 5 minutes, failures "
        "2 minutes.", _bool)
    network_reverse_dns_rate: float = _env(
        "BEYLA_NETWORK_REVERSE_DNS_RATE", "10",
        "Reverse DNS lookups per second at most (paced, one at a time). At most 10 seconds' worth wait; "
        "destinations beyond are counted in beyla_sidecar_network_reverse_dns_dropped_total and asked "
        "for again at a later flush.", _lookup_rate)
    network_extra_attributes: tuple[str, ...] = _env(
        "BEYLA_NETWORK_EXTRA_ATTRIBUTES", "",
        "Attributes added to flow metrics, off by default for cardinality: `src.port` and/or `dst.port` "
        "(comma-separated).", _network_attributes)

    def __post_init__(self) -> None:
        if self.span_batch_size is not None and self.span_batch_size > self.span_queue_size:
            raise ConfigError(f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={self.span_batch_size} is invalid: it must not "
                              f"exceed OTEL_BSP_MAX_QUEUE_SIZE={self.span_queue_size}.")

    @property
    def traces_endpoint(self) -> str:
        return self.otlp_traces_endpoint or self.otlp_endpoint

    @property
    def metrics_endpoint(self) -> str:
        return self.otlp_metrics_endpoint or self.otlp_endpoint

    @property
    def printer(self) -> str:
        """The effective span printer: `text`, `json` or `disabled`."""
        if self.trace_printer:
            return self.trace_printer
        return "disabled" if self.traces_endpoint else "text"


def load(cls: type, env: Mapping[str, str] | None = None) -> Any:
    """Build `cls` (Config or another dataclass of `_env` fields) from the environment."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in fields(cls):
        meta = f.metadata
        if "sdk_names" in meta:
            values[f.name] = _check_sdk_env(meta, env)
        else:
            values[f.name] = _parse(meta, meta["env"], env.get(meta["env"], meta["default"]))
    return cls(**values)


def _parse(meta: Mapping[str, Any], name: str, raw: str) -> Any:
    try:
        return meta["parse"](raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is invalid: {exc}. {meta['doc']}") from None


def _check_sdk_env(meta: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """Checks every form of an `_sdk_env` variable that is set; the general one's value, or None."""
    for name in meta["sdk_names"][1:]:
        if name in env:
            _parse(meta, name, env[name])
    name = meta["env"]
    return _parse(meta, name, env[name]) if name in env else None


def describe(cls: type) -> list[tuple[str, str, str]]:
    """(variable, default, doc) rows for the README's configuration table."""
    return [(f.metadata["env"], f.metadata["default"], f.metadata["doc"]) for f in fields(cls)]


# --- `beyla-sidecar webhook` (owned by the kube/ webhook; appended, see beyla_sidecar/kube/webhook.py) ---

_QUANTITY = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?")


def _quantity(raw: str) -> str:
    """A Kubernetes resource quantity (`100m`, `64Mi`, `0.5`) or empty for none."""
    value = raw.strip()
    if value and not _QUANTITY.fullmatch(value):
        raise ValueError("expected a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi, or empty for none")
    return value


# linux/capability.h, bits 0 to 40. A name the container runtime does not know fails every
# injected pod at container creation, far from this setting.
LINUX_CAPABILITIES = frozenset((
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE").split())


def _capabilities(raw: str) -> tuple[str, ...]:
    """Comma-separated Linux capabilities, `CAP_` prefix optional, e.g. `BPF,PERFMON`."""
    caps: list[str] = []
    for item in raw.split(","):
        cap = item.strip().upper().removeprefix("CAP_")
        if not cap:
            continue
        if cap == "ALL":
            raise ValueError("ALL is refused: least privilege")
        if cap not in LINUX_CAPABILITIES:
            raise ValueError(f"{item.strip()!r} is not a Linux capability (e.g. BPF, PERFMON, SYS_PTRACE)")
        if cap not in caps:
            caps.append(cap)
    return tuple(caps)


def _pull_policy(raw: str) -> str:
    value = raw.strip()
    for allowed in ("Always", "IfNotPresent", "Never"):
        if value.lower() == allowed.lower():
            return allowed
    raise ValueError("expected Always, IfNotPresent or Never")


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_COMPONENT = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
# The container image reference grammar (distribution/reference): [registry[:port]/]path[:tag][@digest].
_IMAGE = re.compile(rf"(?:{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]+)?/)?"
                    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,})?")


def _image(raw: str) -> str:
    value = raw.strip()
    if not _IMAGE.fullmatch(value):
        raise ValueError("expected an image reference such as ghcr.io/org/beyla-sidecar:0.1.0 "
                         "(lower-case repository, optional :tag and @sha256:digest)")
    return value


def _host_path(raw: str) -> str:
    value = raw.strip()
    if not value.startswith("/") or ".." in value.split("/"):  # Kubernetes' own hostPath rules
        raise ValueError("expected an absolute path on the node, without `..`, e.g. /sys/kernel/tracing")
    return value


def _passed_on(parse: Callable[[str], Any]) -> Callable[[str], str]:
    """A value given unchanged to sidecars, checked by the sidecar's own rule: a bad one stops the
    webhook at start-up instead of every injected sidecar. Empty: not given."""
    def check(raw: str) -> str:
        value = raw.strip()
        if value:
            parse(value)
        return value

    return check


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not re.fullmatch(r"https://[^/\s]+", value):
        raise ValueError("expected an https:// URL without a path, e.g. https://kubernetes.default.svc")
    return value


@dataclass(frozen=True)
class WebhookConfig:
    """Configuration of `beyla-sidecar webhook` (the mutating admission webhook)."""

    port: int = _env("BEYLA_WEBHOOK_PORT", "8443", "HTTPS port of the webhook (/mutate, /metrics, /healthz).", _port)
    address: str = _env(
        "BEYLA_WEBHOOK_ADDRESS", "0.0.0.0", "IPv4 address the webhook listens on (0.0.0.0: every interface).",
        _ipv4)
    log_level: str = _env(
        "BEYLA_LOG_LEVEL", "info", "Log level of the webhook: debug, info, warning, error.",
        _choice("debug", "info", "warning", "error"))
    cert_file: str = _env(
        "BEYLA_WEBHOOK_CERT", "",
        "PEM certificate (chain) of the webhook, e.g. from cert-manager; reloaded when the file changes. "
        "Empty (with BEYLA_WEBHOOK_KEY empty): a CA and certificate are generated at start-up.")
    key_file: str = _env("BEYLA_WEBHOOK_KEY", "", "PEM private key for BEYLA_WEBHOOK_CERT.")
    service_name: str = _env(
        "BEYLA_WEBHOOK_SERVICE_NAME", "beyla-sidecar-webhook",
        "Kubernetes Service of the webhook: DNS names of the generated certificate.")
    service_namespace: str = _env(
        "BEYLA_WEBHOOK_SERVICE_NAMESPACE", "beyla-sidecar",
        "Namespace of that Service: DNS names of the generated certificate.")
    configuration_name: str = _env(
        "BEYLA_WEBHOOK_CONFIGURATION_NAME", "",
        "MutatingWebhookConfiguration whose caBundle the webhook sets to its generated CA (through the "
        "Kubernetes API, in-cluster service-account token). Empty: do not publish.")
    kube_api: str = _env(
        "BEYLA_WEBHOOK_KUBE_API", "https://kubernetes.default.svc",
        "Kubernetes API server used to publish the caBundle.", _url)
    sidecar_image: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_IMAGE", "beyla-sidecar:0.1.0", "Image of the injected sidecar.", _image)
    sidecar_image_pull_policy: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent",
        "imagePullPolicy of the injected sidecar: Always, IfNotPresent or Never.", _pull_policy)
    native_sidecar: bool = _env(
        "BEYLA_WEBHOOK_NATIVE_SIDECAR", "true",
        "Inject a native sidecar (init container with restartPolicy Always, Kubernetes 1.29+: starts "
        "before the app, does not keep Jobs alive). false: a regular container, for older clusters "
        "(pods of Jobs are then left alone).", _bool)
    sidecar_capabilities: tuple[str, ...] = _env(
        "BEYLA_WEBHOOK_SIDECAR_CAPABILITIES", "BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH,CHECKPOINT_RESTORE",
        "Capabilities added to the sidecar (all others dropped). Add SYS_ADMIN on nodes with "
        "kernel.perf_event_paranoid > 2, or for HTTPS on kernels older than 6.6; NET_ADMIN is added "
        "with context propagation only.", _capabilities)
    sidecar_cpu_request: str = _env("BEYLA_WEBHOOK_SIDECAR_CPU_REQUEST", "50m", "CPU request of the sidecar (empty: none).", _quantity)
    sidecar_memory_request: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_MEMORY_REQUEST", "64Mi", "Memory request of the sidecar (empty: none).", _quantity)
    sidecar_cpu_limit: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_CPU_LIMIT", "500m",
        "CPU limit of the sidecar (empty: none); caps the overhead on the node.", _quantity)
    sidecar_memory_limit: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_MEMORY_LIMIT", "256Mi", "Memory limit of the sidecar (empty: none).", _quantity)
    tracefs_host_path: str = _env(
        "BEYLA_WEBHOOK_TRACEFS_HOST_PATH", "/sys/kernel/tracing",
        "Node path of tracefs, mounted read-only at /sys/kernel/tracing in the sidecar "
        "(/sys/kernel/debug/tracing on old nodes without a separate tracefs mount). An absolute path.",
        _host_path)
    sidecar_log_level: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_LOG_LEVEL", "", "BEYLA_LOG_LEVEL given to sidecars (empty: their default).",
        _choice("", "debug", "info", "warning", "error"))
    sidecar_trace_printer: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_TRACE_PRINTER", "", "BEYLA_TRACE_PRINTER given to sidecars (empty: their default).",
        _choice("", "text", "json", "disabled"))
    sidecar_prometheus_port: int = _env(
        "BEYLA_WEBHOOK_SIDECAR_PROMETHEUS_PORT", "0",
        "BEYLA_PROMETHEUS_PORT given to sidecars, with a named container port `beyla-metrics` and a "
        "liveness probe on /healthz (0: none). It must not clash with the app's ports: the pod "
        "shares one network namespace.", _port)
    sidecar_network_metrics: bool = _env(
        "BEYLA_WEBHOOK_SIDECAR_NETWORK_METRICS", "false",
        "Give sidecars BEYLA_NETWORK_METRICS=true (L3/L4 flow metrics) and the capability it needs, "
        "NET_RAW, on top of BEYLA_WEBHOOK_SIDECAR_CAPABILITIES; false: neither.", _bool)
    sidecar_context_propagation: str = _env(
        "BEYLA_WEBHOOK_SIDECAR_CONTEXT_PROPAGATION", "disabled",
        "BEYLA_BPF_CONTEXT_PROPAGATION given to sidecars (`headers`, `tcp`, `all`) with what it needs: "
        "capability NET_ADMIN and the node's cgroup2 mounted read-only at /host/sys/fs/cgroup; "
        "`disabled`: none of it.", _choice("disabled", "headers", "tcp", "all"))
    cgroup2_host_path: str = _env(
        "BEYLA_WEBHOOK_CGROUP2_HOST_PATH", "/sys/fs/cgroup",
        "Node path of the cgroup2 filesystem (context propagation only; /sys/fs/cgroup/unified on "
        "hybrid-hierarchy nodes). An absolute path.", _host_path)
    exclude_namespaces: tuple[str, ...] = _env(
        "BEYLA_WEBHOOK_EXCLUDE_NAMESPACES", "kube-system",
        "Namespaces never injected, whatever the selectors say (comma-separated).", _list)
    max_body_bytes: int = _env(
        "BEYLA_WEBHOOK_MAX_BODY_BYTES", "3145728",
        "Largest AdmissionReview accepted (bigger: 413). Kubernetes objects are at most ~1.5 MiB.", _positive_int)
    request_timeout: float = _env(
        "BEYLA_WEBHOOK_REQUEST_TIMEOUT_MS", "10000",
        "Time a client has for the TLS handshake, request and response of one connection.", _duration_ms)
    max_connections: int = _env(
        "BEYLA_WEBHOOK_MAX_CONNECTIONS", "128",
        "Requests served at once (a thread each); connections whose request starts beyond are closed.",
        _positive_int)
    handshake_timeout: float = _env(
        "BEYLA_WEBHOOK_HANDSHAKE_TIMEOUT_MS", "3000",
        "Time a new connection has to finish the TLS handshake and start its request; it holds no "
        "thread meanwhile, and is closed after.", _duration_ms)
    max_idle_connections: int = _env(
        "BEYLA_WEBHOOK_MAX_IDLE_CONNECTIONS", "512",
        "Connections held before their request starts (TLS handshake, idle). Beyond, each new one "
        "closes the oldest one of the client address holding the most. Keep it under the open-file "
        "limit.", _positive_int)
    # Passed through to every injected sidecar when set (the webhook itself exports nothing).
    otlp_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", "Given to sidecars: OTLP collector endpoint.", _passed_on(_endpoint))
    otlp_traces_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", "Given to sidecars: OTLP endpoint for traces.",
        _passed_on(_endpoint))
    otlp_metrics_endpoint: str = _env(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "", "Given to sidecars: OTLP endpoint for metrics.",
        _passed_on(_endpoint))
    otlp_protocol: str = _env(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "", "Given to sidecars: OTLP protocol (`grpc`).", _passed_on(_choice("grpc")))
    otlp_headers: str = _env(
        "OTEL_EXPORTER_OTLP_HEADERS", "",
        "Given to sidecars: OTLP headers. Visible in every pod spec: do not put secrets here.",
        _passed_on(_otlp_headers))
    traces_sampler: str = _env(
        "OTEL_TRACES_SAMPLER", "", "Given to sidecars: trace sampler.", _passed_on(_sampler))
    traces_sampler_arg: str = _env(
        "OTEL_TRACES_SAMPLER_ARG", "", "Given to sidecars: trace sampler argument.", _passed_on(_ratio))
    metric_export_interval: str = _env(
        "OTEL_METRIC_EXPORT_INTERVAL", "", "Given to sidecars: metric export interval in milliseconds.",
        _passed_on(_duration_ms))

    def passthrough_env(self) -> list[tuple[str, str]]:
        """(name, value) of the OTEL_* settings to copy into every sidecar, in a fixed order."""
        out = []
        for f in fields(self):
            name = f.metadata["env"]
            if name.startswith("OTEL_") and getattr(self, f.name):
                out.append((name, getattr(self, f.name)))
        return out
