"""Trace context propagation in the kernel (BEYLA_BPF_CONTEXT_PROPAGATION): propagate.bpf.o
next to the exchange probes, attached to the pod's cgroup.

Modes: `headers` inserts `traceparent` into the pod's plaintext HTTP/1.x client requests that
carry none; `tcp` puts the context in a TCP header option (OBI's layout: kind 25, length 26,
trace id, span id) on the pod's client packets and reads it on its server sockets; `all` does
both. The ids are chosen where they are written and reach user space in the client exchange's
record (FLAG_CONTEXT), so the exported CLIENT span has exactly the span id the callee sees.

Sharing with beyla.bpf.o: the maps `conns`, `serving`, `sock_ctxs` and `sock_ids_map` are created with it and
handed to this object before its load (bpf_map__reuse_fd): nothing is pinned.

The pod's cgroup: sockops and sk_msg programs act on the sockets of a cgroup v2 and its
descendants. In Kubernetes each container has its own cgroup under the pod's, so the pod's is
the parent of the sidecar's own one: the `0::<path>` line of /proc/self/cgroup, looked up under
the cgroup2 mount (BEYLA_CGROUP2_MOUNT, e.g. the node's /sys/fs/cgroup mounted read-only).
When a cgroup namespace hides that path (/proc/self/cgroup says `0::/`), the sidecar's cgroup
is found in the mount by identity: the inode of the container's own /sys/fs/cgroup.

Not supported: cgroup v1 only nodes (no cgroup2 mount), TLS and HTTP/2 in `headers` mode
(left alone), the sidecar's own requests (its cgroup is skipped). Needs CAP_NET_ADMIN (the
kernel requires it to load sockops and sk_msg programs).
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from . import libbpf
from .libbpf import BpfError

OBJECT_NAME = "propagate.bpf.o"
MODES = {"disabled": 0, "headers": 1, "tcp": 2, "all": 3}  # enum propagation_mode bits
# enum ctx_counter in probes/propagate.bpf.c
COUNTER_NAMES = ("injected", "not_http", "has_traceparent", "doubt", "failed", "socks_full",
                 "option_written", "option_read")
SHARED_MAPS = ("conns", "serving", "pending", "connect_parents", "sock_ctxs", "sock_ids_map")
NAMESPACED_ROOT = "/sys/fs/cgroup"  # where a runtime mounts a container's own cgroup
MAX_SEARCH_DEPTH = 8
FIX_CAPABILITY = ("context propagation needs CAP_NET_ADMIN (the kernel requires it for sockops and sk_msg "
                  "programs): add NET_ADMIN to the sidecar's capabilities (the webhook and chart do when "
                  "BEYLA_BPF_CONTEXT_PROPAGATION is not `disabled`), or set BEYLA_BPF_CONTEXT_PROPAGATION=disabled")
CAP_NET_ADMIN = 12
BPF_MAP_TYPE_SOCKHASH = 18
BPF_MAP_TYPE_SK_STORAGE = 24
_U8 = struct.Struct("<B")
_U64 = struct.Struct("<Q")


class PropagationError(BpfError):
    """Propagation cannot work here; the message names the fix."""

    def __init__(self, message: str, err: int) -> None:
        Exception.__init__(self, message)
        self.errno = err
        self.log = ""


def own_cgroup(proc_cgroup: str = "/proc/self/cgroup") -> str:
    """Path of this process's cgroup v2 (the `0::` line), as its cgroup namespace shows it."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError as exc:
        raise PropagationError(f"cannot read {proc_cgroup}: {exc}", exc.errno or errno.ENOENT) from exc
    for line in lines:
        if line.startswith("0::"):
            return line[3:] or "/"
    raise PropagationError("this process has no cgroup v2 (no `0::` line in /proc/self/cgroup): context "
                           "propagation needs cgroup v2 (unified or hybrid hierarchy)", errno.ENOENT)


def _is_cgroup2(path: Path) -> bool:
    return (path / "cgroup.procs").exists() and (path / "cgroup.controllers").exists()


