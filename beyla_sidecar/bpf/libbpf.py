"""Thin ctypes binding over libbpf.so.1 (stable C API, libbpf >= 1.0 error conventions).

Only what the sidecar needs: open an object, size maps and set `.rodata` before load,
choose programs, load (the verifier log is kept for the error), attach, maps. The ring buffer
is read by bpf/ring.py, straight from its shared memory.
libbpf 1.x reports errors as negative errno from int functions and NULL + errno from
pointer functions; both become `BpfError` here.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator, Sequence
from ctypes import (CFUNCTYPE, POINTER, Structure, c_bool, c_char_p, c_int, c_size_t, c_uint,
                    c_uint32, c_uint64, c_void_p)
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
BTF_KIND_FUNC = 12
BTF_KIND_TYPEDEF = 8
BTF_KIND_DATASEC = 15
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACING = 26
BPF_TRACE_FENTRY = 24
BPF_LINK_CREATE = 28
BPF_TRACE_UPROBE_MULTI = 48  # Linux 6.6
BPF_SK_MSG_VERDICT = 7
BPF_F_UPROBE_MULTI_RETURN = 1
PERF_FLAG_FD_CLOEXEC = 8
UPROBE_PMU_TYPE = "/sys/bus/event_source/devices/uprobe/type"
# Numbers of the syscalls glibc does not wrap: (bpf, perf_event_open).
_SYSCALL_NUMBERS = {"x86_64": (321, 298), "aarch64": (280, 241)}
# An empty program: r0 = 0; exit
_EMPTY_PROG = bytes((0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0))
_LIBBPF_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)


class BpfError(Exception):
    """A libbpf call failed. `errno` is the error number; `log` the libbpf/verifier output."""

    def __init__(self, what: str, err: int, log_text: str = "") -> None:
        self.errno = err
        self.log = log_text
        text = f"{what}: {os.strerror(err)} ({errno_mod.errorcode.get(err, err)})"
        super().__init__(f"{text}\n{log_text}" if log_text else text)


_PrintFn = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)


class _UprobeOpts(Structure):
    _fields_ = [("sz", c_size_t), ("ref_ctr_offset", c_size_t), ("bpf_cookie", c_uint64),
                ("retprobe", c_bool), ("func_name", c_char_p)]


class _ProgLoadOpts(Structure):
    """Leading fields of struct bpf_prog_load_opts; `sz` tells libbpf where we stop."""

    _fields_ = [("sz", c_size_t), ("attempts", c_int), ("expected_attach_type", c_uint),
                ("prog_btf_fd", c_uint32), ("prog_flags", c_uint32), ("prog_ifindex", c_uint32),
                ("kern_version", c_uint32), ("attach_btf_id", c_uint32),
                ("attach_prog_fd", c_uint32), ("attach_btf_obj_fd", c_uint32)]


class _UprobeMultiAttr(Structure):
    """union bpf_attr for BPF_LINK_CREATE of a uprobe_multi link (libbpf 1.1 cannot build it)."""

    _fields_ = [("prog_fd", c_uint32), ("target_fd", c_uint32), ("attach_type", c_uint32),
                ("flags", c_uint32), ("path", c_uint64), ("offsets", c_uint64),
                ("ref_ctr_offsets", c_uint64), ("cookies", c_uint64), ("cnt", c_uint32),
                ("multi_flags", c_uint32), ("pid", c_uint32), ("pad", c_uint32)]


class _PerfEventAttr(Structure):
    """struct perf_event_attr up to config2 (PERF_ATTR_SIZE_VER1); `bits` holds the flag bits."""

    _fields_ = [("type", c_uint32), ("size", c_uint32), ("config", c_uint64),
                ("sample_period", c_uint64), ("sample_type", c_uint64), ("read_format", c_uint64),
                ("bits", c_uint64), ("wakeup_events", c_uint32), ("bp_type", c_uint32),
                ("config1", c_uint64), ("config2", c_uint64)]


class _BtfType(Structure):
    _fields_ = [("name_off", c_uint32), ("info", c_uint32), ("size_or_type", c_uint32)]


class _BtfVarSecinfo(Structure):
    _fields_ = [("type", c_uint32), ("offset", c_uint32), ("size", c_uint32)]


_P = c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (_P, [_PrintFn]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_probe_bpf_map_type": (c_int, [c_uint, _P]),
    "bpf_map_create": (c_int, [c_uint, c_char_p, c_uint32, c_uint32, c_uint32, _P]),
    "bpf_object__open_file": (_P, [c_char_p, _P]),
    "bpf_object__load": (c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__btf": (_P, [_P]),
    "bpf_object__next_program": (_P, [_P, _P]),
    "bpf_object__next_map": (_P, [_P, _P]),
    "bpf_object__find_map_by_name": (_P, [_P, c_char_p]),
    "bpf_program__name": (c_char_p, [_P]),
    "bpf_program__section_name": (c_char_p, [_P]),
    "bpf_program__set_autoload": (c_int, [_P, c_bool]),
    "bpf_program__autoload": (c_bool, [_P]),
    "bpf_program__fd": (c_int, [_P]),
    "bpf_program__set_expected_attach_type": (c_int, [_P, c_uint]),
    "bpf_program__attach": (_P, [_P]),
    "bpf_program__attach_uprobe_opts": (_P, [_P, c_int, c_char_p, c_size_t, POINTER(_UprobeOpts)]),
    "bpf_program__attach_cgroup": (_P, [_P, c_int]),
    "bpf_prog_attach": (c_int, [c_int, c_int, c_uint, c_uint]),
    "bpf_prog_detach2": (c_int, [c_int, c_int, c_uint]),
    "bpf_link__destroy": (c_int, [_P]),
    "bpf_map__name": (c_char_p, [_P]),
    "bpf_map__fd": (c_int, [_P]),
    "bpf_map__key_size": (c_uint32, [_P]),
    "bpf_map__value_size": (c_uint32, [_P]),
    "bpf_map__max_entries": (c_uint32, [_P]),
    "bpf_map__set_max_entries": (c_int, [_P, c_uint32]),
    "bpf_map__reuse_fd": (c_int, [_P, c_int]),
    "bpf_map__initial_value": (_P, [_P, POINTER(c_size_t)]),
    "bpf_map__set_initial_value": (c_int, [_P, c_char_p, c_size_t]),
    "bpf_map_update_elem": (c_int, [c_int, c_char_p, c_char_p, c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_char_p, c_char_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_char_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p, POINTER(c_uint32), c_void_p]),
    "bpf_map_update_batch": (c_int, [c_int, c_char_p, c_char_p, POINTER(c_uint32), c_void_p]),
    "bpf_map_lookup_and_delete_batch": (c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                                POINTER(c_uint32), c_void_p]),
    "bpf_prog_load": (c_int, [c_uint, c_char_p, c_char_p, c_char_p, c_size_t, POINTER(_ProgLoadOpts)]),
    "bpf_link_create": (c_int, [c_int, c_int, c_uint, _P]),
    "btf__load_vmlinux_btf": (_P, []),
    "btf__free": (None, [_P]),
    "btf__find_by_name_kind": (c_int, [_P, c_char_p, c_uint32]),
    "btf__type_by_id": (POINTER(_BtfType), [_P, c_uint32]),
    "btf__name_by_offset": (c_char_p, [_P, c_uint32]),
    "libbpf_major_version": (c_uint32, []),
}


class _Log(threading.local):
    """libbpf messages of the current thread's ongoing operation (libbpf prints from the caller)."""

    lines: list[str] | None = None


