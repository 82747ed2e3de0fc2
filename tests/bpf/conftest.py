"""Fixtures for tests that load the real probes: probe sessions, the traffic generator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beyla_sidecar.bpf.events import Decoder, Event, ExchangeRecord
from beyla_sidecar.bpf.loader import Probes


TRAFFIC = Path(__file__).with_name("traffic.py")


@pytest.fixture
def probes() -> Iterator[Probes]:
    with Probes() as session:
        yield session


class Traffic:
    """One run of traffic.py, optionally in a new PID namespace (a simulated pod)."""

    def __init__(self, plan: list[dict], new_pid_namespace: bool) -> None:
        cmd = [sys.executable, str(TRAFFIC), json.dumps(plan)]
        if new_pid_namespace:
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.ns_inode: int = json.loads(self.proc.stdout.readline())["ns_inode"]

    def start(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self) -> dict:
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out
        return json.loads(out)


@pytest.fixture
def traffic() -> Iterator[Callable[[list[dict], bool], Traffic]]:
    runs: list[Traffic] = []

    def start(plan: list[dict], new_pid_namespace: bool) -> Traffic:
        runs.append(Traffic(plan, new_pid_namespace))
        return runs[-1]

    yield start
    for run in runs:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def collect(probes: Probes, done: Callable[[list], bool], wait_s: float = 5.0,
            sizes: list[int] | None = None) -> list[Event | ExchangeRecord]:
    """Drain the ring buffer until done(events) or wait_s passed; then drain once more so
    that any unexpected extra record is seen too. `sizes`: gets each record's length."""
    events: list[Event | ExchangeRecord] = []
    decoder = Decoder()

    def keep(record: bytes) -> None:
        event = decoder.decode(record)
        assert event is not None, record
        events.append(event)
        if sizes is not None:
            sizes.append(len(record))

    deadline = time.monotonic() + wait_s
    while not done(events) and time.monotonic() < deadline:
        probes.poll(50, keep)
    time.sleep(0.05)
    probes.consume(keep)
    return events
