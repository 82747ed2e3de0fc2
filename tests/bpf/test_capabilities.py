"""`beyla-sidecar check` names the capabilities a pod spec must add, really tries the uprobe
attach that HTTPS tracing needs, and exits non-zero whenever it lists a problem."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from beyla_sidecar.bpf.features import REQUIRED_CAPABILITIES, missing_capabilities
from beyla_sidecar.config import WebhookConfig, describe

from ..privileges import DOCUMENTED, setpriv

REPO = Path(__file__).resolve().parents[2]
ALL = "CapEff:\t000001ffffffffff\n"
# BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH, CHECKPOINT_RESTORE: bits 39, 38, 19, 2, 40
SIDECAR_SET = f"CapEff:\t{(1 << 39) | (1 << 38) | (1 << 19) | (1 << 2) | (1 << 40):016x}\n"
NO_PERFMON = tuple(c for c in DOCUMENTED if c != "PERFMON")


def test_root_has_everything() -> None:
    assert missing_capabilities(ALL, paranoid=2) == ()


def test_least_privilege_set_is_enough_unless_perf_is_paranoid() -> None:
    assert missing_capabilities(SIDECAR_SET, paranoid=2) == ()
    assert missing_capabilities(SIDECAR_SET, paranoid=3) == ("SYS_ADMIN",)


def test_missing_ones_are_named() -> None:
    status = "Name:\tx\nCapEff:\t0000000000000004\n"  # only DAC_READ_SEARCH
    assert missing_capabilities(status, paranoid=2) == ("SYS_PTRACE", "PERFMON", "BPF", "CHECKPOINT_RESTORE")


def test_the_documented_set_is_the_required_set_and_the_webhook_default() -> None:
    assert sorted(REQUIRED_CAPABILITIES) == sorted(DOCUMENTED)
    defaults = {name: default for name, default, _ in describe(WebhookConfig)}
    assert defaults["BEYLA_WEBHOOK_SIDECAR_CAPABILITIES"] == ",".join(DOCUMENTED)


def run_under(caps: tuple[str, ...], uid: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*setpriv(caps, uid), sys.executable, *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def check_under(caps: tuple[str, ...], uid: int) -> subprocess.CompletedProcess[str]:
    return run_under(caps, uid, ["-m", "beyla_sidecar.cli", "check"])


def rows(report: str) -> dict[str, str]:
    return {line[:20].strip(): line[21:] for line in report.splitlines() if not line.startswith("problem: ")}


def problems(report: str) -> list[str]:
    return [line.removeprefix("problem: ") for line in report.splitlines() if line.startswith("problem: ")]


@pytest.mark.bpf
@pytest.mark.parametrize("uid", [0, 1000])
def test_check_passes_under_exactly_the_documented_set(uid: int) -> None:
    """Linux 6.6+: uprobe_multi links need BPF and PERFMON only, no SYS_ADMIN."""
    proc = check_under(DOCUMENTED, uid)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = rows(proc.stdout)
    assert found["uprobes"] == "yes (uprobe_multi)"
    assert found["capabilities"] == "all needed present"
    assert found["attach strategy"] == "tracepoint"
    assert problems(proc.stdout) == []


@pytest.mark.bpf
def test_check_fails_and_names_the_fix_without_perfmon() -> None:
    proc = check_under(NO_PERFMON, 0)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert rows(proc.stdout)["uprobes"] == "no (HTTPS not traced)"
    assert problems(proc.stdout) == [
        "missing capabilities PERFMON: add them to securityContext.capabilities.add (or run as root)",
        "HTTPS through OpenSSL is not traced: uprobes cannot attach (uprobe_multi link: EPERM: Operation "
        "not permitted; perf uprobe: EACCES: Permission denied): add capability PERFMON",
    ]


@pytest.mark.bpf
def test_perf_uprobes_are_refused_without_sys_admin_and_the_problem_says_so() -> None:
    """The cause of issue 14: perf events of the uprobe PMU need CAP_SYS_ADMIN (Linux 6.16+ and
    stable backports), CAP_PERFMON is not enough. Without uprobe_multi links that is the fix."""
    code = ("from beyla_sidecar.bpf import libbpf, features\n"
            "target = libbpf.uprobe_test_target()\n"
            "print(libbpf.uprobe_attach_errno(*target, multi=False), libbpf.uprobe_attach_errno(*target, multi=True))\n"
            f"print(features.uprobe_problem({errno.EINVAL}, {errno.EACCES}))\n")
    documented = run_under(DOCUMENTED, 0, ["-c", code])
    assert documented.stdout.splitlines() == [
        f"{errno.EACCES} 0",
        "HTTPS through OpenSSL is not traced: uprobes cannot attach (this kernel has no uprobe_multi links "
        "(Linux 6.6+); perf uprobe: EACCES: Permission denied): without uprobe_multi links, perf uprobes "
        "need SYS_ADMIN since Linux 6.16 (and stable kernels since July 2025): add capability SYS_ADMIN "
        "or use Linux 6.6+"], documented.stderr
    with_sys_admin = run_under((*DOCUMENTED, "SYS_ADMIN"), 0, ["-c", code])
    assert with_sys_admin.stdout.splitlines() == [
        "0 0",
        "HTTPS through OpenSSL is not traced: uprobes cannot attach (this kernel has no uprobe_multi links "
        "(Linux 6.6+); perf uprobe: EACCES: Permission denied)"], with_sys_admin.stderr