def _search(mount: Path, dev: int, ino: int) -> Path | None:
    """The directory of the mount that is the cgroup with this identity (breadth first)."""
    level = [mount]
    for _ in range(MAX_SEARCH_DEPTH):
        nxt = []
        for d in level:
            try:
                with os.scandir(d) as it:
                    subdirs = [Path(e.path) for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            for sub in subdirs:
                st = sub.stat()
                if (st.st_dev, st.st_ino) == (dev, ino):
                    return sub
            nxt.extend(subdirs)
        level = nxt
    return None


def find_cgroups(mount: str, proc_cgroup: str = "/proc/self/cgroup",
                 namespaced_root: str = NAMESPACED_ROOT) -> tuple[Path, Path]:
    """(the pod's cgroup, the sidecar's own) under the cgroup2 mount; raises PropagationError."""
    root = Path(mount)
    if not _is_cgroup2(root):
        raise PropagationError(f"no cgroup2 filesystem at {mount}: mount the node's cgroup2 there (read-only "
                               "is enough) or set BEYLA_CGROUP2_MOUNT to where it is", errno.ENOENT)
    path = own_cgroup(proc_cgroup)
    own: Path | None = root / path.lstrip("/") if path != "/" else None
    if own is None or not _is_cgroup2(own):
        ref = Path(namespaced_root)
        try:
            st = ref.stat()
        except OSError as exc:
            raise PropagationError(f"own cgroup {path} not under {mount}, and {namespaced_root} is not "
                                   "readable to find it there", errno.ENOENT) from exc
        at_root = (st.st_dev, st.st_ino) == (root.stat().st_dev, root.stat().st_ino)
        own = root if at_root else _search(root, st.st_dev, st.st_ino) if _is_cgroup2(ref) else None
        if own is None:
            raise PropagationError(f"the sidecar's cgroup ({path}) is not found under {mount}: mount the "
                                   "node's cgroup2 root there (BEYLA_CGROUP2_MOUNT)", errno.ENOENT)
    if own == root:
        raise PropagationError(f"the sidecar runs in the root cgroup of {mount}: no pod cgroup above it "
                               "(run it in the pod's container cgroup)", errno.EINVAL)
    return own.parent, own


def has_net_admin(status: str = "/proc/self/status") -> bool:
    """Is CAP_NET_ADMIN in this process's effective set?"""
    for line in Path(status).read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def problem(cgroup2_mount: str) -> str | None:
    """Why propagation cannot work here (naming the fix), or None: `beyla-sidecar check`."""
    if not has_net_admin():  # first: without it even a sockhash cannot be made
        return FIX_CAPABILITY
    for map_type, what in ((BPF_MAP_TYPE_SOCKHASH, "sockhash"), (BPF_MAP_TYPE_SK_STORAGE, "sk_storage")):
        if not libbpf.map_type_supported(map_type):
            return f"the kernel has no {what} maps (Linux 5.10+ is needed): set BEYLA_BPF_CONTEXT_PROPAGATION=disabled"
    try:
        find_cgroups(cgroup2_mount)
    except PropagationError as exc:
        return str(exc)
    return None


@contextmanager
def _packaged_object() -> Iterator[Path]:
    ref = resources.files("beyla_sidecar.bpf").joinpath("objects", OBJECT_NAME)
    with resources.as_file(ref) as path:
        if not path.is_file():
            raise PropagationError(f"{OBJECT_NAME} not built: run make -C probes", errno.ENOENT)
        yield path


class Propagation:
    """propagate.bpf.o loaded, sharing `main`'s maps, attached to the pod's cgroup."""

    def __init__(self, main: libbpf.BpfObject, mode: str, cgroup2_mount: str) -> None:
        self.mode = mode
        self.pod_cgroup, own = find_cgroups(cgroup2_mount)
        with _packaged_object() as path:
            self._obj: libbpf.BpfObject | None = libbpf.BpfObject(path)
        self._links: list[libbpf.Link] = []
        try:
            self._setup(main, os.stat(own).st_ino)
        except BaseException:
            self.close()
            raise

    def _setup(self, main: libbpf.BpfObject, own_cgroup_id: int) -> None:
        obj = self._object()
        for name in SHARED_MAPS:
            obj.map(name).reuse_fd(main.map(name).fd)
        obj.set_rodata("propagation", _U8.pack(MODES[self.mode]))
        obj.set_rodata("self_cgroup", _U64.pack(own_cgroup_id))
        try:
            obj.load()
        except BpfError as exc:
            raise self._error(exc, "loading the propagation probes") from exc
        progs = {p.name: p for p in obj.programs()}
        fd = os.open(self.pod_cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._links.append(progs["beyla_ctx_sockops"].attach_cgroup(fd))
        except BpfError as exc:
            raise self._error(exc, f"attaching to cgroup {self.pod_cgroup}") from exc
        finally:
            os.close(fd)
        try:
            self._links.append(progs["beyla_ctx_msg"].attach_to_map(obj.map("client_socks").fd,
                                                                   libbpf.BPF_SK_MSG_VERDICT))
        except BpfError as exc:
            raise self._error(exc, "attaching the sk_msg program") from exc
        self._counters = obj.map("ctx_counters")

    @staticmethod
    def _error(exc: BpfError, step: str) -> BpfError:
        if exc.errno == errno.EPERM:
            return PropagationError(f"{step}: {FIX_CAPABILITY}", exc.errno)
        return PropagationError(f"{step}: {exc}\n{exc.log}".rstrip(), exc.errno)

    def _object(self) -> libbpf.BpfObject:
        if self._obj is None:
            raise BpfError("propagation probes are closed", errno.EBADF)
        return self._obj

    def counters(self) -> dict[str, int]:
        """What sk_msg and sockops did, summed over CPUs (names: COUNTER_NAMES)."""
        self._object()
        ncpu = libbpf.num_possible_cpus()
        out = {}
        for index, name in enumerate(COUNTER_NAMES):
            raw = self._counters.lookup(struct.pack("<I", index), _U64.size * ncpu) or b""
            out[name] = sum(v for (v,) in _U64.iter_unpack(raw))
        return out

    def close(self) -> None:
        """Detach, take the pod's sockets out of the sockhash, and unload; idempotent. The
        sockhash's own teardown, once its last fd is closed, runs later from a kernel work queue
        (under load, late enough for requests sent after the sidecar's exit to get a header), and
        until then the sockets' sends still go through sk_msg; a socket deleted from it sends as
        plain TCP at once."""
        attached = bool(self._links)  # else no socket ever joined (nor, unloaded, has a map fd)
        for link in reversed(self._links):
            link.destroy()
        self._links = []
        if self._obj is not None:
            try:
                if attached:
                    socks = self._obj.map("client_socks")
                    for key in list(socks.keys()):
                        socks.delete(key)
            finally:  # unloaded whatever a delete raised
                self._obj.close()
                self._obj = None