_log = _Log()


@cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)
    libc.vasprintf.argtypes = [POINTER(c_void_p), c_char_p, c_void_p]
    libc.vasprintf.restype = c_int
    libc.free.argtypes = [c_void_p]
    libc.free.restype = None
    return libc


@cache
def _syscall_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _syscall(which: int, *args: Any) -> int:
    """syscall(2) for bpf (which=0) or perf_event_open (1): the result, or -errno."""
    numbers = _SYSCALL_NUMBERS.get(platform.machine())
    if numbers is None:
        return -errno_mod.ENOSYS
    ret = int(_syscall_libc().syscall(ctypes.c_long(numbers[which]), *args))
    return -ctypes.get_errno() if ret < 0 else ret


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf print callback. va_list arrives as a pointer (x86-64 and arm64 ABIs) and is
    formatted by the C library so every printf conversion works. Messages of a captured
    operation go into its error, so they are only logged at DEBUG."""
    py_level = _LIBBPF_LEVELS[level] if 0 <= level < len(_LIBBPF_LEVELS) else logging.DEBUG
    capturing = _log.lines is not None and py_level >= logging.INFO
    if capturing:
        py_level = logging.DEBUG
    if fmt is None or not (capturing or log.isEnabledFor(py_level)):
        return 0
    out = c_void_p()
    if _libc().vasprintf(ctypes.byref(out), fmt, args) < 0:
        return 0
    text = ctypes.string_at(out.value).decode(errors="replace").rstrip("\n")
    _libc().free(out)
    if capturing and _log.lines is not None:
        _log.lines.extend(text.splitlines())
    log.log(py_level, "%s", text)
    return 0


# Module-level so the C callback object is never garbage collected.
_PRINT_CALLBACK = _PrintFn(_on_print)


@cache
def lib() -> ctypes.CDLL:
    """libbpf.so.1 with typed prototypes and our print callback installed."""
    try:
        handle = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as exc:
        raise BpfError("libbpf.so.1 not found: apt-get install libbpf1", errno_mod.ENOENT) from exc
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(handle, name)
        fn.restype = restype
        fn.argtypes = argtypes
    handle.libbpf_set_print(_PRINT_CALLBACK)
    return handle


class _Capture:
    """Collect libbpf messages of one operation for the error it may raise."""

    def __enter__(self) -> _Capture:
        _log.lines = []
        return self

    def __exit__(self, *exc: object) -> None:
        _log.lines = None

    def tail(self) -> str:
        return "\n".join((_log.lines or [])[-LOG_TAIL_LINES:])


def _check_int(ret: int, what: str, capture: _Capture | None = None) -> int:
    if ret < 0:
        raise BpfError(what, -ret, capture.tail() if capture else "")
    return ret


def _check_ptr(ptr: int | None, what: str, capture: _Capture | None = None) -> int:
    if not ptr:
        raise BpfError(what, ctypes.get_errno() or errno_mod.EINVAL, capture.tail() if capture else "")
    return ptr


class Link:
    """An attachment (a libbpf bpf_link, or a bare link fd); destroy() detaches (idempotent)."""

    def __init__(self, ptr: int, what: str) -> None:
        self._ptr: int | None = ptr
        self._fd: int | None = None
        self.what = what

    @classmethod
    def from_fd(cls, fd: int, what: str) -> Link:
        link = cls(0, what)
        link._fd = fd
        return link

    def destroy(self) -> None:
        if self._ptr:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MapLink(Link):
    """A program attached to a map with bpf_prog_attach (no link fd on older kernels)."""

    def __init__(self, prog_fd: int, map_fd: int, attach_type: int, what: str) -> None:
        super().__init__(0, what)
        self._attached: tuple[int, int, int] | None = (prog_fd, map_fd, attach_type)

    def destroy(self) -> None:
        if self._attached is not None:
            lib().bpf_prog_detach2(*self._attached)
            self._attached = None


class Program:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = lib().bpf_program__name(ptr).decode()
        self.section: str = lib().bpf_program__section_name(ptr).decode()

    @property
    def autoload(self) -> bool:
        return bool(lib().bpf_program__autoload(self._ptr))

    def set_autoload(self, enabled: bool) -> None:
        _check_int(lib().bpf_program__set_autoload(self._ptr, enabled), f"set_autoload {self.name}")

    @property
    def fd(self) -> int:
        """After load."""
        return _check_int(lib().bpf_program__fd(self._ptr), f"program {self.name} fd")

    def set_expected_attach_type(self, attach_type: int) -> None:
        """Before load, e.g. BPF_TRACE_UPROBE_MULTI for attach_uprobe_multi()."""
        _check_int(lib().bpf_program__set_expected_attach_type(self._ptr, attach_type),
                   f"set_expected_attach_type {self.name}")

    def attach(self) -> Link:
        """Attach by section name (tp/, tp_btf/, raw_tp/, ...)."""
        with _Capture() as cap:
            ptr = lib().bpf_program__attach(self._ptr)
            return Link(_check_ptr(ptr, f"attach {self.name} ({self.section})", cap), self.name)

    def attach_cgroup(self, cgroup_fd: int) -> Link:
        """A cgroup program (sockops, cgroup_skb, ...) on the cgroup open at cgroup_fd, as a link."""
        with _Capture() as cap:
            ptr = lib().bpf_program__attach_cgroup(self._ptr, cgroup_fd)
            return Link(_check_ptr(ptr, f"attach {self.name} to a cgroup", cap), self.name)

    def attach_to_map(self, map_fd: int, attach_type: int) -> Link:
        """A program run by a map (sk_msg on a sockhash: BPF_SK_MSG_VERDICT); destroy() detaches."""
        _check_int(lib().bpf_prog_attach(self.fd, map_fd, attach_type, 0), f"attach {self.name} to its map")
        return MapLink(self.fd, map_fd, attach_type, self.name)

    def attach_uprobe(self, pid: int, binary: str, func_name: str | None = None, offset: int = 0,
                      retprobe: bool = False) -> Link:
        """Uprobe on `binary` (a path, e.g. via /proc/<pid>/root/...) for one pid (-1: all)."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe,
                           func_name=func_name.encode() if func_name else None)
        what = f"attach uprobe {self.name} to {binary}:{func_name or hex(offset)} pid {pid}"
        with _Capture() as cap:
            ptr = lib().bpf_program__attach_uprobe_opts(self._ptr, pid, os.fsencode(binary), offset,
                                                        ctypes.byref(opts))
            return Link(_check_ptr(ptr, what, cap), self.name)

    def attach_uprobe_multi(self, binary: str, offsets: Sequence[int], retprobe: bool = False) -> Link:
        """Uprobes at the file `offsets` of `binary`, for every process, as one uprobe_multi
        link. Needs set_expected_attach_type(BPF_TRACE_UPROBE_MULTI) before load."""
        fd = uprobe_multi_link(self.fd, binary, offsets, retprobe)
        if fd < 0:
            where = ",".join(hex(o) for o in offsets)
            raise BpfError(f"attach uprobe_multi {self.name} to {binary}:{where}", -fd)
        return Link.from_fd(fd, self.name)


