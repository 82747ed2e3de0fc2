"""The kernel's side of BEYLA_EXECUTABLE_NAME (probes/gate.h, process.h) with real processes in a
PID namespace: at exec a new executable is judged from user space's verdicts; without one the
process is PENDING (it reports, its connections say so) and its exec event brings the
executable's identity and path (as /proc/<pid>/exe shows it); a verdict given later applies to
the pending process at its next transfer and to later execs; forks inherit; exits leave nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from beyla_sidecar.bpf.events import Event, EventType
from beyla_sidecar.bpf.loader import Probes

from ..e2e.conftest import pod  # noqa: F401 (the fixture)
from ..e2e.pod import Pod
from .conftest import collect

pytestmark = pytest.mark.bpf

# On each stdin line: "connect" sends a request on a new connection and reads the answer;
# "fork" forks a child that does the same and exits. Prints "ok" after each.
APP = """
import os, socket, sys
def call():
    with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as s:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        s.recv(100)
for line in sys.stdin:
    if line.strip() == "fork":
        pid = os.fork()
        if pid == 0:
            call()
            os._exit(0)
        os.waitpid(pid, 0)
    else:
        call()
    print("ok", flush=True)
"""


@pytest.fixture
def listener() -> Iterator[int]:
    """An HTTP-ish server outside the pod: answers each connection's request, then closes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                conn.recv(100)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


class App:
    def __init__(self, pod: Pod, port: int) -> None:
        self.proc = pod.spawn([sys.executable, "-c", APP, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = pod.payload_pid(self.proc)

    def do(self, what: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{what}\n".encode())
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == b"ok\n"

    def stop(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0
        self.proc.stdout.close()


def of(events: list, etype: EventType, pid: int) -> list[Event]:
    return [e for e in events if isinstance(e, Event) and e.type is etype and e.pid == pid]


def kernel_dev(st_dev: int) -> int:
    return os.major(st_dev) << 20 | os.minor(st_dev)


def test_executables_judged_at_exec_pending_until_a_verdict(pod: Pod, listener: int) -> None:
    exe = os.path.realpath(sys.executable)  # a symlink's target: what /proc/<pid>/exe says
    st = os.stat(exe)
    with Probes(filter_pids=True, select_at_exec=True, pid_namespace=pod.ns_inode) as probes:
        first = App(pod, listener)
        first.do("connect")  # no verdict on python yet: pending, reported, marked
        events = collect(probes, lambda evs: len(of(evs, EventType.CONN_OPEN, first.pid)) >= 1)
        [execd] = of(events, EventType.PROCESS_EXEC, first.pid)
        assert execd.pending and execd.path == exe and execd.exe is not None
        assert execd.exe[:2] == (st.st_ino, kernel_dev(st.st_dev))
        [opened] = of(events, EventType.CONN_OPEN, first.pid)
        assert opened.pending
        ns_pid = execd.ns_pid
        assert probes.selected_processes() == {ns_pid: False}  # pending

        probes.set_exe_verdict(execd.exe, True)  # applied at the process's next transfer
        first.do("connect")
        first.do("fork")  # the child inherits the selection; the fork event names the parent
        events = collect(probes, lambda evs: len(of(evs, EventType.CONN_OPEN, first.pid)) >= 1
                         and any(e.type is EventType.PROCESS_EXIT for e in evs if isinstance(e, Event)))
        [opened] = of(events, EventType.CONN_OPEN, first.pid)
        assert not opened.pending
        [forked] = [e for e in events if isinstance(e, Event) and e.type is EventType.PROCESS_FORK]
        assert (forked.tid, forked.ns_tid, forked.pending) == (first.pid, ns_pid, False)
        assert len(of(events, EventType.CONN_OPEN, forked.pid)) == 1  # the child's connection, selected
        assert probes.selected_processes() == {ns_pid: True}  # the child exited: its pid is gone

        second = App(pod, listener)  # the verdict is known at exec now: selected at once
        second.do("connect")
        events = collect(probes, lambda evs: len(of(evs, EventType.CONN_OPEN, second.pid)) >= 1)
        [execd] = of(events, EventType.PROCESS_EXEC, second.pid)
        assert (execd.pending, execd.path) == (False, "")
        assert not of(events, EventType.CONN_OPEN, second.pid)[0].pending
        assert probes.selected_processes() == {ns_pid: True, execd.ns_pid: True}

        probes.set_exe_verdict(execd.exe, False)  # type: ignore[arg-type]
        third = App(pod, listener)  # not selected at exec: reports nothing
        third.do("connect")
        events = collect(probes, lambda evs: False, wait_s=0.5)
        assert [e.type for e in events if e.pid == third.pid] == [EventType.PROCESS_EXEC]
        for app in (first, second, third):
            app.stop()
        # run through symlinks (merged /usr: /bin -> usr/bin; sh -> dash): the file's own path
        pod.run(["/bin/sh", "-c", "exit 0"])
        events = collect(probes, lambda evs: any(e.type is EventType.PROCESS_EXEC for e in evs))
        assert [(e.pending, e.path) for e in events if e.type is EventType.PROCESS_EXEC] == [
            (True, os.path.realpath("/bin/sh"))]
        collect(probes, lambda evs: False, wait_s=0.5)
        assert probes.selected_processes() == {}  # no stale pid
        counters = probes.counters()
    assert counters["event_drops"] == counters["exchange_drops"] == 0
