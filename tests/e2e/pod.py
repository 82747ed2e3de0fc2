"""A simulated pod: a PID namespace (with its own /proc) that the sidecar and apps share.

`unshare --pid --fork --mount-proc` starts the pod's first process; everything else enters it
with `nsenter`. The network namespace is the host's, so traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).parent / "apps"
SIDECAR = [sys.executable, "-m", "beyla_sidecar.cli", "run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Terminate what still runs, killing what does not stop within 5 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Pod:
    """Processes started through `run` live in the pod's PID namespace; `run_outside` do not."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.init = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                      "sleep", "infinity"])
        self._procs: list[subprocess.Popen[bytes]] = [self.init]
        deadline = time.monotonic() + 5
        while (self.init_pid is None) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.init_pid is not None, "unshare did not start"
        self.ns_inode = os.stat(f"/proc/{self.init_pid}/ns/pid").st_ino

    @property
    def init_pid(self) -> int | None:
        """Host pid of `sleep` (the child that unshare forked into the new namespace)."""
        try:
            children = Path(f"/proc/{self.init.pid}/task/{self.init.pid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def _nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", "--target", str(self.init_pid), "--pid", "--mount", "--", *argv]

    def spawn(self, argv: list[str], inside: bool = True, **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self._nsenter(argv) if inside else argv, cwd=ROOT, **kw)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def run(self, argv: list[str], inside: bool = True, timeout: float = 60,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:  # noqa: A002 (subprocess's name)
        return subprocess.run(self._nsenter(argv) if inside else argv, cwd=ROOT, check=True,
                              capture_output=True, timeout=timeout, input=input)

    @staticmethod
    def payload_pid(proc: subprocess.Popen[bytes]) -> int:
        """Host pid of the command nsenter forked into the pod (signals to nsenter are not forwarded)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.01)
        raise RuntimeError(f"nsenter {proc.pid} has no child")

    def close(self) -> None:
        # Killing the namespace's init makes the kernel kill everything else inside (a
        # namespace init ignores SIGTERM); what is left are nsenter parents and outside processes.
        init = self.init_pid
        if init is not None:
            os.kill(init, signal.SIGKILL)
        stop_all(self._procs)


class Sidecar:
    """`beyla-sidecar run` inside the pod, printing JSON spans to a file. `wrapper` runs it,
    e.g. setpriv with a capability set (inside the pod: nsenter itself needs CAP_SYS_ADMIN)."""

    def __init__(self, pod: Pod, env: dict[str, str], wrapper: tuple[str, ...] = ()) -> None:
        self.pod = pod
        self.out = pod.tmp / "spans.jsonl"
        self.err = pod.tmp / "sidecar.log"
        full_env = {**os.environ, "BEYLA_TRACE_PRINTER": "json", "PYTHONPATH": str(ROOT), **env}
        self.proc = pod.spawn([*wrapper, *SIDECAR], stdout=self.out.open("wb"), stderr=self.err.open("wb"), env=full_env)
        deadline = time.monotonic() + 30
        while b"instrumentation ready" not in self.err.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sidecar did not start:\n{self.err.read_text()}")
            time.sleep(0.05)

    def spans(self) -> list[dict]:
        """The spans printed so far; a line still being written (a read can see part of a write)
        counts from the next call on."""
        text = self.out.read_text()
        return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]

    def wait_spans(self, count: int, timeout: float = 20.0, settle: float = 1.5) -> list[dict]:
        """Wait until `count` spans arrived, then a little longer so that extras would show."""
        deadline = time.monotonic() + timeout
        while len(self.spans()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle)
        return self.spans()

    def stop(self) -> int:
        os.kill(self.pod.payload_pid(self.proc), signal.SIGTERM)
        return self.proc.wait(30)
