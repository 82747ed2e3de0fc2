"""The pod's processes as they come and go: selection, TLS libraries, uprobe attachments.

Fed with the probes' lifecycle events (exec, fork, exit, listen) plus one /proc scan at start
(and a periodic sweep: newcomers missed, and new mappings of every process), it keeps, per process of the
pod: whether it is selected (BEYLA_EXECUTABLE_NAME / BEYLA_OPEN_PORT) and which OpenSSL and
CPython _asyncio files it maps. Each such file (device + inode) gets its uprobes once, for all processes
(pid -1: a process forked or started later that maps the file is covered by the kernel
from its first instruction, with no race against us); the programs check the namespace
and the selection. The first time a container root (image) of the pod is seen, its
standard libssl and _asyncio files are attached before any process maps them, so that even
the first process using them is traced from its first call. Attachments belong to files, never to
processes: a file no process of the pod maps any more stays attached (a short-lived
process running it again is then covered at once) until more than MAX_IDLE_FILES such
files exist, the least recently used going first. Selection reaches the kernel through
allowed_pids, when some selector is set.

With BEYLA_EXECUTABLE_NAME alone (`Selector.at_exec`) the probes decide at exec, from this
module's verdict on each executable (exe_verdicts): a process is then selected from its first
instruction, however short-lived. An executable without a verdict yet makes its process
PENDING: it reports traffic, its exec event brings the executable's path, the verdict is made
and given to the kernel here, and the connections a PENDING process opened are dropped by the
pipeline when the verdict is no (`pending_selected`). A pid written into allowed_pids is
checked against /proc afterwards: a process that exited meanwhile (the kernel dropped its
entry at exit) must not leave it behind.

Exec and fork events are looked at in the poll cycle they arrive in and once more a cycle
later, when the dynamic loader has mapped the libraries. There is no event for a later
mapping (dlopen): the only hook for it would be a syscall tracepoint, which puts every
syscall of the node on the tracing slow path. The sweep (every few seconds) reads the maps
of every process again; the standard libssl of each container is attached ahead anyway.
"""

from __future__ import annotations

import glob
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ..bpf.events import Event, EventType, ExeId
from ..bpf.libbpf import BpfError
from ..bpf.loader import UprobeSet
from .asyncio_hooks import classify_asyncio
from .maps import FileCache, FileId, MappedFile, executable_files, listening_ports, mapped_file_id, own_namespace_tgid
from .selection import Selector
from .tls import TlsFile, classify

log = structlog.get_logger()

MAX_IDLE_FILES = 16
# Where a container image keeps its libssl (Debian/Ubuntu multiarch, RHEL, Alpine, /usr/local).
LIBSSL_PATTERNS = tuple(f"{d}/{sub}libssl.so*" for d in ("lib", "lib64", "usr/lib", "usr/lib64",
                                                             "usr/local/lib", "usr/local/lib64")
                        for sub in ("", "*-linux-gnu/"))
# Where a container image keeps CPython's _asyncio module (Debian's python3, the python images').
ASYNCIO_PATTERNS = tuple(f"{d}/lib/python3*/lib-dynload/_asyncio*.so" for d in ("usr", "usr/local"))


class ProbeControl(Protocol):
    """What discovery asks of the loaded probes (bpf.loader.Probes)."""

    def allow_process(self, ns_tgid: int) -> None: ...
    def disallow_process(self, ns_tgid: int) -> None: ...
    def set_exe_verdict(self, exe: ExeId, selected: bool) -> None: ...
    def attach_openssl(self, path: str, offsets: dict[str, int]) -> UprobeSet: ...
    def attach_asyncio(self, path: str, offsets: dict[str, int]) -> UprobeSet: ...
    def detach(self, uprobes: UprobeSet) -> None: ...


@dataclass(slots=True)
class DiscoveryStats:
    attach_failures: int = 0  # OpenSSL (or _asyncio) files whose uprobes could not be attached
    # TLS stack -> executables using it that we cannot see into (each reported once in the log)
    unsupported_tls: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Process:
    selected: bool
    ns_tgid: int  # allowed_pids key
    files: set[FileId]  # OpenSSL and _asyncio files it maps and holds a reference on (if selected)


@dataclass(slots=True)
class _Attached:
    uprobes: UprobeSet
    users: set[int]  # selected pids mapping the file


