"""Discovery against real processes in a PID namespace of their own (a pod, watched from
outside: pids are host pids), with the probes replaced by a recorder."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beyla_sidecar.bpf.events import NO_TUPLE, Event, EventType, Role
from beyla_sidecar.discover.asyncio_hooks import ASYNCIO_HOOKS, classify_asyncio
from beyla_sidecar.discover.lifecycle import ASYNCIO_PATTERNS, Discovery
from beyla_sidecar.discover.maps import executable_files, listening_ports, own_namespace_tgid
from beyla_sidecar.discover.selection import Selector

from ..e2e.pod import Pod

pytestmark = pytest.mark.bpf  # pods: PID namespaces (unshare) need root

SSL_APP = "import socket, ssl, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); " \
          "print(s.getsockname()[1], flush=True); sys.stdin.read()"
PLAIN_APP = "import sys; print(0, flush=True); sys.stdin.read()"
ASYNCIO_APP = "import asyncio, sys; print(0, flush=True); sys.stdin.read()"


class FakeUprobes:
    def __init__(self, path: str, tls: bool = True) -> None:
        self.path = path
        self.tls = tls


class RecordingProbes:
    def __init__(self) -> None:
        self.allowed: set[int] = set()
        self.attached: list[str] = []
        self.asyncio: list[str] = []
        self.detached: list[str] = []

    def allow_process(self, ns_tgid: int) -> None:
        self.allowed.add(ns_tgid)

    def disallow_process(self, ns_tgid: int) -> None:
        self.allowed.discard(ns_tgid)

    def attach_openssl(self, path: str, offsets: dict[str, int]) -> FakeUprobes:
        assert {"SSL_read", "SSL_write"} <= offsets.keys()
        self.attached.append(path)
        return FakeUprobes(path)

    def attach_asyncio(self, path: str, offsets: dict[str, int]) -> FakeUprobes:
        assert offsets.keys() == set(ASYNCIO_HOOKS)
        self.asyncio.append(path)
        return FakeUprobes(path, tls=False)

    def detach(self, uprobes: FakeUprobes) -> None:
        self.detached.append(uprobes.path)


class App:
    def __init__(self, pod: Pod, code: str) -> None:
        self.proc = pod.spawn([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.pid = pod.payload_pid(self.proc)  # host pid

    def stop(self) -> None:
        os.kill(self.pid, 9)
        self.proc.wait()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod(tmp_path)
    yield p
    p.close()


def event(etype: EventType, pid: int) -> Event:
    return Event(etype, time.monotonic_ns(), 0, pid, pid, pid, pid, Role.UNKNOWN, NO_TUPLE, "x")


def test_maps_and_ports_of_a_real_process(pod: Pod) -> None:
    app = App(pod, SSL_APP)
    paths = [f.path for f in executable_files(app.pid)]
    assert any("libssl.so" in p for p in paths) and os.readlink(f"/proc/{app.pid}/exe") in paths
    assert len({f.id for f in executable_files(app.pid)}) == len(paths)
    assert listening_ports(app.pid) == {app.port}
    assert own_namespace_tgid(app.pid) not in (app.pid, 1)  # its pid in the pod's namespace


def test_one_attachment_per_library_file_and_none_left_after_exits(pod: Pod) -> None:
    a, b, plain = App(pod, SSL_APP), App(pod, SSL_APP), App(pod, PLAIN_APP)
    probes = RecordingProbes()
    d = Discovery(Selector(), pod.ns_inode, os.getpid())
    d.start(probes)
    # found ahead in the pod's root (/lib and /usr/lib are one directory here), then mapped
    assert len(probes.attached) == 1 and "/x86_64-linux-gnu/libssl.so" in probes.attached[0]
    assert d.tls_files == 1 and d.instrumented_processes == len(d) == 4  # with the pod's init
    assert probes.allowed == set()  # no selector: allowed_pids is not used
    for app in (a, b):
        app.stop()
        d.handle(event(EventType.PROCESS_EXIT, app.pid), app.pid)
    # no process state left; the file stays attached (idle) for the next process using it
    assert probes.detached == [] and d.tls_files == 1 and len(d) == 2
    plain.stop()
    time.sleep(0.1)
    d.sweep()  # an exit whose event was lost
    assert len(d) == 1


def test_asyncio_modules_attached_ahead_and_when_mapped(pod: Pod) -> None:
    """The pod's standard _asyncio files are attached at its first process; another one (this
    interpreter's, under pyenv) when a process maps it; each once, and apart from OpenSSL's."""
    import _asyncio

    ahead = sorted(p for pattern in ASYNCIO_PATTERNS for p in glob.glob(f"/{pattern}") if classify_asyncio(p, p))
    a, b = App(pod, ASYNCIO_APP), App(pod, ASYNCIO_APP)
    probes = RecordingProbes()
    d = Discovery(Selector(), pod.ns_inode, os.getpid())
    d.start(probes)
    mine = os.path.realpath(_asyncio.__file__)
    shown = [path.split("/root", 1)[1] for path in probes.asyncio]  # /proc/<pid>/root<path>
    assert sorted(shown) == sorted({*ahead, mine})
    assert d.asyncio_files == len(shown) and d.tls_files == len(probes.attached)
    for app in (a, b):
        app.stop()
    d.sweep()
    assert probes.detached == [] and d.asyncio_files == len(shown)  # idle, still attached


def test_selection_by_executable_and_port(pod: Pod) -> None:
    ssl_app, _plain = App(pod, SSL_APP), App(pod, PLAIN_APP)
    key = own_namespace_tgid(ssl_app.pid)
    probes = RecordingProbes()
    d = Discovery(Selector(re.compile(r"python"), ((ssl_app.port, ssl_app.port),)), pod.ns_inode, os.getpid())
    d.start(probes)
    assert probes.allowed == {key} and d.instrumented_processes == 1
    # exec: the probes forget the process until we decide again (this poll cycle's flush)
    probes.allowed.clear()
    d.handle(event(EventType.PROCESS_EXEC, ssl_app.pid), ssl_app.pid)
    assert d.instrumented_processes == 0
    d.flush()
    assert probes.allowed == {key} and d.instrumented_processes == 1
    ssl_app.stop()
    d.handle(event(EventType.PROCESS_EXIT, ssl_app.pid), ssl_app.pid)
    assert d.instrumented_processes == 0 and len(d) == 2  # init and the plain app, not selected


def test_selector_logic() -> None:
    ports = lambda: {8443}  # noqa: E731
    assert Selector().matches("/usr/sbin/nginx", ports) and not Selector().filters
    assert Selector(re.compile("nginx")).matches("/usr/sbin/nginx", ports)
    assert not Selector(re.compile("^nginx$")).matches("/usr/sbin/nginx", ports)
    assert Selector(ports=((8000, 8999),)).matches("/x", ports)
    assert not Selector(re.compile("x"), ((80, 80),)).matches("/x", ports)  # both must hold
    assert not Selector(re.compile("y"), ((8443, 8443),)).matches("/x", ports)