class Map:
    def __init__(self, ptr: int) -> None:
        self._ptr = ptr
        self.name: str = lib().bpf_map__name(ptr).decode()

    @property
    def fd(self) -> int:
        return _check_int(lib().bpf_map__fd(self._ptr), f"map {self.name} fd")

    @property
    def key_size(self) -> int:
        return int(lib().bpf_map__key_size(self._ptr))

    @property
    def value_size(self) -> int:
        return int(lib().bpf_map__value_size(self._ptr))

    @property
    def max_entries(self) -> int:
        return int(lib().bpf_map__max_entries(self._ptr))

    def set_max_entries(self, n: int) -> None:
        """Before load only."""
        _check_int(lib().bpf_map__set_max_entries(self._ptr, n), f"set_max_entries {self.name} {n}")

    def reuse_fd(self, fd: int) -> None:
        """Before load: use the existing map at fd (another object's) instead of creating one."""
        _check_int(lib().bpf_map__reuse_fd(self._ptr, fd), f"reuse_fd {self.name}")

    def initial_value(self) -> bytes:
        """Initial contents of a global-data map (.rodata/.data/.bss) before load."""
        size = c_size_t()
        ptr = _check_ptr(lib().bpf_map__initial_value(self._ptr, ctypes.byref(size)),
                         f"initial_value {self.name}")
        return ctypes.string_at(ptr, size.value)

    def set_initial_value(self, data: bytes) -> None:
        _check_int(lib().bpf_map__set_initial_value(self._ptr, data, len(data)),
                   f"set_initial_value {self.name}")

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self._check_size("key", key, self.key_size)
        self._check_size("value", value, self.value_size)
        ret = lib().bpf_map_update_elem(self.fd, key, value, flags)
        _check_int(ret, f"update {self.name}")

    def update_batch(self, keys: bytes, values: bytes) -> None:
        """Write many entries in one bpf() call (Linux 5.6+): `keys` and `values` are the entries'
        keys and values back to back, in the same order."""
        count = len(keys) // self.key_size
        if len(keys) != count * self.key_size or len(values) != count * self.value_size:
            raise BpfError(f"map {self.name}: {len(keys)} key bytes and {len(values)} value bytes are not "
                           f"whole entries of {self.key_size} and {self.value_size}", errno_mod.EINVAL)
        if not count:
            return
        done = c_uint32(count)
        _check_int(lib().bpf_map_update_batch(self.fd, keys, values, ctypes.byref(done), None),
                   f"update_batch {self.name} ({done.value} of {count} written)")

    def lookup(self, key: bytes, value_size: int | None = None) -> bytes | None:
        """Value bytes, or None when absent. Per-CPU maps need value_size for all CPUs."""
        self._check_size("key", key, self.key_size)
        buf = ctypes.create_string_buffer(value_size or self.value_size)
        ret = lib().bpf_map_lookup_elem(self.fd, key, buf)
        if ret == -errno_mod.ENOENT:
            return None
        _check_int(ret, f"lookup {self.name}")
        return buf.raw

    def keys(self) -> Iterator[bytes]:
        """Every key present now (a key deleted meanwhile just ends or skips the walk)."""
        key: bytes | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while lib().bpf_map_get_next_key(self.fd, key, nxt) == 0:
            key = nxt.raw
            yield key

    def delete(self, key: bytes) -> bool:
        """True when the key was present."""
        self._check_size("key", key, self.key_size)
        ret = lib().bpf_map_delete_elem(self.fd, key)
        if ret == -errno_mod.ENOENT:
            return False
        _check_int(ret, f"delete {self.name}")
        return True

    def lookup_batch(self, batch: int = 256) -> Iterator[tuple[memoryview, memoryview]]:
        """Every (key, value) of a hash map, `batch` entries per bpf() call (Linux 5.6+) instead of
        two calls per key. Views into buffers that the next batch overwrites: copy what must outlive
        the step. The probes write values in place: a value read while one changes may be torn."""
        return self._batches("bpf_map_lookup_batch", self.value_size, batch)

    def lookup_and_delete_batch(self, value_size: int, batch: int = 256) -> Iterator[tuple[bytes, bytes]]:
        """Take every entry out of a hash map, `batch` entries per bpf() call (Linux 5.6+):
        (key, value) pairs; `value_size` per entry (per-CPU maps: 8-byte aligned size x CPUs).
        An entry written meanwhile is in this walk or stays for the next one."""
        for key, value in self._batches("bpf_map_lookup_and_delete_batch", value_size, batch):
            yield bytes(key), bytes(value)

    def _batches(self, op: str, value_size: int, batch: int) -> Iterator[tuple[memoryview, memoryview]]:
        ksz, call = self.key_size, getattr(lib(), op)
        keys = ctypes.create_string_buffer(ksz * batch)
        values = ctypes.create_string_buffer(value_size * batch)
        key_view, value_view = memoryview(keys).cast("B"), memoryview(values).cast("B")
        # The batch token of hash maps is a bucket index (u32); key-sized to fit any map type.
        tokens = (ctypes.create_string_buffer(max(ksz, 8)), ctypes.create_string_buffer(max(ksz, 8)))
        first = True
        while True:
            count = c_uint32(batch)
            ret = call(self.fd, None if first else tokens[0], tokens[1], keys, values, ctypes.byref(count), None)
            if ret < 0 and ret != -errno_mod.ENOENT:
                _check_int(ret, f"{op} {self.name}")
            for i in range(count.value):
                yield key_view[i * ksz:(i + 1) * ksz], value_view[i * value_size:(i + 1) * value_size]
            if ret == -errno_mod.ENOENT:  # the walk reached the end
                return
            ctypes.memmove(tokens[0], tokens[1], len(tokens[0]))
            first = False

    def _check_size(self, what: str, data: bytes, expected: int) -> None:
        """The kernel reads exactly the map's sizes from our buffers: never hand it less."""
        if len(data) != expected:
            raise BpfError(f"map {self.name}: {what} of {len(data)} bytes, expected {expected}",
                           errno_mod.EINVAL)


