"""Fixtures of the end-to-end tests: a pod (PID namespace) and sidecars started in it (as a
process in the pod, or as a pipeline in a thread of the test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .inprocess import InProcessSidecar
from .pod import Pod, Sidecar


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod(tmp_path)
    yield p
    p.close()


@pytest.fixture
def start_sidecar(pod: Pod) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def start(**env: str) -> Sidecar:
        s = Sidecar(pod, env)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.stop()


@pytest.fixture
def in_process(pod: Pod) -> Iterator[list[InProcessSidecar]]:
    started: list[InProcessSidecar] = []
    yield started
    for s in started:
        s.stop()
