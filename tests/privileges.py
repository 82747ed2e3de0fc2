"""Running a command with exactly a set of capabilities, as Kubernetes runs the sidecar
(capabilities.drop: ALL, add: ...): effective, permitted, inheritable, ambient and bounding
sets all equal to that set, so nothing more can ever be gained."""

from __future__ import annotations

from pathlib import Path

# What the README, docs/kubernetes.md, the chart and the webhook give the sidecar.
DOCUMENTED = ("BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHECKPOINT_RESTORE")
# Bit numbers (linux/capability.h).
BITS = {"DAC_READ_SEARCH": 2, "SYS_PTRACE": 19, "SYS_ADMIN": 21, "PERFMON": 38, "BPF": 39,
        "CHECKPOINT_RESTORE": 40}


def setpriv(caps: tuple[str, ...], uid: int = 0) -> tuple[str, ...]:
    """argv prefix: run as `uid` (and gid) holding exactly `caps` (ambient: also for uid != 0)."""
    spec = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    ids = ("--reuid", str(uid), "--regid", str(uid), "--clear-groups") if uid else ()
    return ("setpriv", *ids, f"--inh-caps={spec}", f"--ambient-caps={spec}", f"--bounding-set={spec}")


def mask(caps: tuple[str, ...]) -> int:
    return sum(1 << BITS[c] for c in caps)


def effective(pid: int) -> tuple[int, int]:
    """(uid, CapEff) of a running process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["Uid"].split()[1]), int(status["CapEff"], 16)