class BpfObject:
    """An opened (then loaded) BPF ELF object. close() frees it and its programs (idempotent)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        with _Capture() as cap:
            ptr = lib().bpf_object__open_file(os.fsencode(path), None)
            self._ptr: int | None = _check_ptr(ptr, f"open {os.fspath(path)}", cap)

    def _obj(self) -> int:
        if not self._ptr:
            raise BpfError("BPF object already closed", errno_mod.EBADF)
        return self._ptr

    def programs(self) -> Iterator[Program]:
        prog = lib().bpf_object__next_program(self._obj(), None)
        while prog:
            yield Program(prog)
            prog = lib().bpf_object__next_program(self._obj(), prog)

    def maps(self) -> Iterator[Map]:
        m = lib().bpf_object__next_map(self._obj(), None)
        while m:
            yield Map(m)
            m = lib().bpf_object__next_map(self._obj(), m)

    def map(self, name: str) -> Map:
        ptr = lib().bpf_object__find_map_by_name(self._obj(), name.encode())
        return Map(_check_ptr(ptr, f"map {name} not in object"))

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int]]:
        """name -> (offset, size) of the globals in a data section, from the object's BTF."""
        btf = _check_ptr(lib().bpf_object__btf(self._obj()), "object has no BTF")
        sec_id = _check_int(lib().btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC),
                            f"BTF datasec {section}")
        sec = lib().btf__type_by_id(btf, sec_id)
        vlen = sec.contents.info & 0xFFFF
        infos = ctypes.cast(ctypes.addressof(sec.contents) + ctypes.sizeof(_BtfType),
                            POINTER(_BtfVarSecinfo))
        out: dict[str, tuple[int, int]] = {}
        for i in range(vlen):
            var = lib().btf__type_by_id(btf, infos[i].type)
            name = lib().btf__name_by_offset(btf, var.contents.name_off).decode()
            out[name] = (infos[i].offset, infos[i].size)
        return out

    def set_rodata(self, name: str, value: bytes) -> None:
        """Set one `const volatile` global before load; value must have the variable's size."""
        offset, size = self.datasec_vars(".rodata").get(name, (-1, 0))
        if offset < 0 or size != len(value):
            raise BpfError(f".rodata variable {name} ({len(value)} bytes) not in object",
                           errno_mod.ENOENT)
        rodata = self.map(".rodata")
        data = bytearray(rodata.initial_value())
        data[offset:offset + size] = value
        rodata.set_initial_value(bytes(data))

    def load(self) -> None:
        """Load into the kernel; on failure the error carries the tail of the verifier log."""
        with _Capture() as cap:
            _check_int(lib().bpf_object__load(self._obj()), "load BPF object", cap)

    def close(self) -> None:
        if self._ptr:
            lib().bpf_object__close(self._ptr)
            self._ptr = None


