"""The `bpf` marker: tests that need root, a kernel with BPF and BTF, and the built probes.

Where those are missing, a marked test errors with the reason instead of skipping: `make test`
is what CI runs, as root, and a skip there would hide every kernel-side failure. `make unit`
(`pytest -m "not bpf"`) deselects them and runs the rest, without root."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

from beyla_sidecar.bpf import features, libbpf
from beyla_sidecar.bpf.strategy import OBJECT_NAME

OBJECT = Path(features.__file__).with_name("objects") / OBJECT_NAME
KERNEL_FILESYSTEMS = (("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing"),
                      ("debugfs", "/sys/kernel/debug"))


@functools.cache
def bpf_unavailable() -> str | None:
    """Why the `bpf` tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root"
    if not features.BTF_PATH.exists():
        return features.FIX_BTF
    try:
        err = libbpf.bpf_syscall_errno()
    except libbpf.BpfError as exc:  # libbpf.so.1 missing
        return str(exc)
    if err:
        return f"bpf() fails: {os.strerror(err)}"
    if not OBJECT.is_file():
        return f"{OBJECT} not built: make install"
    return None


@functools.cache
def mount_kernel_filesystems() -> None:
    """Mount bpffs, tracefs and debugfs where a bare VM or container lacks them."""
    mounted = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    for fstype, target in KERNEL_FILESYSTEMS:
        if target not in mounted:
            subprocess.run(["mount", "-t", fstype, fstype, target], check=True)


def pytest_report_header() -> str:
    reason = bpf_unavailable()
    return f"bpf tests: {'can run here' if reason is None else f'cannot run here ({reason})'}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("bpf") is None:
        return
    reason = bpf_unavailable()
    if reason is not None:
        pytest.fail(f"{reason}: this `bpf` test needs root, BPF and the built probes "
                    "(`make unit` runs the tests that need none of these)", pytrace=False)
    mount_kernel_filesystems()
