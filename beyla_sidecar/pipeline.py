"""The sidecar's one pipeline object: kernel events -> tracker -> spans -> exporters.

All mutable state of a running sidecar lives here (or in the objects it owns).
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import psutil
import structlog
from opentelemetry.sdk.metrics.export import MetricsData

from .bpf.events import (PROCESS_EVENTS, Decoder, Event, EventType, ExchangeRecord, H2Chunk, decode_exchange,
                         exchange_fields)
from .bpf.loader import Probes
from .config import Config, ConfigError
from .discover.lifecycle import Discovery
from .discover.maps import namespace_listening_ports
from .discover.processes import ProcessTable
from .discover.selection import Selector
from .export import selfmetrics
from .bpf.libbpf import BpfError
from .export.counters import counter_families, to_sums
from .export.metrics import Metrics, ServiceMetrics, to_metrics_data
from .export.otlp_metrics import MetricPush
from .export.prometheus import PrometheusServer, exposition
from .export.resource import ResourceFactory
from .export.shapes import Shapes
from .export.spans import Clock
from .export.traces import TraceExport
from .network import NetworkMetrics
from .protocols import all_protocols
from .protocols.http2 import HTTP2
from .signals import StopSignal
from .tracker.connections import Tracker
from .tracker.context import make_sampler
from .tracker.exchange import Exchange
from .tracker.routes import Drop, Routes

HOST_PID_NAMESPACE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the initial PID namespace's inode, fixed by the kernel
HOUSEKEEPING_SECONDS = 5.0
# Exchanges whose response saw no byte for IDLE_NS are ended from the kernel's state (the last
# answer of a keep-alive connection would otherwise wait for the next request).
IDLE_NS = 500_000_000
# A sweep walks the kernel's connection table (~200 µs of cold buckets) only once a response
# can have been quiet for IDLE_NS: when the earliest response the last walk found under way can
# have been (IdleScan.quiet_at_ns; the loop's wait ends then), IDLE_NS after that walk if a
# response has begun since (Probes.responses_begun), and at least every FULL_SWEEP_NS, for a flag
# the kernel tested in the instant user space cleared it. Walks are WALK_GAP_NS apart at least,
# and more when they take long (hundreds of idle connections): at most 1/WALK_SHARE of the time. One
# that found what it could not end yet (a connection not announced, an entry read torn, a
# response short of its declared length) looks again LOOK_AGAIN_NS later. A span is out about
# IDLE_NS after its last byte, and a busy sidecar walks, and so drains, about twice a second:
# each drain costs 0.3-0.6 ms of cold caches whatever it finds.
WALK_GAP_NS = 100_000_000
WALK_SHARE = 50
LOOK_AGAIN_NS = 250_000_000
FULL_SWEEP_NS = 5_000_000_000
NEVER = 1 << 63
# Longest wait between two drains while the ring stays empty, unless BEYLA_POLL_INTERVAL_MS is
# longer (it applies as soon as records come; the probes wake the reader themselves when the
# ring fills a quarter). A response begun meanwhile is seen by the walk after it.
IDLE_POLL_MS = IDLE_NS // 1_000_000
# The wait once the pod is idle: the ring stayed empty for IDLE_POLL_MS and nothing is under way
# (no response to end, no exited process or orphan exchange to settle). The first response to
# begin wakes the reader (Probes.poll's idle_ms), so its exchange still ends within a second.
# A SIGTERM ends it at once (StopSignal's wakeup pipe is in the ring's epoll).
ASLEEP_MS = 1000
# Records handled per ring read. Between two reads the loop's syscalls let the span export
# thread take the GIL: a drain's backlog handled in one go would reach the span queue
# (OTEL_BSP_MAX_QUEUE_SIZE, 2048) faster than the exporter empties it.
DRAIN_BATCH = 512
# Longest wait for the span queues to take the next DRAIN_BATCH (TraceExport.make_room): meanwhile
# records stay in the ring buffer, which holds ~25 000 exchanges with the default 8 MiB. Not once
# half of the ring waits: an exporter slower than the traffic then loses spans (counted), never
# whole records in the kernel, which would take the exchanges' metrics with them.
SPAN_ROOM_SECONDS = 0.1
SPAN_ROOM_RING_BACKLOG = 0.5
# A process's sockets close after its exit event: its state goes with its last connection,
# at the latest this much later.
EXIT_GRACE_SECONDS = 1.0
KERNEL_COUNTERS_SECONDS = 1.0  # how fresh the scraped kernel loss counters are
EXPIRE_SECONDS = 0.25  # how often children that waited out their parent (PARENT_WAIT_NS) go out
SWITCH_INTERVAL_SECONDS = 0.001
IGNORE_MODES = {"all": Drop.ALL, "metrics": Drop.METRICS, "traces": Drop.TRACES}

log = structlog.get_logger()


def own_pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def target_pid_namespace(setting: str | int) -> int:
    """Inode of the PID namespace to instrument, from BEYLA_PID_NAMESPACE."""
    if setting == "self":
        return own_pid_namespace()
    if setting == "host":
        return HOST_PID_NAMESPACE
    return int(setting)


def next_wait(got: int, wait_ms: int, interval_ms: int) -> int:
    """The next ring wait (ms), after a drain of `got` records that followed a wait of `wait_ms`;
    `interval_ms`: BEYLA_POLL_INTERVAL_MS."""
    if got == DRAIN_BATCH:
        return 0  # more is waiting: round the loop again at once
    if got:
        return interval_ms
    # An empty ring: back off to IDLE_POLL_MS (ten idle sidecars polling every millisecond would
    # wake 10 000 times a second between them) or a longer interval, from 1 ms after a wait of 0,
    # which must not repeat.
    return min(max(interval_ms, IDLE_POLL_MS), max(1, wait_ms * 2))


@dataclass(slots=True)
class PipelineStats:
    records: int = 0
    malformed_records: int = 0
    own_records: int = 0  # the sidecar's own traffic (its exporters), dropped
    kernel_counters: dict[str, int] = field(default_factory=dict)  # Probes.counters(), refreshed each second


@dataclass(slots=True)
class _Target:
    """What the pipeline keeps per instrumented process."""

    resource: bytes  # its spans' Resource, OTLP-encoded once (TraceExport.resource)
    service: str
    metrics: ServiceMetrics | None
    shapes: Shapes


class Pipeline:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = PipelineStats()
        self._decode = Decoder().decode
        self.clock = Clock()
        self.processes = ProcessTable()
        self.resources = ResourceFactory(cfg)
        self._targets: dict[int, _Target] = {}
        self.export = TraceExport(cfg, self.clock)
        self.routes = Routes(cfg.routes_patterns, cfg.routes_unmatched, cfg.routes_max_per_service,
                             cfg.routes_ignore, IGNORE_MODES[cfg.routes_ignore_mode])
        protocols = all_protocols(cfg.db_query_text)
        # Aggregating costs per request: only when some exporter will read the metrics.
        self.metrics = (Metrics(protocols, cfg.metric_extra_attributes)
                        if cfg.prometheus_port or cfg.metrics_endpoint else None)
        self._metric_push: MetricPush | None = None
        # L3/L4 flow metrics (BEYLA_NETWORK_METRICS), of the pod as a whole: its service's resource.
        self.network = (NetworkMetrics(cfg, self.resources.service(self.resources.service_name(None)))
                        if cfg.network_metrics else None)
        self._me = psutil.Process()
        self._protocols = protocols
        self._http2 = next((p for p in protocols if isinstance(p, HTTP2)), None)
        # OTEL_TRACES_SAMPLER: decided where a TraceContext is made (server_context/client_context).
        self.sampler = make_sampler(cfg.traces_sampler, cfg.traces_sampler_arg)
        # Without a span destination exchanges need no trace context.
        self.tracker = Tracker(protocols, self._on_exchange, sampler=self.sampler, traces=self.export.enabled)
        self._exited: list[tuple[float, int, int]] = []  # (when to forget, pid, host pid)
        self._last_walk_ns = 0  # Probes.idle_exchanges(), by _sweep()
        self._quiet_at_ns = NEVER  # when the next walk can find an exchange to end
        self._walk_gap_ns = WALK_GAP_NS  # the least time from one walk to the next
        self.target_ns = target_pid_namespace(cfg.pid_namespace)
        # In our own namespace the events' ns_pid is what our /proc shows and what
        # identifies our own process; elsewhere only the host pid is meaningful here.
        self._same_ns = self.target_ns == own_pid_namespace()
        self._self_pid = os.getpid()
        self.discovery = Discovery(Selector(cfg.executable_name, cfg.open_ports), self.target_ns, self._self_pid,
                                   asyncio_tasks=cfg.asyncio_tasks)
        self.ready = threading.Event()

    def on_record(self, record: bytes | memoryview) -> None:
        self.stats.records += 1
        fields = exchange_fields(record)  # None: another event, or a malformed exchange
        if fields is None:
            ev = self._decode(record)
        elif self.tracker.repeat(record, fields):  # the short way (tracker/known.py)
            return
        else:
            ev = decode_exchange(record, fields=fields)
        if ev is None:
            self.stats.malformed_records += 1
            return
        pid = ev.ns_pid if self._same_ns else ev.pid
        if self._same_ns and pid == self._self_pid:
            self.stats.own_records += 1
            return
        if type(ev) is ExchangeRecord:
            self.tracker.exchange(ev)
        elif type(ev) is H2Chunk:
            self.tracker.h2(ev)
        elif ev.type in PROCESS_EVENTS:
            self._process_event(ev, pid)
        else:
            if ev.type is EventType.CONN_OPEN:
                if ev.pending and not self.discovery.pending_selected(pid):
                    self.tracker.handle(ev, excluded=True)  # reported before its verdict came: not selected
                    return
                self.processes.get(pid, ev.comm)  # now: a short-lived client may be gone by its span
            self.tracker.handle(ev)

    def _process_event(self, ev: Event, pid: int) -> None:
        # a fork's tid is its parent's tgid
        self.discovery.handle(ev, pid, ev.ns_tid if self._same_ns else ev.tid)
        if ev.type is EventType.PROCESS_EXEC:
            # a new image, named now while it runs (the probes wake us for it): a short-lived
            # client may be gone from /proc before its first record is read
            self.processes.forget(pid)
            self._targets.pop(pid, None)
            self.processes.get(pid, ev.comm)
        elif ev.type is EventType.PROCESS_EXIT:
            # its sockets close (and send their last exchanges) after this event
            self._exited.append((time.monotonic() + EXIT_GRACE_SECONDS, pid, ev.pid))

    def _forget_exited(self, now: float) -> None:
        """Nothing of an exited process stays: its spans went first, then its state goes."""
        keep = []
        for entry in self._exited:
            deadline, pid, host_pid = entry
            if deadline > now and self.tracker.has_connections(host_pid):
                keep.append(entry)
                continue
            self.tracker.forget_process(host_pid)
            self.processes.forget(pid)
            self._targets.pop(pid, None)
        self._exited = keep

    def _on_exchange(self, ex: Exchange) -> None:
        pid = ex.ns_pid if self._same_ns else ex.pid
        target = self._targets.get(pid)
        if target is None:
            target = self._targets[pid] = self._target(pid)
        shape = target.shapes.get(ex)
        if ex.known is not None and not shape.overflowed:  # overflows are counted one by one
            self.tracker.learn(ex.known, shape.output(ex, target.resource))
        if shape.drop is Drop.ALL:
            return
        metrics = shape.metrics
        if metrics is not None:
            series = shape.series(ex)
            if series is not None:
                metrics.add(series, ex.protocol.metric_values(ex.request, ex.response))
        ctx = ex.context
        if ctx is not None and ctx.sampled and shape.template is not None:  # sampled out: not a drop
            self.export.submit(ex, shape.template, target.resource)

    def _target(self, pid: int) -> _Target:
        proc = self.processes.get(pid)
        service = self.resources.service_name(proc)
        metrics = self.metrics.service(service, self.resources.service(service)) if self.metrics else None
        shapes = Shapes(service, self.routes, self.export, metrics, self.cfg.include_query)
        return _Target(self.export.resource(self.resources.create(pid, proc)), service, metrics, shapes)

    def is_ready(self) -> bool:
        """/readyz: probes attached, and not every OpenSSL attach failed (HTTPS would go
        untraced while the endpoint said all is well). Only informational: the webhook injects
        no readiness probe, so this never holds the app back."""
        d = self.discovery
        return self.ready.is_set() and not (d.stats.attach_failures and not d.tls_files)

    def self_stats(self) -> selfmetrics.SelfStats:
        """The sidecar's own counters; read from the scrape thread (plain ints and dict copies)."""
        t = self.tracker.stats
        spans = self.export.stats
        push = self._metric_push
        return selfmetrics.SelfStats(
            events_read=self.stats.records,
            events_lost=self.stats.kernel_counters.get("event_drops", 0) +
            self.stats.kernel_counters.get("exchange_drops", 0) + self.stats.kernel_counters.get("h2_chunk_drops", 0),
            exchanges_lost=self.stats.kernel_counters.get("exchange_drops", 0),
            pipelined_exchanges=dict(t.pipelined),
            kernel_read_failures=self.stats.kernel_counters.get("read_fails", 0),
            bytes_read=t.bytes,
            parse_failures={p.name: t.parse_failures.get(p.name, 0) for p in self._protocols},
            protocol_state_drops={p.name: p.state_drops for p in self._protocols},
            requests_completed=t.exchanges,
            spans_exported={k: v.exported for k, v in spans.items()},
            spans_failed={k: v.failed for k, v in spans.items()},
            spans_dropped={k: v.dropped for k, v in spans.items()},
            spans_abandoned={k: v.abandoned for k, v in spans.items()},
            metric_exports=push.exports if push else 0,
            metric_exports_failed=push.failures if push else 0,
            metric_exports_abandoned=push.abandoned if push else 0,
            instrumented_processes=self.discovery.instrumented_processes,
            tls_libraries=self.discovery.tls_files,
            asyncio_modules=self.discovery.asyncio_files,
            unsupported_tls=dict(self.discovery.stats.unsupported_tls),
            probe_attach_failures=self.discovery.stats.attach_failures,
            route_overflows=dict(self.routes.overflows),
            unrecognised_connections=dict(t.unrecognised_connections),
            unrecognised_bytes=dict(t.unrecognised_bytes),
            orphan_responses=self.stats.kernel_counters.get("orphan_responses", 0),
            context_propagation={k.removeprefix("context_"): v for k, v in self.stats.kernel_counters.items()
                                 if k.startswith("context_")},
            http2_desyncs=self._http2_desyncs(),
            http2_streams_dropped=self._http2.stream_drops if self._http2 is not None else 0,
        )

    def _http2_desyncs(self) -> dict[str, int]:
        """The HTTP/2 module's desyncs, and the connections seen mid-stream: their frames came as exchanges
        (no preface for the kernel to recognise) and were counted as unrecognised "http2"."""
        out = dict(self._http2.desyncs) if self._http2 is not None else {}
        mid = sum(n for (guess, _), n in self.tracker.stats.unrecognised_connections.items() if guess == "http2")
        if mid:
            out["mid_stream"] = mid
        return out

    def scrape(self) -> str:
        """The Prometheus exposition: HTTP metrics, target_info, beyla_sidecar_* self-metrics."""
        snapshots = self.metrics.snapshot() if self.metrics is not None else []
        own = selfmetrics.families(self.self_stats(), self._me)
        net = self.network
        if net is None:
            return exposition(snapshots, own)
        return exposition([*snapshots, *net.histograms()], [*own, *net.families()], counter_families(net.snapshot()),
                          [net.counters.resource])

    def _metrics_data(self) -> MetricsData:
        """What the OTLP metric push sends: the histograms and the network counters."""
        now_ns = time.time_ns()
        snapshots = self.metrics.snapshot() if self.metrics is not None else []
        sums = to_sums(self.network.snapshot(), now_ns) if self.network is not None else []
        if self.network is not None:
            snapshots = [*snapshots, *self.network.histograms()]
        return to_metrics_data(snapshots, now_ns, sums)

    def _start_exporters(self, cleanup: ExitStack) -> None:
        """The Prometheus endpoint and the OTLP metric push; `cleanup` makes the final export and stops them."""
        if self.cfg.prometheus_port:
            address, port = self.cfg.prometheus_address, self.cfg.prometheus_port
            try:
                server = PrometheusServer(address, port, self.scrape, self.is_ready)
            except OSError as exc:  # e.g. the port is taken (the pod shares one network namespace)
                raise ConfigError(f"BEYLA_PROMETHEUS_PORT={port} is unusable: cannot listen on "
                                  f"{address}:{port}: {exc.strerror}. Choose a free port, or 0 for none.") from None
            server.start()
            cleanup.callback(server.stop)
        if (self.metrics is not None or self.network is not None) and self.cfg.metrics_endpoint:
            push = self._metric_push = MetricPush(self._metrics_data,
                                                  self.cfg.metric_export_interval, self.cfg.metric_export_timeout,
                                                  self.cfg.metrics_endpoint)
            push.start()
        cleanup.callback(self._final_export)  # after the probes detach (LIFO), before /metrics stops

    def _start_network(self, cleanup: ExitStack) -> None:
        """The packet socket and its filter; without NET_RAW one error names the fix and the rest
        of the sidecar runs on. Stopped (last flush) before the final export (LIFO)."""
        if self.network is None:
            return
        try:
            self.network.start()
        except BpfError as exc:  # NetflowError without NET_RAW: its message names the fix
            log.error("network metrics disabled", reason=str(exc))
            self.network = None
            return
        cleanup.callback(self.network.stop)

    def _final_export(self) -> None:
        """Spans and metrics within one deadline (BEYLA_SHUTDOWN_TIMEOUT_MS): the pod's grace period
        is short. What misses it is abandoned, counted and logged."""
        started = time.monotonic()
        deadline = started + self.cfg.shutdown_timeout
        push = self._metric_push
        if push is not None:
            push.close()  # its final export runs while the spans' do
        spans = self.export.shutdown(deadline)
        metric_exports = push.stop(deadline) if push is not None else 0
        report = log.warning if metric_exports or any(spans.values()) else log.info
        report("final export", seconds=round(time.monotonic() - started, 3), spans_abandoned=spans,
               metric_exports_abandoned=metric_exports)

    def _walk_at(self, probes: Probes) -> int:
        """When the next walk of the kernel's connections is due (monotonic ns)."""
        last = self._last_walk_ns
        due = min(self._quiet_at_ns, last + (IDLE_NS if probes.responses_begun() else FULL_SWEEP_NS))
        return max(due, last + self._walk_gap_ns)

    def _wait_ms(self, probes: Probes, wait_ms: int) -> int:
        """The ring wait, cut short where the next walk is due."""
        until = self._walk_at(probes) - time.monotonic_ns()
        return wait_ms if until >= wait_ms * 1_000_000 else max(0, -(-until // 1_000_000))

    def _sweep(self, probes: Probes) -> None:
        now_ns = time.monotonic_ns()
        if now_ns >= self._walk_at(probes):
            self._last_walk_ns = now_ns
            scan = probes.idle_exchanges(IDLE_NS, now_ns)
            # the kernel does not send them again (a full ring would count them lost)
            probes.mark_swept(self.tracker.sweep(scan.records))
            quiet_at = NEVER if scan.quiet_at_ns is None else scan.quiet_at_ns
            if quiet_at <= now_ns or not all(map(self.tracker.swept, scan.records)):
                quiet_at = now_ns + LOOK_AGAIN_NS
            self._quiet_at_ns = quiet_at
            self._walk_gap_ns = max(WALK_GAP_NS, (time.monotonic_ns() - now_ns) * WALK_SHARE)

    def _settled(self) -> bool:
        """Nothing under way that a timer of the loop has to finish."""
        return self._quiet_at_ns == NEVER and not self._exited and not self.tracker.waiting

    def housekeeping(self) -> None:
        self.clock.sync()
        self.discovery.sweep()
        for pid in self.processes.prune():
            self._targets.pop(pid, None)

    def run(self, stop: threading.Event) -> None:
        """Attach the probes and process events until `stop` is set; always detaches."""
        with ExitStack() as cleanup:
            self._start_exporters(cleanup)  # first, so /healthz answers while probes load
            self._start_network(cleanup)
            with Probes(req_capture=self.cfg.request_capture_size, resp_capture=self.cfg.response_capture_size,
                        ringbuf_size=self.cfg.ringbuf_size, max_connections=self.cfg.max_connections,
                        strategy=self.cfg.attach_strategy, pid_namespace=self.target_ns,
                        filter_pids=self.discovery.selector.filters,
                        select_at_exec=self.discovery.selector.at_exec, sweep_idle_ns=IDLE_NS,
                        propagation=self.cfg.context_propagation, cgroup2_mount=self.cfg.cgroup2_mount) as probes:
                # servers that were listening before the probes attached (our namespace is the pod's)
                probes.add_listen_ports(os.stat("/proc/self/ns/net").st_ino, namespace_listening_ports())
                if isinstance(stop, StopSignal):
                    probes.wake_on(stop.fileno())  # a SIGTERM ends the ring's wait at once
                if probes.uprobe_error:
                    log.error("HTTPS through OpenSSL will not be traced", reason=probes.uprobe_error)
                self.discovery.start(probes)
                if probes.propagation is not None:
                    log.info("context propagation on", mode=probes.propagation.mode,
                             pod_cgroup=str(probes.propagation.pod_cgroup))
                log.info("instrumentation ready", strategy=probes.strategy, uprobes=probes.uprobe_mechanism,
                         pid_namespace=self.target_ns,
                         exporters=self.export.destinations, request_capture=self.cfg.request_capture_size,
                         response_capture=self.cfg.response_capture_size,
                         prometheus_port=self.cfg.prometheus_port or None,
                         metrics_endpoint=self.cfg.metrics_endpoint or None)
                self.ready.set()
                # What start-up made (modules, grpc, the OTel SDK) lives as long as we do: out of
                # the collector's sight, so that collections scan only what the data path makes.
                gc.freeze()
                # The span export threads take the GIL back after each blocking call of gRPC's, several
                # per batch: after at most 5 ms by default, during which spans keep coming.
                sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
                timeout_ms = max(1, int(self.cfg.poll_interval * 1000))
                next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
                next_counters = next_expire = 0.0
                wait_ms = timeout_ms
                got = 0
                while not stop.is_set():
                    if probes.ring_backlog() < SPAN_ROOM_RING_BACKLOG:
                        self.export.make_room(DRAIN_BATCH, SPAN_ROOM_SECONDS)
                    asleep = not got and wait_ms >= IDLE_POLL_MS and self._settled()
                    got = probes.poll(wait_ms if asleep else self._wait_ms(probes, wait_ms), self.on_record,
                                      DRAIN_BATCH, idle_ms=max(ASLEEP_MS, wait_ms) if asleep else None)
                    wait_ms = next_wait(got, wait_ms, timeout_ms)
                    if got and self.metrics is not None:
                        self.metrics.flush()
                    self.discovery.flush()
                    now = time.monotonic()
                    if self._exited:
                        self._forget_exited(now)
                    self._sweep(probes)
                    if now >= next_expire:
                        self.tracker.expire(time.monotonic_ns())
                        next_expire = now + EXPIRE_SECONDS
                    if now >= next_counters:
                        self.stats.kernel_counters = probes.counters()
                        next_counters = now + KERNEL_COUNTERS_SECONDS
                    if now >= next_housekeeping:
                        self.housekeeping()
                        next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
                log.info("stopping")
                probes.consume(self.on_record)
                last = probes.idle_exchanges(0, time.monotonic_ns())  # every exchange still open
                self.tracker.sweep(last.records, finished_only=False)
                self.tracker.expire(1 << 63)
                self.stats.kernel_counters = probes.counters()
                if probes.propagation is not None:
                    log.info("context propagation", **{k: v for k, v in self.stats.kernel_counters.items()
                                                       if k.startswith("context_")})
        log.info("stopped", records=self.stats.records, exchanges=self.tracker.stats.exchanges,
                 malformed_records=self.stats.malformed_records,
                 parse_failures=self.tracker.stats.parse_failures)