def num_possible_cpus() -> int:
    return _check_int(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def map_type_supported(map_type: int) -> bool:
    with _Capture():
        return lib().libbpf_probe_bpf_map_type(map_type, None) == 1


def bpf_syscall_errno() -> int:
    """0 when this process may use bpf() (creates and drops a one-slot array map), else errno."""
    with _Capture():
        fd = lib().bpf_map_create(BPF_MAP_TYPE_ARRAY, b"beyla_probe", 4, 4, 1, None)
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


class VmlinuxBtf:
    """The running kernel's BTF (/sys/kernel/btf/vmlinux); a context manager."""

    def __init__(self) -> None:
        self._ptr: int | None = _check_ptr(lib().btf__load_vmlinux_btf(), "load kernel BTF")

    def __enter__(self) -> VmlinuxBtf:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ptr:
            lib().btf__free(self._ptr)
            self._ptr = None

    def find(self, name: str, kind: int) -> int | None:
        """BTF type id of `name` of `kind`, or None."""
        ret = lib().btf__find_by_name_kind(self._ptr, name.encode(), kind)
        return ret if ret > 0 else None


def uprobe_multi_link(prog_fd: int, binary: str, offsets: Sequence[int], retprobe: bool) -> int:
    """BPF_LINK_CREATE of a uprobe_multi link (Linux 6.6+) on the file `offsets` of `binary` for
    every process: the link fd, or -errno. No perf event is involved, so CAP_BPF and
    CAP_PERFMON are enough (a perf event of the uprobe PMU needs CAP_SYS_ADMIN since Linux 6.16
    and its stable backports). libbpf gained this in 1.3; Debian 12 ships 1.1."""
    path = ctypes.create_string_buffer(os.fsencode(binary))
    offs = (c_uint64 * len(offsets))(*offsets)
    attr = _UprobeMultiAttr(prog_fd=prog_fd, attach_type=BPF_TRACE_UPROBE_MULTI,
                            path=ctypes.addressof(path), offsets=ctypes.addressof(offs), cnt=len(offsets),
                            multi_flags=BPF_F_UPROBE_MULTI_RETURN if retprobe else 0)
    return _syscall(0, ctypes.c_long(BPF_LINK_CREATE), ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr)))


