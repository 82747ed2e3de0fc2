"""What a process has mapped and listens on, read from /proc/<pid>/ (maps, net, fd)."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

FileId = tuple[int, int]  # (device, inode): one library file, however many paths lead to it
DELETED = " (deleted)"
TCP_LISTEN = "0A"
CACHE_FILES = 4096

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MappedFile:
    id: FileId
    path: str  # as the process sees it (its own mount namespace)
    range: str  # "start-end" of one of its mappings, for /proc/<pid>/map_files/

    def host_path(self, pid: int) -> str:
        """A path to the very file from here: through the process's root, or, for a file
        replaced or deleted since it was mapped, through map_files (needs CAP_SYS_ADMIN
        or CAP_CHECKPOINT_RESTORE)."""
        if self.path.endswith(DELETED):
            return f"/proc/{pid}/map_files/{self.range}"
        return f"/proc/{pid}/root{self.path}"


def _device(text: str) -> int:
    major, _, minor = text.partition(":")
    return os.makedev(int(major, 16), int(minor, 16))


def executable_files(pid: int) -> list[MappedFile]:
    """Files mapped executable by `pid` (its executable and libraries), one per file.
    Raises OSError when the process is gone or unreadable."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
        lines = maps.readlines()
    seen: dict[FileId, MappedFile] = {}
    for line in lines:
        parts = line.rstrip("\n").split(maxsplit=5)
        if len(parts) < 6 or "x" not in parts[1] or parts[4] == "0" or not parts[5].startswith("/"):
            continue
        fid = (_device(parts[3]), int(parts[4]))
        if fid not in seen:
            seen[fid] = MappedFile(fid, parts[5], parts[0])
    return list(seen.values())


def mapped_file_id(path: str) -> FileId:
    """(device, inode) of the file at `path` as /proc/<pid>/maps shows it once mapped. On
    overlayfs (containers) that is the underlying file's, which os.stat through the overlay
    does not give, and the one the kernel puts uprobes on: mapping a page of it ourselves
    and asking map_files is how both sides name the file the same."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), mmap.PAGESIZE, access=mmap.ACCESS_COPY) as m:
        view = ctypes.c_char.from_buffer(m)
        start = ctypes.addressof(view)
        del view  # an exported buffer would keep the mmap from closing
        st = os.stat(f"/proc/self/map_files/{start:x}-{start + mmap.PAGESIZE:x}")
    return st.st_dev, st.st_ino


def _listening_inodes(pid: int | str) -> dict[str, int]:
    """socket inode -> local port of the TCP sockets listening in pid's network namespace."""
    out: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}", encoding="ascii") as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == TCP_LISTEN:
                out[cols[9]] = int(cols[1].rpartition(":")[2], 16)
    return out


def namespace_listening_ports(pid: int | str = "self") -> set[int]:
    """TCP ports listening in pid's network namespace, whoever holds the sockets."""
    return set(_listening_inodes(pid).values())


def listening_ports(pid: int) -> set[int]:
    """TCP ports `pid` listens on (through the sockets among its open files)."""
    listening = _listening_inodes(pid)
    ports: set[int] = set()
    if not listening:
        return ports
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return ports
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            port = listening.get(target[8:-1])
            if port is not None:
                ports.add(port)
    return ports


def own_namespace_tgid(pid: int) -> int:
    """The process's pid in its own (innermost) PID namespace: the key the probes use."""
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return pid  # kernels before 4.1 have no NSpid: no nesting visible either


class FileCache(Generic[T]):
    """What `classify(path, *args)` said of each file (by id), for the most recent CACHE_FILES
    files: a file is looked into once, whatever the number of processes mapping it."""

    def __init__(self, classify: Callable[..., T]) -> None:
        self._classify = classify
        self._by_id: OrderedDict[FileId, T] = OrderedDict()

    def get(self, fid: FileId, path: str, *args: object) -> T:
        found = self._by_id.get(fid)
        if found is None:
            found = self._by_id[fid] = self._classify(path, *args)
            if len(self._by_id) > CACHE_FILES:
                self._by_id.popitem(last=False)
        return found

    def __len__(self) -> int:
        return len(self._by_id)
