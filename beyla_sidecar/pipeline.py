"""The sidecar's one pipeline object: kernel events -> tracker -> spans -> exporters.

All mutable state of a running sidecar lives here (or in the objects it owns).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import structlog
from opentelemetry.sdk.resources import Resource

from .bpf.events import decode
from .bpf.loader import Probes
from .config import Config
from .discover.processes import ProcessTable
from .export.resource import ResourceFactory
from .export.spans import Clock, to_span
from .export.traces import TraceExport
from .protocols import all_protocols
from .tracker.connections import Tracker
from .tracker.exchange import Exchange

HOST_PID_NAMESPACE = 0xEFFFFFFC  # PROC_PID_INIT_INO: the initial PID namespace's inode, fixed by the kernel
HOUSEKEEPING_SECONDS = 5.0

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


@dataclass(slots=True)
class PipelineStats:
    records: int = 0
    malformed_records: int = 0
    own_records: int = 0  # the sidecar's own traffic (its exporters), dropped


class Pipeline:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stats = PipelineStats()
        self.clock = Clock()
        self.processes = ProcessTable()
        self.resources = ResourceFactory(cfg)
        self._resource_by_pid: dict[int, Resource] = {}
        self.export = TraceExport(cfg)
        self.tracker = Tracker(all_protocols(), self._on_exchange)
        self.target_ns = target_pid_namespace(cfg.pid_namespace)
        # In our own namespace the events' ns_pid is what our /proc shows and what
        # identifies our own process; elsewhere only the host pid is meaningful here.
        self._same_ns = self.target_ns == own_pid_namespace()
        self._self_pid = os.getpid()
        self.ready = threading.Event()

    def on_record(self, record: bytes | memoryview) -> None:
        self.stats.records += 1
        ev = decode(record)
        if ev is None:
            self.stats.malformed_records += 1
            return
        pid = ev.ns_pid if self._same_ns else ev.pid
        if self._same_ns and pid == self._self_pid:
            self.stats.own_records += 1
            return
        self.processes.get(pid, ev.comm)  # now: a short-lived client may be gone by its span
        self.tracker.handle(ev)

    def _on_exchange(self, ex: Exchange) -> None:
        pid = ex.ns_pid if self._same_ns else ex.pid
        resource = self._resource_by_pid.get(pid)
        if resource is None:
            resource = self._resource_by_pid[pid] = self.resources.create(pid, self.processes.get(pid))
        self.export.submit(to_span(ex, resource, self.clock, self.cfg.include_query))

    def housekeeping(self) -> None:
        self.clock.sync()
        for pid in self.processes.prune():
            self._resource_by_pid.pop(pid, None)

    def run(self, stop: threading.Event) -> None:
        """Attach the probes and process events until `stop` is set; always detaches."""
        with Probes(capture_size=self.cfg.capture_size, ringbuf_size=self.cfg.ringbuf_size,
                    strategy=self.cfg.attach_strategy) as probes:
            probes.allow_pid_namespace(self.target_ns)
            log.info("instrumentation ready", strategy=probes.strategy, pid_namespace=self.target_ns,
                     exporters=self.export.destinations, capture_size=self.cfg.capture_size)
            self.ready.set()
            timeout_ms = max(1, int(self.cfg.poll_interval * 1000))
            next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
            while not stop.is_set():
                probes.poll(timeout_ms, self.on_record)
                if time.monotonic() >= next_housekeeping:
                    self.housekeeping()
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_SECONDS
            probes.consume(self.on_record)
        self.export.flush()
        self.export.shutdown()
        log.info("stopped", records=self.stats.records, exchanges=self.tracker.stats.exchanges,
                 malformed_records=self.stats.malformed_records,
                 parse_failures=self.tracker.stats.parse_failures)
