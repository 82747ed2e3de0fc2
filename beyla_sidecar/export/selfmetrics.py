"""The sidecar's own health as `beyla_sidecar_*` Prometheus families: losses are never silent."""

from __future__ import annotations

from dataclasses import dataclass, field

import psutil

from .prometheus import Family

PREFIX = "beyla_sidecar_"


@dataclass(slots=True)
class SelfStats:
    """Counters the pipeline gathers from the objects it owns, at scrape time."""

    events_read: int = 0
    events_lost: int = 0  # ring buffer full, counted by the probes in the kernel: every record
    exchanges_lost: int = 0  # of which exchanges (one request and its response each) never reported
    pipelined_exchanges: dict[str, int] = field(default_factory=dict)  # by protocol: not traced
    kernel_read_failures: int = 0  # bpf_probe_read of a payload failed, counted in the kernel
    bytes_read: int = 0
    parse_failures: dict[str, int] = field(default_factory=dict)  # by protocol
    protocol_state_drops: dict[str, int] = field(default_factory=dict)  # by protocol
    requests_completed: int = 0
    spans_exported: dict[str, int] = field(default_factory=dict)  # by exporter
    spans_failed: dict[str, int] = field(default_factory=dict)
    spans_dropped: dict[str, int] = field(default_factory=dict)  # queue full
    spans_abandoned: dict[str, int] = field(default_factory=dict)  # shutdown deadline passed
    metric_exports: int = 0
    metric_exports_failed: int = 0
    metric_exports_abandoned: int = 0
    instrumented_processes: int = 0
    tls_libraries: int = 0  # OpenSSL files with uprobes attached
    asyncio_modules: int = 0  # CPython _asyncio files with uprobes attached
    unsupported_tls: dict[str, int] = field(default_factory=dict)  # executables by TLS stack we cannot trace
    probe_attach_failures: int = 0
    route_overflows: dict[str, int] = field(default_factory=dict)  # by service
    unrecognised_connections: dict[tuple[str, int], int] = field(default_factory=dict)  # by (guess, port)
    unrecognised_bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    orphan_responses: int = 0  # counted in the kernel
    context_propagation: dict[str, int] = field(default_factory=dict)  # by outcome (propagation.COUNTER_NAMES)
    http2_desyncs: dict[str, int] = field(default_factory=dict)  # HTTP/2 connections whose headers lost sync, by why
    http2_streams_dropped: int = 0  # HTTP/2 streams forgotten unfinished (bounds)


def _counter(name: str, help_: str, value: int) -> Family:
    return Family(f"{PREFIX}{name}_total", "counter", help_, [(f"{PREFIX}{name}_total", {}, value)])


def _counter_by(name: str, help_: str, label: str, values: dict[str, int]) -> Family:
    full = f"{PREFIX}{name}_total"
    return Family(full, "counter", help_, [(full, {label: k}, v) for k, v in sorted(values.items())])


def _counter_by_guess(name: str, help_: str, values: dict[tuple[str, int], int]) -> Family:
    full = f"{PREFIX}{name}_total"
    return Family(full, "counter", help_, [(full, {"protocol_guess": g, "port": str(p)}, v)
                                           for (g, p), v in sorted(values.items())])


def _gauge(name: str, help_: str, value: float) -> Family:
    return Family(f"{PREFIX}{name}", "gauge", help_, [(f"{PREFIX}{name}", {}, value)])


