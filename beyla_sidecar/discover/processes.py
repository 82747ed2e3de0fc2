"""What the sidecar knows about one process of the pod: executable, command line, the app it runs,
own OTEL env."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

from . import naming

COMMAND_LINE_MAX = 256
# Workers started with `-c` code (multiprocessing spawn: `uvicorn --workers`; forkserver: worker,
# forkserver, main) are named after the closest of this many ancestors that runs an app.
NAMED_ANCESTORS = 3


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    executable_name: str
    command_line: str
    app_name: str  # what an interpreter runs, from its whole command line (naming.py), or ''
    service_name: str  # OTEL_SERVICE_NAME from the process's own environment, or ''
    create_time: float


def _own_service_name(proc: psutil.Process) -> str:
    try:
        return proc.environ().get("OTEL_SERVICE_NAME", "")
    except (psutil.Error, OSError):
        return ""


def _executable(proc: psutil.Process) -> str:
    try:
        return os.path.basename(proc.exe()) or proc.name()
    except (psutil.AccessDenied, OSError):
        return proc.name()


def _app_name(proc: psutil.Process, executable: str, cmdline: list[str]) -> str:
    """naming.app_name of the process, else of its closest ancestors running the same interpreter."""
    name = naming.app_name(executable, cmdline)
    if name or naming.interpreter(executable) is None:
        return name
    try:
        ancestor = proc.parent()
        for _ in range(NAMED_ANCESTORS):
            if ancestor is None or _executable(ancestor) != executable:
                break
            name = naming.app_name(executable, ancestor.cmdline())
            if name:
                return name
            ancestor = ancestor.parent()
    except (psutil.Error, OSError):
        pass
    return ""


def inspect(pid: int) -> ProcessInfo | None:
    """Read /proc/<pid> once; None when the process is gone or cannot be read."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cmdline = proc.cmdline()
            name = _executable(proc)
            return ProcessInfo(
                pid=pid,
                executable_name=name,
                command_line=" ".join(cmdline)[:COMMAND_LINE_MAX],
                app_name=_app_name(proc, name, cmdline),
                service_name=_own_service_name(proc),
                create_time=proc.create_time(),
            )
    except (psutil.Error, OSError):
        return None


class ProcessTable:
    """Cache of ProcessInfo by host pid, so /proc is read once per process, not per request."""

    def __init__(self) -> None:
        self._by_pid: dict[int, ProcessInfo | None] = {}
        self._dead: set[int] = set()  # found exited at the last prune

    def get(self, pid: int, comm: str = "") -> ProcessInfo | None:
        """Cached info; a process already gone is remembered by its kernel task name `comm`."""
        try:
            return self._by_pid[pid]
        except KeyError:
            info = inspect(pid)
            if info is None and comm:
                info = ProcessInfo(pid, comm, command_line="", app_name="", service_name="",
                                   create_time=0.0)  # pruned two sweeps later
            self._by_pid[pid] = info
            return info

    def forget(self, pid: int) -> None:
        """The process exited (its exit event)."""
        self._by_pid.pop(pid, None)

    def prune(self) -> list[int]:
        """Drop processes found exited (or their pid reused) at this sweep and at the one before;
        returns their pids. The sweep of grace is for records of a process that just exited, still
        queued behind its exit: they must find its name, not the bare task name of a gone process."""
        dead = {pid for pid, info in self._by_pid.items() if info is None or not _alive(pid, info.create_time)}
        stale = [pid for pid in self._dead if pid in dead]
        self._dead = dead.difference(stale)
        for pid in stale:
            del self._by_pid[pid]
        return stale

    def __len__(self) -> int:
        return len(self._by_pid)


def _alive(pid: int, create_time: float) -> bool:
    try:
        return psutil.Process(pid).create_time() == create_time
    except (psutil.Error, OSError):
        return False
