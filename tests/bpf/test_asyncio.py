"""The asyncio probes on the real kernel: a Task's calls name it and the Tasks that created it,
and the response it gives names it, under CPython with symbols (this interpreter) and stripped
(Debian's python3.11, whose _asyncio is found by following its type objects)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from beyla_sidecar.bpf.events import ExchangeRecord, Role
from beyla_sidecar.bpf.loader import Probes
from beyla_sidecar.discover.asyncio_hooks import ASYNCIO_HOOKS, classify_asyncio

from .conftest import collect

pytestmark = pytest.mark.bpf

APP = Path(__file__).with_name("asyncio_app.py")
N = 12
INTERPRETERS = [sys.executable] + [p for p in ("/usr/bin/python3.11",) if Path(p).exists()]


def asyncio_module(python: str) -> str:
    return subprocess.run([python, "-c", "import _asyncio; print(_asyncio.__file__)"], capture_output=True,
                          text=True, check=True).stdout.strip()


def run_app(probes: Probes, python: str) -> tuple[list[ExchangeRecord], int]:
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", python, str(APP), str(N)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        probes.allow_pid_namespace(json.loads(proc.stdout.readline())["ns_inode"])
        proc.stdin.write("go\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
        assert result["ok"] == N
        # per request: the driver's call, the frontend's exchange and its two calls, the backend's two
        records = collect(probes, lambda evs: sum(isinstance(e, ExchangeRecord) for e in evs) >= 6 * N)
    finally:
        proc.kill()
        proc.wait()
    return [r for r in records if isinstance(r, ExchangeRecord)], result["frontend"]


@pytest.mark.parametrize("python", INTERPRETERS)
def test_calls_name_the_tasks_of_the_request_they_serve(python: str) -> None:
    module = asyncio_module(python)
    hooks = classify_asyncio(module, module)
    assert hooks.keys() == set(ASYNCIO_HOOKS)
    with Probes() as probes:
        probes.attach_asyncio(module, hooks)
        records, frontend = run_app(probes, python)
    served = {r.request.split()[1].decode(): r for r in records
              if r.role is Role.SERVER and r.request.startswith(b"GET /f/")}
    calls = [r for r in records if r.role is Role.CLIENT and r.request.startswith(b"GET /b/")]
    backend = [r for r in records if r.role is Role.SERVER and r.request.startswith(b"GET /b/")]
    driver = [r for r in records if r.role is Role.CLIENT and r.request.startswith(b"GET /f/")]
    assert sorted(served) == sorted(f"/f/{i}" for i in range(N)) and len(calls) == len(backend) == 2 * N
    assert len(records) == 6 * N and len(driver) == N
    # each request answered by a Task of its own (start_server's per-connection Task)
    answering = {path: r.tasks for path, r in served.items()}
    assert all(len(t) == 1 for t in answering.values()) and len({t[0] for t in answering.values()}) == N
    for call in calls:
        i = call.request.split()[1].decode().split("/")[2]
        # gather's Task, created by the handler's Task: the chain ends there (created in a callback)
        assert len(call.tasks) == 2 and call.tasks[1] == answering[f"/f/{i}"][0] != call.tasks[0], (i, call.tasks)
    assert all(r.tasks == () for r in backend + driver)  # threads, no Task
    assert all(r.pid == served["/f/0"].pid for r in records)


def test_without_the_asyncio_probes_no_task_is_named() -> None:
    with Probes() as probes:
        records, _ = run_app(probes, sys.executable)
    assert len(records) == 6 * N and all(r.tasks == () for r in records)