def _perf_uprobe_errno(binary: str, offset: int) -> int:
    """Open (disabled) and close a perf event of the uprobe PMU, as libbpf's
    bpf_program__attach_uprobe_opts does for pid -1: 0, or the errno."""
    try:
        with open(UPROBE_PMU_TYPE) as f:
            pmu_type = int(f.read())
    except (OSError, ValueError):
        return errno_mod.ENOENT
    path = ctypes.create_string_buffer(os.fsencode(binary))
    attr = _PerfEventAttr(type=pmu_type, size=ctypes.sizeof(_PerfEventAttr), bits=1,  # disabled
                          config1=ctypes.addressof(path), config2=offset)
    fd = _syscall(1, ctypes.byref(attr), ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
                  ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC))
    if fd < 0:
        return -fd
    os.close(fd)
    return 0


def _load_empty_program(prog_type: int, expected_attach_type: int = 0, attach_btf_id: int = 0) -> int:
    """fd of a loaded `r0 = 0; exit` program, or -errno."""
    insns = ctypes.create_string_buffer(_EMPTY_PROG, len(_EMPTY_PROG))
    opts = _ProgLoadOpts(sz=ctypes.sizeof(_ProgLoadOpts), expected_attach_type=expected_attach_type,
                         attach_btf_id=attach_btf_id)
    with _Capture():
        return int(lib().bpf_prog_load(prog_type, b"beyla_probe", b"GPL", ctypes.cast(insns, c_char_p),
                                       len(_EMPTY_PROG) // 8, ctypes.byref(opts)))


def uprobe_attach_errno(binary: str, offset: int, multi: bool) -> int:
    """Attach an empty uprobe at `offset` of `binary` for an instant, the way Probes attaches
    the OpenSSL probes: a uprobe_multi link (multi) or a perf event of the uprobe PMU.
    0 when it works, else the errno of the failing step."""
    if not multi:
        return _perf_uprobe_errno(binary, offset)
    return _link_errno(_load_empty_program(BPF_PROG_TYPE_KPROBE, BPF_TRACE_UPROBE_MULTI),
                       lambda prog_fd: uprobe_multi_link(prog_fd, binary, [offset], retprobe=False))


def _link_errno(prog_fd: int, link: Callable[[int], int]) -> int:
    """Link the empty program `prog_fd` (negative: the errno of its failed load) with `link`
    and close both: 0 when it worked, else the errno of the failing step."""
    if prog_fd < 0:
        return -prog_fd
    try:
        link_fd = link(prog_fd)
        if link_fd < 0:
            return -link_fd
        os.close(link_fd)
        return 0
    finally:
        os.close(prog_fd)


def uprobe_test_target() -> tuple[str, int]:
    """A real function in a real library to try uprobes on: libbpf_major_version in the
    libbpf.so.1 this process maps, as (path through /proc/<pid>/root, file offset): the kind of
    path and offset the OpenSSL probes of a pod's process are attached with. Nothing calls it."""
    addr = ctypes.cast(lib().libbpf_major_version, c_void_p).value or 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, _, end = fields[0].partition("-")
            if len(fields) == 6 and int(start, 16) <= addr < int(end, 16):
                path = fields[5].rstrip("\n")
                return f"/proc/{os.getpid()}/root{path}", addr - int(start, 16) + int(fields[2], 16)
    raise BpfError("libbpf_major_version not in any mapping of /proc/self/maps", errno_mod.ENOENT)


def fentry_attach_errno(btf_id: int) -> int:
    """Load an empty fentry program on kernel function `btf_id` and attach it for an instant.
    0 when both work, else the errno of the failing step."""
    return _link_errno(_load_empty_program(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, btf_id),
                       lambda prog_fd: lib().bpf_link_create(prog_fd, 0, BPF_TRACE_FENTRY, None))


__all__ = ["BpfError", "BpfObject", "Link", "Map", "Program", "VmlinuxBtf",
           "bpf_syscall_errno", "fentry_attach_errno", "map_type_supported", "num_possible_cpus", "lib",
           "uprobe_attach_errno", "uprobe_multi_link", "uprobe_test_target",
           "BTF_KIND_FUNC", "BTF_KIND_TYPEDEF", "BPF_MAP_TYPE_RINGBUF", "BPF_TRACE_UPROBE_MULTI"]
