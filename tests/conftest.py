"""Session set-up shared by every test that touches the kernel."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

KERNEL_FILESYSTEMS = (("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing"),
                      ("debugfs", "/sys/kernel/debug"))


def _mounted() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


@pytest.fixture(scope="session", autouse=True)
def kernel_filesystems() -> None:
    """Mount bpffs, tracefs and debugfs where a bare VM or container lacks them."""
    if os.geteuid() != 0:
        return
    mounted = _mounted()
    for fstype, target in KERNEL_FILESYSTEMS:
        if target not in mounted:
            subprocess.run(["mount", "-t", fstype, fstype, target], check=True)
