"""Lifecycle of the probes: open the packaged object, set knobs, load the chosen
strategy's programs, attach, fill the PID-namespace filter, drain the ring buffer, close.

    with Probes(req_capture=256, resp_capture=256) as probes:
        probes.allow_pid_namespace(pid_namespace_inode())
        while running:
            probes.poll(100, handle_record)
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from . import features, libbpf
from .events import (
    ANNOUNCED_IN_STATE, CONN_STATE, PHASE_RESPONSE, REQ_CAPTURE_MAX, RESP_CAPTURE_MAX, RESP_END_IN_STATE, End,
    ExchangeRecord, ExeId, decode_exchange,
)
from .features import UPROBE_MULTI, KernelFeatures, UprobeSupport, probe_features, uprobe_support
from .libbpf import BpfError
from .propagation import MODES, Propagation
from .ring import RecordHandler, RingReader
from .strategy import (ASYNCIO_UPROBES, OBJECT_NAME, OPENSSL_UPROBES, STRATEGIES, UPROBE_PROGRAMS, Strategy, Uprobe,
                       by_name)

DEFAULT_REQ_CAPTURE = 256
DEFAULT_RESP_CAPTURE = 256
DEFAULT_MAX_CONNECTIONS = 8192
DEFAULT_RINGBUF_SIZE = 8 << 20
AUTO = "auto"
# The probes wake the reader only once this fraction of the ring is unread, and then once per
# 1/WAKEUP_STEP_FRACTION of the ring while it is not read.
WAKEUP_FRACTION = 4
WAKEUP_STEP_FRACTION = 64
# Indexes of enum counter_index in probes/beyla.h. A record the ring refused counts once: in
# event_drops (connection and process events) or exchange_drops (one request and its response).
COUNTER_NAMES = ("event_drops", "read_fails", "orphan_responses", "exchange_drops", "h2_chunk_drops")
# conns entries per bpf() call of the idle sweep: one call for most pods, ~100 KB of buffer
SWEEP_BATCH = 64
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_LISTEN_KEY = struct.Struct("<IH2x")  # struct listen_key: netns inode, port
_EXE_ID = struct.Struct("<QII")  # struct exe_id: inode, dev (kernel dev_t), generation
_SELECTED = 1  # enum selection in probes/gate.h (2: PENDING)


class IdleScan(NamedTuple):
    """One walk of conns by Probes.idle_exchanges()."""

    records: list[ExchangeRecord]  # exchanges whose response went quiet
    # When the first response still under way can have been quiet long enough (CLOCK_MONOTONIC
    # ns): the walk's now_ns for one that cannot tell (no byte timed yet, its CONN_OPEN still
    # due, a copy torn by the kernel's update); None: none under way.
    quiet_at_ns: int | None


class _Bss:
    """The u32 globals of a loaded object's .bss, read and written in place (libbpf creates
    global-data maps mmapable). Aligned 4-byte loads and stores, never torn."""

    def __init__(self, obj: libbpf.BpfObject) -> None:
        self._vars = obj.datasec_vars(".bss")
        self._map = mmap.mmap(obj.map(".bss").fd, mmap.PAGESIZE, access=mmap.ACCESS_WRITE)
        self._view = memoryview(self._map).cast("I")

    def index(self, name: str) -> int:
        offset, size = self._vars.get(name, (-1, 0))
        if offset < 0 or size != 4:
            raise BpfError(f".bss variable {name} (4 bytes) not in object", errno.ENOENT)
        return offset // 4

    def get(self, index: int) -> int:
        return self._view[index]

    def set(self, index: int, value: int) -> None:
        self._view[index] = value

    def close(self) -> None:
        self._view.release()
        self._map.close()


class ProbeSetupError(BpfError):
    """The probes cannot run here; the message names the fix."""

    def __init__(self, message: str, err: int, log_text: str = "") -> None:
        Exception.__init__(self, message)
        self.errno = err
        self.log = log_text


def pid_namespace_inode(pid: int | str = "self") -> int:
    """Inode of the PID namespace of `pid` (default: this process), as the probes compare it."""
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


@contextmanager
def _packaged_object() -> Iterator[Path]:
    ref = resources.files("beyla_sidecar.bpf").joinpath("objects", OBJECT_NAME)
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise ProbeSetupError(f"{OBJECT_NAME} not built: run make -C probes", errno.ENOENT)
        yield path


def _check_args(req_capture: int, resp_capture: int, ringbuf_size: int) -> None:
    if not 0 <= req_capture <= REQ_CAPTURE_MAX:
        raise ValueError(f"req_capture {req_capture} outside 0..{REQ_CAPTURE_MAX}")
    if not 0 <= resp_capture <= RESP_CAPTURE_MAX:
        raise ValueError(f"resp_capture {resp_capture} outside 0..{RESP_CAPTURE_MAX}")
    page = os.sysconf("SC_PAGE_SIZE")
    if ringbuf_size < page or ringbuf_size & (ringbuf_size - 1):
        raise ValueError(f"ringbuf_size {ringbuf_size}: must be a power of two >= {page}")


def _check_inode(inode: int) -> int:
    if not 0 < inode < 1 << 32:
        raise ValueError(f"PID namespace inode {inode} is not a 32-bit inode number")
    return inode


def _check_host() -> None:
    if not features.BTF_PATH.exists():
        raise ProbeSetupError(features.FIX_BTF, errno.ENOENT)


def _check_strategy_table(obj: libbpf.BpfObject) -> None:
    listed = {name for s in STRATEGIES for name in s.programs} | set(UPROBE_PROGRAMS)
    present = {p.name for p in obj.programs()}
    if present - listed or listed - present:
        raise ProbeSetupError(
            f"{OBJECT_NAME} and beyla_sidecar/bpf/strategy.py disagree: in object only "
            f"{sorted(present - listed)}, in table only {sorted(listed - present)}", errno.EINVAL)


def _choose(name: str) -> Strategy:
    if name != AUTO:
        return by_name(name)
    found = probe_features()
    if found.strategy is None:
        raise ProbeSetupError("no attach strategy works on this kernel: " + "; ".join(found.problems),
                              errno.EOPNOTSUPP)
    return by_name(found.strategy)


def _setup_error(exc: BpfError, step: str) -> ProbeSetupError:
    if exc.errno == errno.EPERM:
        return ProbeSetupError(f"{step}: {features.FIX_PRIVILEGE}\n{exc}", exc.errno)
    if exc.errno == errno.ENOENT and features.tracefs_dir() is None:
        return ProbeSetupError(f"{step}: {features.FIX_TRACEFS}\n{exc}", exc.errno)
    return ProbeSetupError(f"{step}: {exc}", exc.errno, exc.log)


class UprobeSet:
    """The uprobes of one file (for every process mapping it): OpenSSL's, or asyncio's."""

    def __init__(self, path: str, links: list[libbpf.Link], tls: bool = True) -> None:
        self.path = path
        self.links = links
        self.tls = tls

    def destroy(self) -> None:
        """Last attached, first detached (a table's return probes come first: see strategy.py)."""
        for link in reversed(self.links):
            link.destroy()
        self.links = []


class Probes:
    """The loaded and attached HTTP probes. Not thread-safe: use from one thread.

    strategy: a name from strategy.STRATEGIES, or "auto" for the first the kernel supports.
    filter_pids: only processes passed to allow_process() report traffic (else the whole pod).
    select_at_exec: with filter_pids, the probes judge each new executable at exec from the
    verdicts given with set_exe_verdict(); one without a verdict reports traffic as PENDING
    until it gets one (BEYLA_EXECUTABLE_NAME alone: the executable decides).
    sweep_idle_ns: the shortest quiet time after which the caller ends exchanges from
    idle_exchanges() and passes them to mark_swept() (0: it never does).
    propagation: a mode of propagation.MODES; other than "disabled", propagate.bpf.o is loaded
    and attached to the pod's cgroup, found under `cgroup2_mount` (see propagation.py).
    """

    def __init__(self, *, req_capture: int = DEFAULT_REQ_CAPTURE, resp_capture: int = DEFAULT_RESP_CAPTURE,
                 ringbuf_size: int = DEFAULT_RINGBUF_SIZE, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 strategy: str = AUTO, filter_pids: bool = False, pid_namespace: int = 0,
                 select_at_exec: bool = False, sweep_idle_ns: int = 0, propagation: str = "disabled",
                 cgroup2_mount: str = "/sys/fs/cgroup") -> None:
        _check_args(req_capture, resp_capture, ringbuf_size)
        if propagation not in MODES:
            raise ValueError(f"propagation {propagation!r} not one of {', '.join(MODES)}")
        _check_host()
        self._strategy = _choose(strategy)
        self.req_capture = req_capture
        self.resp_capture = resp_capture
        self._max_connections = max_connections
        self._pid_namespace = _check_inode(pid_namespace) if pid_namespace else 0
        self._filter_pids = filter_pids
        self._select_at_exec = filter_pids and select_at_exec
        self._sweep_idle_ns = sweep_idle_ns
        self._propagation_mode = propagation
        self._cgroup2_mount = cgroup2_mount
        self.propagation: Propagation | None = None
        self._links: list[libbpf.Link] = []
        self._uprobes: list[UprobeSet] = []
        self._uprobe_support = UprobeSupport(None)
        self._ring: RingReader | None = None
        self._bss: _Bss | None = None
        self._polling = False
        self._close_pending = False
        with _packaged_object() as path:
            self._obj: libbpf.BpfObject | None = libbpf.BpfObject(path)
        try:
            self._setup(ringbuf_size)
        except BaseException:
            self.close()
            raise

    def _setup(self, ringbuf_size: int) -> None:
        obj = self._object()
        _check_strategy_table(obj)
        self._uprobe_support = uprobe_support()
        for prog in obj.programs():
            prog.set_autoload(prog.name in self._strategy.programs or prog.name in UPROBE_PROGRAMS)
            if prog.name in UPROBE_PROGRAMS and self._uprobe_support.mechanism == UPROBE_MULTI:
                prog.set_expected_attach_type(libbpf.BPF_TRACE_UPROBE_MULTI)
        obj.set_rodata("pod_pidns", _U32.pack(self._pid_namespace))
        obj.set_rodata("req_capture", _U32.pack(self.req_capture))
        obj.set_rodata("resp_capture", _U32.pack(self.resp_capture))
        obj.map("conns").set_max_entries(self._max_connections)
        obj.map("swept").set_max_entries(self._max_connections)
        obj.set_rodata("filter_pids", bytes([self._filter_pids]))
        obj.set_rodata("select_at_exec", bytes([self._select_at_exec]))
        obj.set_rodata("swept_after_ns", _U64.pack(self._sweep_idle_ns))
        obj.set_rodata("propagation", bytes([MODES[self._propagation_mode]]))
        # an LRU map is allocated whole at creation: one slot when propagation is off
        obj.map("sock_ids_map").set_max_entries(self._max_connections if MODES[self._propagation_mode] else 1)
        obj.set_rodata("wakeup_bytes", _U64.pack(ringbuf_size // WAKEUP_FRACTION))
        obj.set_rodata("wakeup_step", _U64.pack(ringbuf_size // WAKEUP_STEP_FRACTION))
        obj.map("events").set_max_entries(ringbuf_size)
        try:
            obj.load()
        except BpfError as exc:
            raise _setup_error(exc, "loading the probes") from exc
        self._programs = {prog.name: prog for prog in obj.programs()}
        for prog in obj.programs():
            if prog.name in self._strategy.programs:
                try:
                    self._links.append(prog.attach())
                except BpfError as exc:
                    raise _setup_error(exc, f"attaching {prog.name}") from exc
        if MODES[self._propagation_mode]:  # after: every request it writes a context into is recorded
            self.propagation = Propagation(obj, self._propagation_mode, self._cgroup2_mount)
        self._filter = obj.map("pid_ns_filter")
        self._allowed = obj.map("allowed_pids")
        self._verdicts = obj.map("exe_verdicts")
        self._counters = obj.map("counters")
        self._conns = obj.map("conns")
        self._swept = obj.map("swept")
        self._tls_files = obj.map("tls_files")
        self._asyncio_files = obj.map("asyncio_files")
        self._listen = obj.map("listen_ports")
        self._ring = RingReader(obj.map("events").fd, ringbuf_size)
        self._bss = _Bss(obj)
        self._responses_begun = self._bss.index("responses_begun")
        self._reader_asleep = self._bss.index("reader_asleep")

    def __enter__(self) -> Probes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _object(self) -> libbpf.BpfObject:
        if self._obj is None:
            raise BpfError("probes are closed", errno.EBADF)
        return self._obj

    @property
    def strategy(self) -> str:
        """Name of the attach strategy in use."""
        return self._strategy.name

    @property
    def uprobe_mechanism(self) -> str | None:
        """How attach_openssl() attaches (features.UPROBE_MULTI or UPROBE_PERF); None: it cannot."""
        return self._uprobe_support.mechanism

    @property
    def uprobe_error(self) -> str | None:
        """Why attach_openssl() cannot work here (names the fix), when it cannot."""
        return self._uprobe_support.error

    @property
    def program_names(self) -> tuple[str, ...]:
        """Names of the attached programs (as `bpftool prog show` lists them)."""
        return tuple(link.what for link in self._links)

    def allow_pid_namespace(self, inode: int) -> None:
        """Observe the processes of the PID namespace with this inode (see pid_namespace_inode)."""
        self._object()
        if self._pid_namespace:
            raise ValueError("the probes were loaded for one PID namespace (pid_namespace=...)")
        self._filter.update(_U32.pack(_check_inode(inode)), b"\x01")

    def allow_process(self, ns_tgid: int) -> None:
        """filter_pids: let this process (tgid in its own PID namespace) report traffic."""
        self._object()
        self._allowed.update(_U32.pack(ns_tgid), b"\x01")

    def disallow_process(self, ns_tgid: int) -> None:
        self._object()
        self._allowed.delete(_U32.pack(ns_tgid))

    def selected_processes(self) -> dict[int, bool]:
        """filter_pids: the kernel's selection, ns tgid -> True (selected) or False (pending)."""
        self._object()
        out = {}
        for key in list(self._allowed.keys()):
            value = self._allowed.lookup(key)
            if value is not None:
                out[_U32.unpack(key)[0]] = value[0] == _SELECTED
        return out

    def set_exe_verdict(self, exe: ExeId, selected: bool) -> None:
        """select_at_exec: whether processes running this executable (as an exec event named
        it) are selected; the probes apply it at the next exec, and to PENDING processes."""
        self._object()
        self._verdicts.update(_EXE_ID.pack(*exe), bytes([selected]))

    def attach_openssl(self, path: str, offsets: Mapping[str, int]) -> UprobeSet:
        """OpenSSL uprobes on the library (or executable) at `path`, at the file offsets of
        its SSL_* functions (those missing from `offsets` are skipped), for all processes:
        the programs check namespace and selection. All or nothing: raises BpfError."""
        return self._attach_uprobes(path, offsets, OPENSSL_UPROBES, tls=True)

    def attach_asyncio(self, path: str, offsets: Mapping[str, int]) -> UprobeSet:
        """The asyncio Task uprobes on CPython's _asyncio module (or the interpreter it is built
        into) at `path`, at the file offsets of its hooks (discover/asyncio_hooks.py), for all
        processes. All or nothing: raises BpfError."""
        return self._attach_uprobes(path, offsets, ASYNCIO_UPROBES, tls=False)

    def _attach_uprobes(self, path: str, offsets: Mapping[str, int], table: tuple[Uprobe, ...],
                        tls: bool) -> UprobeSet:
        self._object()
        support = self._uprobe_support
        if support.mechanism is None:  # the reason (support.error) is logged once, at start-up
            raise BpfError("uprobes unavailable on this node (reason logged at start-up, and by "
                           "`beyla-sidecar check`)", support.errno or errno.EOPNOTSUPP)
        links: list[libbpf.Link] = []
        try:
            attach = self._attach_multi if support.mechanism == UPROBE_MULTI else self._attach_perf
            attach(path, offsets, table, links)
        except BpfError:
            UprobeSet(path, links).destroy()
            raise
        uprobes = UprobeSet(path, links, tls)
        self._uprobes.append(uprobes)
        self._count_files()
        return uprobes

    def _attach_perf(self, path: str, offsets: Mapping[str, int], table: tuple[Uprobe, ...],
                     links: list[libbpf.Link]) -> None:
        """One perf event of the uprobe PMU per function (needs CAP_SYS_ADMIN on Linux 6.16+)."""
        for probe in table:
            if probe.symbol in offsets:
                links.append(self._programs[probe.program].attach_uprobe(
                    -1, path, offset=offsets[probe.symbol], retprobe=probe.retprobe))

    def _attach_multi(self, path: str, offsets: Mapping[str, int], table: tuple[Uprobe, ...],
                      links: list[libbpf.Link]) -> None:
        """One uprobe_multi link per program and direction, on all its functions of the file."""
        grouped: dict[tuple[str, bool], list[int]] = {}
        for probe in table:
            if probe.symbol in offsets:
                grouped.setdefault((probe.program, probe.retprobe), []).append(offsets[probe.symbol])
        for (program, retprobe), where in grouped.items():
            links.append(self._programs[program].attach_uprobe_multi(path, where, retprobe))

    def detach(self, uprobes: UprobeSet) -> None:
        uprobes.destroy()
        self._uprobes.remove(uprobes)
        self._count_files()

    def _count_files(self) -> None:
        """The socket probes look for SSL calls in progress, and for asyncio Tasks, only while
        some file of the kind is probed."""
        tls = sum(u.tls for u in self._uprobes)
        self._tls_files.update(_U32.pack(0), _U32.pack(tls))
        self._asyncio_files.update(_U32.pack(0), _U32.pack(len(self._uprobes) - tls))

    def poll(self, timeout_ms: int, callback: RecordHandler, limit: int | None = None,
             idle_ms: int | None = None) -> int:
        """Wait up to timeout_ms, then hand the records (at most `limit`) to callback; number handled.
        The probes only wake the reader when the ring is 1/WAKEUP_FRACTION full, so this
        normally returns after timeout_ms: that is the delivery latency. `idle_ms`: wait that
        long instead while no response has begun since the last idle_exchanges(); the first
        one that begins ends the wait. callback gets a memoryview into the ring, valid only
        during the call. An exception from callback propagates (the record that raised counts
        as consumed)."""
        return self._drain(callback, timeout_ms, limit, idle_ms)

    def wake_on(self, fd: int) -> None:
        """poll()'s waits also end when fd turns readable (RingReader.watch): a stop signal's."""
        self._reader().watch(fd)

    def ring_backlog(self) -> float:
        """The share of the ring buffer holding records not read yet (RingReader.backlog)."""
        return self._reader().backlog()

    def consume(self, callback: RecordHandler) -> int:
        """Hand every record already in the ring buffer to callback, without waiting."""
        return self._drain(callback, None, None)

    def _reader(self) -> RingReader:
        self._object()
        assert self._ring is not None
        return self._ring

    def _drain(self, callback: RecordHandler, timeout_ms: int | None, limit: int | None,
               idle_ms: int | None = None) -> int:
        ring = self._reader()
        self._polling = True
        try:
            if idle_ms is not None:
                self._wait_idle(ring, timeout_ms or 0, idle_ms)
            elif timeout_ms is not None:
                ring.wait(timeout_ms)
            return ring.drain(callback, limit)
        finally:
            self._polling = False
            if self._close_pending:
                self.close()

    def _wait_idle(self, ring: RingReader, timeout_ms: int, idle_ms: int) -> None:
        """poll(idle_ms=...)'s wait: while reader_asleep is set, the response that sets
        responses_begun wakes the reader."""
        bss = self._bss
        assert bss is not None
        bss.set(self._reader_asleep, 1)
        try:
            # tested after the store: a response that found it clear had set responses_begun
            # first. x86 may still let this load pass that store (no fence from Python): then
            # neither side sees the other, and that one exchange ends up to idle_ms late.
            ring.wait(timeout_ms if bss.get(self._responses_begun) else idle_ms)
        finally:
            bss.set(self._reader_asleep, 0)

    def add_listen_ports(self, netns: int, ports: Iterable[int]) -> None:
        """Listening TCP ports of a network namespace (inode) opened before the probes: their
        accepted sockets are servers. Later listen() calls are seen by the probes."""
        self._object()
        for port in ports:
            self._listen.update(_LISTEN_KEY.pack(netns, port), b"\x01")

    def responses_begun(self) -> bool:
        """Has a response begun since the last idle_exchanges()? Until one does, a walk finds
        nothing that the last one did not (IdleScan.quiet_at_ns aside)."""
        assert self._bss is not None, "probes closed"
        return bool(self._bss.get(self._responses_begun))

    def idle_exchanges(self, idle_ns: int, now_ns: int) -> IdleScan:
        """Exchanges whose response began and then saw no byte for idle_ns: in all likelihood
        finished, and otherwise only ended by the connection's next request or close (the last
        answer on a keep-alive connection, a long poll's). The kernel keeps them: the caller
        passes those it ends to mark_swept(), and drops a record the kernel sent for one before
        the mark (same key). Not those of a connection whose CONN_OPEN the full ring refused:
        the kernel sends them after it (IdleScan.quiet_at_ns)."""
        self._object()
        assert self._bss is not None
        # before the walk: a response that begins during it sets the flag again (the kernel
        # updates its entry before it tests the flag)
        self._bss.set(self._responses_begun, 0)
        out = []
        quiet_at: int | None = None
        for key_view, view in self._conns.lookup_batch(SWEEP_BATCH):
            if view[0] != PHASE_RESPONSE:
                continue
            resp_end = RESP_END_IN_STATE.unpack_from(view)[0]
            if not view[ANNOUNCED_IN_STATE] or not resp_end:
                quiet_at = now_ns
                continue
            if now_ns - resp_end < idle_ns:
                if quiet_at is None or resp_end + idle_ns < quiet_at:
                    quiet_at = resp_end + idle_ns
                continue
            # read twice: the kernel updates the value in place, a torn copy differs
            value = bytes(view)
            if value != self._conns.lookup(bytes(key_view)):
                quiet_at = now_ns
                continue
            rec = decode_exchange(memoryview(value)[CONN_STATE.size:], End.SWEEP)
            if rec is not None:
                out.append(rec)
        return IdleScan(out, quiet_at)

    def mark_swept(self, records: Sequence[ExchangeRecord]) -> None:
        """The caller ended these exchanges from idle_exchanges(): the kernel will not send them
        (one ended meanwhile was sent already; the caller drops that copy). One bpf() call."""
        self._object()
        self._swept.update_batch(b"".join([_U64.pack(rec.sock_id) for rec in records]),
                                 b"".join([_U64.pack(rec.req_start_ns) for rec in records]))

    def counters(self) -> dict[str, int]:
        """Kernel-side loss counters summed over CPUs (names: COUNTER_NAMES), and with propagation
        on what it did ("context_" + propagation.COUNTER_NAMES)."""
        self._object()
        ncpu = libbpf.num_possible_cpus()
        out = {}
        for index, name in enumerate(COUNTER_NAMES):
            raw = self._counters.lookup(_U32.pack(index), _U64.size * ncpu) or b""
            out[name] = sum(v for (v,) in _U64.iter_unpack(raw))
        if self.propagation is not None:
            out.update(("context_" + k, v) for k, v in self.propagation.counters().items())
        return out

    def close(self) -> None:
        """Detach and unload everything (idempotent). Safe from a signal handler that
        interrupts poll(): the close then happens when the drain returns."""
        if self._polling:
            self._close_pending = True
            return
        with ExitStack() as stack:
            # Registered in reverse: ring buffer unmapped first, object closed last.
            if self._obj is not None:
                stack.callback(self._obj.close)
            if self.propagation is not None:
                stack.callback(self.propagation.close)
            for link in self._links:
                stack.callback(link.destroy)
            for uprobes in self._uprobes:
                stack.callback(uprobes.destroy)
            if self._ring is not None:
                stack.callback(self._ring.close)
            if self._bss is not None:
                stack.callback(self._bss.close)
        self._obj = None
        self._ring = None
        self._bss = None
        self.propagation = None
        self._links = []
        self._uprobes = []
        self._close_pending = False


__all__ = ["AUTO", "COUNTER_NAMES", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_REQ_CAPTURE", "DEFAULT_RESP_CAPTURE",
           "DEFAULT_RINGBUF_SIZE",
           "IdleScan", "KernelFeatures", "ProbeSetupError", "Probes", "RecordHandler", "UprobeSet",
           "pid_namespace_inode", "probe_features"]