def families(s: SelfStats, process: psutil.Process) -> list[Family]:
    cpu = process.cpu_times()
    return [
        _counter("events_read", "Records read from the kernel ring buffer.", s.events_read),
        _counter("events_lost", "Records the probes could not submit because the ring buffer was full.",
                 s.events_lost),
        _counter("exchanges_lost", "Request/response exchanges lost whole because the ring buffer was full "
                 "(no span, no metric; counted in the kernel). Exchanges made = exchanges reported + this.",
                 s.exchanges_lost),
        _counter_by("pipelined_exchanges", "Exchanges holding several pipelined requests (sent before the "
                    "previous response), which one span cannot describe: not traced.", "protocol",
                    s.pipelined_exchanges),
        _counter("kernel_read_failures", "Payload copies that failed in the probes.", s.kernel_read_failures),
        _counter("bytes_read", "Bytes of socket traffic seen (exact counts, captured or not).", s.bytes_read),
        _counter_by("parse_failures", "Exchanges a protocol could not parse (skipped).", "protocol",
                    s.parse_failures),
        _counter_by("protocol_state_dropped", "Per-connection protocol state forgotten to stay within its "
                    "bounds (prepared statements, pending requests): later exchanges that needed it are "
                    "described with less.", "protocol", s.protocol_state_drops),
        _counter_by_guess("unrecognised_connections", "Connections no protocol module recognised (not "
                          "traced), by a guess from their first bytes and their server port.",
                          s.unrecognised_connections),
        _counter_by_guess("unrecognised_bytes", "Bytes of connections no protocol module recognised.",
                          s.unrecognised_bytes),
        _counter("orphan_responses", "Response transfers on connections with no request seen (e.g. an "
                 "answer begun before the probes attached).", s.orphan_responses),
        _counter_by("context_propagation", "What the kernel did with trace context (BEYLA_BPF_CONTEXT_PROPAGATION): "
                    "`injected` headers, requests left alone (`not_http`, `has_traceparent`, `doubt`, "
                    "`failed`), client sockets it could not track (`socks_full`), TCP options written and "
                    "read (`option_written`, `option_read`).", "outcome", s.context_propagation),
        _counter_by("http2_desyncs", "HTTP/2 connections whose header decoding lost sync (`gap`: a chunk the "
                    "full ring refused; `truncated`: bytes the probes could not read; `framing`, `hpack`: bytes "
                    "that do not decode; `mid_stream`: a connection opened before the probes attached): their "
                    "later streams are not reported.", "reason", s.http2_desyncs),
        _counter("http2_streams_dropped", "HTTP/2 streams forgotten unfinished to stay within bounds (no span, "
                 "no metric).", s.http2_streams_dropped),
        _counter("requests_completed", "Request/response exchanges completed by the tracker.",
                 s.requests_completed),
        _counter_by("spans_exported", "Spans delivered, by exporter.", "exporter", s.spans_exported),
        _counter_by("spans_failed", "Spans an exporter failed to deliver.", "exporter", s.spans_failed),
        _counter_by("spans_dropped", "Spans dropped because the exporter's queue was full.", "exporter",
                    s.spans_dropped),
        _counter_by("spans_abandoned", "Spans not delivered by the shutdown deadline (BEYLA_SHUTDOWN_TIMEOUT_MS).",
                    "exporter", s.spans_abandoned),
        _counter("metric_exports", "OTLP metric exports attempted.", s.metric_exports),
        _counter("metric_exports_failed", "OTLP metric exports that failed.", s.metric_exports_failed),
        _counter("metric_exports_abandoned", "OTLP metric exports cut short by the shutdown deadline "
                 "(BEYLA_SHUTDOWN_TIMEOUT_MS).", s.metric_exports_abandoned),
        _gauge("instrumented_processes", "Live processes of the pod selected for instrumentation.",
               s.instrumented_processes),
        _gauge("tls_libraries", "OpenSSL library files with uprobes attached.", s.tls_libraries),
        _gauge("asyncio_modules", "CPython _asyncio module files with uprobes attached (BEYLA_ASYNCIO_TASKS).",
               s.asyncio_modules),
        _counter_by("unsupported_tls", "Executables using a TLS stack the sidecar cannot trace "
                    "(their HTTPS is not seen).", "stack", s.unsupported_tls),
        _counter("probe_attach_failures", "Probes that could not be attached.", s.probe_attach_failures),
        _counter_by("route_overflows", "Requests whose route went to the overflow route /** "
                    "(BEYLA_ROUTES_MAX_PER_SERVICE reached).", "service_name", s.route_overflows),
        _counter("cpu_seconds", "CPU time of the sidecar process (user + system).", cpu.user + cpu.system),
        _gauge("resident_memory_bytes", "Resident set size of the sidecar process.", process.memory_info().rss),
    ]
