"""ProcessInfo of real processes, and the service.name their resources get."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from beyla_sidecar.config import Config, load
from beyla_sidecar.discover.processes import ProcessInfo, ProcessTable, inspect
from beyla_sidecar.export.resource import ResourceFactory

PYTHON = os.path.basename(os.path.realpath(sys.executable))  # what /proc/<pid>/exe names, e.g. python3.11
# Prints the pid of a worker started as multiprocessing's spawn does it (`uvicorn --workers`):
# `python -c 'from multiprocessing.spawn import spawn_main; ...' --multiprocessing-fork`.
APP = """\
import multiprocessing, sys, time
if __name__ == "__main__":
    worker = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,), daemon=True)
    worker.start()
    print(worker.pid, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def start(procs: list[subprocess.Popen[bytes]], argv: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs.append(proc)
    return proc


def info(pid: int) -> ProcessInfo:
    found = inspect(pid)
    assert found is not None
    return found


def test_interpreters_are_named_after_what_they_run(procs: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "app.py").write_text(APP)
    server = start(procs, [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"])
    app = start(procs, [sys.executable, str(tmp_path / "x" / "app.py")])
    assert app.stdout is not None
    worker_pid = int(app.stdout.readline())
    # the parent learns of the exec before the kernel has set the new program's arguments up
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{worker_pid}/cmdline").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)
    other = start(procs, ["sleep", "60"])

    served = info(server.pid)
    assert (served.executable_name, served.app_name) == (PYTHON, "http.server")
    assert served.command_line == f"{sys.executable} -m http.server 0 --bind 127.0.0.1"
    assert info(app.pid).app_name == "app"
    worker = info(worker_pid)
    assert "--multiprocessing-fork" in worker.command_line and worker.app_name == "app"  # its parent's
    slept = info(other.pid)
    assert (slept.executable_name, slept.app_name) == ("sleep", "")

    names = ResourceFactory(load(Config, {}))
    assert [names.service_name(info(p)) for p in (server.pid, app.pid, worker_pid, other.pid)] == \
        ["http.server", "app", "app", "sleep"]
    owned = ResourceFactory(load(Config, {"BEYLA_K8S_DEPLOYMENT_NAME": "shop"}))
    assert owned.service_name(info(server.pid)) == "shop"


def test_process_table_remembers_a_gone_process_by_its_task_name(procs: list[subprocess.Popen[bytes]]) -> None:
    gone = start(procs, [sys.executable, "-c", "pass"])
    gone.wait()
    table = ProcessTable()
    assert table.get(gone.pid, "python3") == ProcessInfo(gone.pid, "python3", command_line="", app_name="",
                                                         service_name="", create_time=0.0)


def test_a_gone_process_is_pruned_at_the_second_sweep_that_finds_it_gone(procs: list[subprocess.Popen[bytes]]) -> None:
    """Its records still queued behind its exit keep its name for one sweep."""
    alive = start(procs, [sys.executable, "-c", "import time; time.sleep(60)"])
    gone = start(procs, [sys.executable, "-c", "import sys; sys.stdin.read()"])  # until its stdin closes
    table = ProcessTable()
    named = table.get(gone.pid)
    assert named is not None and table.get(alive.pid) is not None
    assert gone.stdin is not None
    gone.stdin.close()
    gone.wait()
    assert table.prune() == []
    assert table.get(gone.pid) is named
    assert table.prune() == [gone.pid]
    assert table.prune() == [] and table.get(alive.pid) is not None
