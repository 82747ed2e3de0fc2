"""What the sidecar knows about one process of the pod: executable, command line, own OTEL env."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil

COMMAND_LINE_MAX = 256


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    executable_name: str
    command_line: str
    service_name: str  # OTEL_SERVICE_NAME from the process's own environment, or ''
    create_time: float


def _own_service_name(proc: psutil.Process) -> str:
    try:
        return proc.environ().get("OTEL_SERVICE_NAME", "")
    except (psutil.Error, OSError):
        return ""


def inspect(pid: int) -> ProcessInfo | None:
    """Read /proc/<pid> once; None when the process is gone or cannot be read."""
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cmdline = proc.cmdline()
            try:
                exe = os.path.basename(proc.exe())
            except (psutil.AccessDenied, OSError):
                exe = ""
            name = exe or proc.name()
            return ProcessInfo(
                pid=pid,
                executable_name=name,
                command_line=" ".join(cmdline)[:COMMAND_LINE_MAX],
                service_name=_own_service_name(proc),
                create_time=proc.create_time(),
            )
    except (psutil.Error, OSError):
        return None


class ProcessTable:
    """Cache of ProcessInfo by host pid, so /proc is read once per process, not per request."""

    def __init__(self) -> None:
        self._by_pid: dict[int, ProcessInfo | None] = {}

    def get(self, pid: int, comm: str = "") -> ProcessInfo | None:
        """Cached info; a process already gone is remembered by its kernel task name `comm`."""
        try:
            return self._by_pid[pid]
        except KeyError:
            info = inspect(pid)
            if info is None and comm:
                info = ProcessInfo(pid, comm, "", "", create_time=0.0)  # pruned at the next sweep
            self._by_pid[pid] = info
            return info

    def forget(self, pid: int) -> None:
        """The process exited (its exit event)."""
        self._by_pid.pop(pid, None)

    def prune(self) -> list[int]:
        """Drop processes that exited (or whose pid was reused); returns their pids."""
        stale = [pid for pid, info in self._by_pid.items()
                 if info is None or not _alive(pid, info.create_time)]
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