def _pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def _running(pid: int) -> bool:
    """Has the process not begun to exit? Its executable goes (exit_mm) before the kernel's exit
    hook drops it from allowed_pids: an entry written while this holds is dropped at its exit."""
    try:
        os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return True


class Discovery:
    """Not thread-safe: driven by the pipeline's thread."""

    def __init__(self, selector: Selector, target_ns: int, own_pid: int, asyncio_tasks: bool = True) -> None:
        self.selector = selector
        self._asyncio_tasks = asyncio_tasks  # attach the _asyncio files
        self.stats = DiscoveryStats()
        self._target_ns = target_ns
        self._own_pid = own_pid
        self._tls_files: FileCache[TlsFile] = FileCache(classify)
        self._asyncio_files: FileCache[dict[str, int]] = FileCache(classify_asyncio)
        self._probes: ProbeControl | None = None
        self._procs: dict[int, _Process] = {}
        self._foreign: set[int] = set()  # pids seen outside the target namespace
        self._attached: dict[FileId, _Attached] = {}
        self._idle: OrderedDict[FileId, None] = OrderedDict()  # attached, mapped by none, oldest first
        self._roots: set[FileId] = set()  # container roots whose libssl and _asyncio files were attached ahead
        self._reported: set[FileId] = set()  # executables whose unsupported TLS was logged
        self._due: set[int] = set()  # to inspect at the next flush
        self._dirty: set[int] = set()  # to inspect at the flush after (exec/fork, once more)
        # Selector.at_exec: verdicts on processes that ran while PENDING (exec without a kernel
        # verdict, and their forks), from their exec event until their exit event
        self._verdicts: dict[int, bool] = {}
        # Selector.at_exec: processes whose selection the probes made at their exec or fork (the
        # verdict on their executable, or their parent's): not written again from here, where a
        # second exec could come between our look at /proc and the write
        self._by_kernel: set[int] = set()
        self._gone: set[int] = set()  # pids with a verdict, not in /proc at the last sweep

    @property
    def instrumented_processes(self) -> int:
        """Live processes of the pod that are selected (the sidecar itself never is)."""
        # list(): a C-level copy, safe against the main thread while the scrape thread reads
        return sum(1 for p in list(self._procs.values()) if p.selected)

    @property
    def tls_files(self) -> int:
        """OpenSSL files with uprobes attached now (mapped by some process, or idle)."""
        return sum(1 for a in self._attached.values() if a.uprobes.tls)

    @property
    def asyncio_files(self) -> int:
        """CPython _asyncio files with uprobes attached now (mapped by some process, or idle)."""
        return sum(1 for a in self._attached.values() if not a.uprobes.tls)

    def __len__(self) -> int:
        return len(self._procs)

    def start(self, probes: ProbeControl) -> None:
        """Take the loaded probes and look at every process already running."""
        self._probes = probes
        for pid in sorted(_pids()):
            self._inspect(pid)

    def handle(self, ev: Event, pid: int, parent: int = 0) -> None:
        """A lifecycle event of process `pid` (as our /proc names it; `parent`: a fork's parent)."""
        if ev.type is EventType.PROCESS_EXIT:
            self.forget(pid)
            return
        if self.selector.at_exec and ev.type in (EventType.PROCESS_EXEC, EventType.PROCESS_FORK):
            self._by_kernel.add(pid)
        if ev.type is EventType.PROCESS_EXEC and ev.exe is not None:
            self._judge(ev, pid)
        elif ev.type is EventType.PROCESS_FORK and ev.pending and parent in self._verdicts:
            self._verdicts[pid] = self._verdicts[parent]
        if ev.type is EventType.PROCESS_LISTEN and not self.selector.ports:
            return
        if ev.type is EventType.PROCESS_EXEC and pid in self._procs:
            self._procs[pid].selected = False  # the probes dropped it from allowed_pids
        if ev.type is not EventType.PROCESS_LISTEN:
            self._dirty.add(pid)  # again next cycle: the loader maps the libraries after exec
        self._due.add(pid)

    def flush(self) -> None:
        """Once per poll cycle: inspect the processes of this cycle's events (and those of
        the previous cycle's exec and fork, once more)."""
        due, self._due, self._dirty = self._due, self._dirty, set()
        for pid in due:
            self._inspect(pid)

    def sweep(self) -> None:
        """Periodic: processes we missed (events lost) or that vanished, and libraries
        mapped since a process was last looked at (dlopen)."""
        present = _pids()
        for pid in self._procs.keys() - present:
            self._drop(pid)
        # the verdicts of processes whose exit event was lost: a sweep after they left /proc,
        # no record of theirs can be on its way any more
        gone = self._verdicts.keys() - present
        for pid in gone & self._gone:
            del self._verdicts[pid]
        self._gone = gone - self._gone
        self._foreign &= present
        for pid in present - self._foreign:
            self._inspect(pid)

    def pending_selected(self, pid: int) -> bool:
        """Is process `pid`, which opened a connection while PENDING, selected? Its exec (or fork)
        event came first and brought the verdict; if that event was lost (counted), judged now."""
        verdict = self._verdicts.get(pid)
        if verdict is None:
            try:
                verdict = self.selector.executable_matches(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                verdict = False  # gone, and nothing says what it ran: not traced
        return verdict

    def _judge(self, ev: Event, pid: int) -> None:
        """An exec whose selection the probes made (Selector.at_exec). PENDING: no verdict was
        known for its executable; make it from the path the event brings, for the kernel (it
        applies it to this and later processes) and for the connections the process reports
        meanwhile."""
        self._verdicts.pop(pid, None)
        if not ev.pending:
            return
        if ev.path:
            verdict = self.selector.executable_matches(ev.path)
        else:  # the path was not found (deeper than the probes walk): /proc, while it runs
            try:
                verdict = self.selector.executable_matches(os.readlink(f"/proc/{pid}/exe"))
            except OSError:
                verdict = False
        assert self._probes is not None and ev.exe is not None
        if ev.path:
            self._probes.set_exe_verdict(ev.exe, verdict)
        elif verdict:  # a verdict from /proc is this process's, not necessarily its file's
            self._probes.allow_process(ev.ns_pid)
            if not _running(pid):
                self._probes.disallow_process(ev.ns_pid)
        else:
            self._probes.disallow_process(ev.ns_pid)
        self._verdicts[pid] = verdict

    def forget(self, pid: int) -> None:
        """The process exited (its exit event): its connections' CONN_OPEN came before."""
        self._verdicts.pop(pid, None)
        self._drop(pid)

    def _drop(self, pid: int) -> None:
        """The process is gone from /proc; its records may still be in the ring (its verdict stays)."""
        self._by_kernel.discard(pid)
        self._dirty.discard(pid)
        self._due.discard(pid)
        self._foreign.discard(pid)
        proc = self._procs.pop(pid, None)
        if proc is not None:
            self._release(pid, proc.files)

    # -- internals -------------------------------------------------------------------

    def _inspect(self, pid: int) -> None:
        if pid == self._own_pid or self._probes is None:
            return
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != self._target_ns:
                self._foreign.add(pid)
                return
            exe = os.readlink(f"/proc/{pid}/exe")
            files = executable_files(pid)
            selected = self.selector.matches(exe, lambda: listening_ports(pid))
            proc = self._procs.get(pid)
            new = proc is None
            if proc is None:
                tgid = own_namespace_tgid(pid) if self.selector.filters else pid
                proc = self._procs[pid] = _Process(False, tgid, set())
        except OSError:  # gone, or a kernel thread (no exe): nothing to instrument
            self._drop(pid)
            self._foreign.add(pid)  # until it leaves /proc (sweep)
            return
        if new:
            self._attach_ahead(pid)
        # A new process may have inherited its parent's place in allowed_pids: set it either way
        # (unless the probes made its selection).
        self._select(pid, proc, selected, sync=new, write=pid not in self._by_kernel)
        exe_file = next((f for f in files if f.path == exe), None)
        wanted = set()
        if selected:
            wanted = self._tls(pid, files, exe_file)
            if self._asyncio_tasks:
                wanted |= self._asyncio(pid, files)
        self._release(pid, proc.files - wanted)
        for fid in wanted - proc.files:
            self._attached[fid].users.add(pid)
            self._idle.pop(fid, None)
        proc.files = wanted

    def _attach_ahead(self, pid: int) -> None:
        """First process seen with its root: attach that root's libssl and _asyncio files now."""
        root = f"/proc/{pid}/root"
        try:
            st = os.stat(root)
        except OSError:
            return
        if (st.st_dev, st.st_ino) in self._roots:
            return
        self._roots.add((st.st_dev, st.st_ino))
        for path in sorted({p for pattern in LIBSSL_PATTERNS + ASYNCIO_PATTERNS
                            for p in glob.glob(f"{root}/{pattern}")}):
            try:
                f = MappedFile(mapped_file_id(path), path[len(root):], "")
            except (OSError, ValueError):
                continue
            if f.id in self._attached:
                continue
            found = self._tls_files.get(f.id, path, f.path, False)
            hooks = self._asyncio_files.get(f.id, path, f.path) if self._asyncio_tasks else {}
            attached = found.openssl and self._attach_openssl(f, pid, found)
            if attached or (hooks and self._attach_asyncio(f, pid, hooks)):
                self._make_idle(f.id)

    def _select(self, pid: int, proc: _Process, selected: bool, sync: bool = False, write: bool = True) -> None:
        if selected == proc.selected and not sync:
            return
        proc.selected = selected
        if not self.selector.filters or not write:
            return
        assert self._probes is not None
        if not selected:
            self._probes.disallow_process(proc.ns_tgid)
            return
        self._probes.allow_process(proc.ns_tgid)
        if not _running(pid):  # it exited meanwhile: the kernel's exit hook may have run already
            self._probes.disallow_process(proc.ns_tgid)

    def _tls(self, pid: int, files: list[MappedFile], exe_file: MappedFile | None) -> set[FileId]:
        """The OpenSSL files among `files`, attached; unsupported stacks reported."""
        out: set[FileId] = set()
        openssl = False
        unsupported: list[TlsFile] = []
        for f in files:
            found = self._tls_files.get(f.id, f.host_path(pid), f.path, f is exe_file)
            openssl = openssl or bool(found.openssl)
            if found.openssl and self._attach_openssl(f, pid, found):
                out.add(f.id)
            elif found.unsupported:
                unsupported.append(found)
        self._report(pid, exe_file, [t.unsupported for t in unsupported
                                     if t.unsupported and not (openssl and t.alternative)])
        return out

    def _report(self, pid: int, exe_file: MappedFile | None, unsupported: list[str]) -> None:
        """Log (once per executable file) and count TLS stacks we cannot see into."""
        if unsupported and exe_file is not None and exe_file.id not in self._reported:
            self._reported.add(exe_file.id)
            for stack in unsupported:
                self.stats.unsupported_tls[stack] = self.stats.unsupported_tls.get(stack, 0) + 1
            log.warning("TLS library not supported: this executable's HTTPS is not traced",
                        executable=exe_file.path, tls=unsupported, pid=pid)

    def _asyncio(self, pid: int, files: list[MappedFile]) -> set[FileId]:
        """The _asyncio files among `files`, attached."""
        out: set[FileId] = set()
        for f in files:
            hooks = self._asyncio_files.get(f.id, f.host_path(pid), f.path)
            if hooks and self._attach_asyncio(f, pid, hooks):
                out.add(f.id)
        return out

    def _attach_openssl(self, f: MappedFile, pid: int, found: TlsFile) -> bool:
        assert self._probes is not None
        return self._attach(f, pid, "OpenSSL", self._probes.attach_openssl, found.openssl)

    def _attach_asyncio(self, f: MappedFile, pid: int, hooks: dict[str, int]) -> bool:
        assert self._probes is not None
        return self._attach(f, pid, "asyncio", self._probes.attach_asyncio, hooks)

    def _attach(self, f: MappedFile, pid: int, what: str, attach: Callable[[str, dict[str, int]], UprobeSet],
                offsets: dict[str, int]) -> bool:
        if f.id in self._attached:
            return True
        try:
            uprobes = attach(f.host_path(pid), offsets)
        except BpfError as exc:
            self.stats.attach_failures += 1
            log.warning(f"cannot attach the {what} probes", file=f.path, pid=pid, error=str(exc))
            return False
        self._attached[f.id] = _Attached(uprobes, set())
        log.info(f"{what} probes attached", file=f.path, pid=pid, functions=sorted(offsets))
        return True

    def _release(self, pid: int, fids: set[FileId]) -> None:
        for fid in fids:
            attached = self._attached.get(fid)
            if attached is None:
                continue
            attached.users.discard(pid)
            if not attached.users:
                self._make_idle(fid)

    def _make_idle(self, fid: FileId) -> None:
        self._idle[fid] = None
        self._idle.move_to_end(fid)
        while len(self._idle) > MAX_IDLE_FILES:
            oldest, _ = self._idle.popitem(last=False)
            attached = self._attached.pop(oldest)
            assert self._probes is not None
            self._probes.detach(attached.uprobes)
            log.debug("uprobes detached", file=attached.uprobes.path)

