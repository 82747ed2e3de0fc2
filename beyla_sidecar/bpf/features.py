"""What the running kernel offers to the probes: for `beyla-sidecar check` and for choosing
the attach strategy at start-up. Every probe here is cheap (file checks, BTF lookups, one
map-type probe, one empty fentry program and one empty uprobe attached for an instant)."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, replace
from pathlib import Path

from . import libbpf
from .libbpf import BpfError
from .strategy import STRATEGIES, Strategy

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
# libbpf looks in debugfs first, then tracefs (tracefs_path() in libbpf.c).
TRACEFS_CANDIDATES = (Path("/sys/kernel/debug/tracing"), Path("/sys/kernel/tracing"))
PMU_DIR = Path("/sys/bus/event_source/devices")
# A stable, rarely hot kernel function to try an fentry attach on.
FENTRY_TEST_FUNC = "tcp_close"

FIX_BTF = ("kernel BTF not found at /sys/kernel/btf/vmlinux: the CO-RE probes need a kernel "
           "built with CONFIG_DEBUG_INFO_BTF=y (default on current distribution kernels)")
FIX_TRACEFS = ("tracefs is not mounted: mount -t tracefs nodev /sys/kernel/tracing "
               "(in a pod: hostPath volume /sys/kernel/tracing)")
# Capabilities the sidecar needs instead of `privileged: true` (bit numbers: linux/capability.h).
REQUIRED_CAPABILITIES = {
    "DAC_READ_SEARCH": 2,      # read other containers' files through /proc/<pid>/root
    "SYS_PTRACE": 19,          # read /proc/<pid>/exe, maps and environ of the pod's processes
    "PERFMON": 38,             # load tracing programs, tracepoint perf events, uprobe_multi links
    "BPF": 39,                 # load programs, create maps
    "CHECKPOINT_RESTORE": 40,  # resolve /proc/<pid>/map_files of other processes
}
# Needed on top when kernel.perf_event_paranoid > 2 (Debian, Ubuntu), and for uprobes on kernels
# without uprobe_multi links (< 6.6) that have the CVE-2025-38466 fix (perf uprobes: CAP_SYS_ADMIN).
SYS_ADMIN = 21
# How the OpenSSL uprobes are attached, in preference order.
UPROBE_MULTI = "uprobe_multi"  # bpf link, Linux 6.6+: CAP_BPF + CAP_PERFMON
UPROBE_PERF = "perf_event"     # uprobe PMU: CAP_SYS_ADMIN since Linux 6.16 and stable backports
# errnos of a kernel without uprobe_multi links (unknown attach type, no CONFIG_UPROBES...)
_NOT_IN_KERNEL = (errno.EINVAL, errno.EOPNOTSUPP, 524)  # 524: ENOTSUPP (kernel-internal)
PERF_EVENT_PARANOID = Path("/proc/sys/kernel/perf_event_paranoid")
FIX_PRIVILEGE = ("the bpf() syscall is not permitted: run as root or grant capabilities "
                 "BPF and PERFMON (securityContext.capabilities.add)")


@dataclass(frozen=True)
class UprobeSupport:
    """How `run` attaches uprobes here (mechanism), or why it cannot (error, errno)."""

    mechanism: str | None
    error: str | None = None
    errno: int = 0


@dataclass(frozen=True)
class KernelFeatures:
    kernel_release: str
    btf: bool                      # /sys/kernel/btf/vmlinux readable
    tracefs: str | None            # directory libbpf resolves tracepoints in, if mounted
    missing_btf_tracepoints: tuple[str, ...]  # tp_btf targets our strategies need but BTF lacks
    kprobes: bool                  # perf "kprobe" PMU or tracefs kprobe_events exists
    uprobes: bool                  # an empty uprobe attached to a real library function
    uprobe_mechanism: str | None   # UPROBE_MULTI or UPROBE_PERF: how the OpenSSL probes attach
    uprobe_error: str | None       # why they cannot (HTTPS through OpenSSL is then not traced)
    bpf_allowed: bool              # bpf() usable by this process (privileges)
    ringbuf: bool                  # BPF_MAP_TYPE_RINGBUF creatable
    fentry: bool                   # an empty fentry program loaded and attached
    fentry_error: str | None       # why not, when it could not
    missing_capabilities: tuple[str, ...]  # of REQUIRED_CAPABILITIES (+ SYS_ADMIN when paranoid > 2)
    strategy: str | None           # what `run` would use
    problems: tuple[str, ...]      # one fix per blocking problem, for the user

    @property
    def ok(self) -> bool:
        """`run` can start: some strategy works."""
        return self.strategy is not None

    def render(self) -> str:
        """Human-readable report for `beyla-sidecar check`."""
        yes = {True: "yes", False: "no"}
        rows = [
            ("kernel", self.kernel_release),
            ("BTF", yes[self.btf]),
            ("bpf() allowed", yes[self.bpf_allowed]),
            ("ring buffer", yes[self.ringbuf]),
            ("tracefs", self.tracefs or "not mounted"),
            ("BTF tracepoints", "missing " + ", ".join(self.missing_btf_tracepoints)
             if self.missing_btf_tracepoints else "all present"),
            ("kprobes", yes[self.kprobes]),
            ("fentry", f"no ({self.fentry_error})" if self.fentry_error else yes[self.fentry]),
            ("uprobes", f"yes ({self.uprobe_mechanism})" if self.uprobes else "no (HTTPS not traced)"),
            ("capabilities", "missing " + ", ".join(self.missing_capabilities)
             if self.missing_capabilities else "all needed present"),
            ("attach strategy", self.strategy or "none"),
        ]
        lines = [f"{name:<20} {value}" for name, value in rows]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def tracefs_dir() -> Path | None:
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(path / "events"):  # os.path: False, not an error, when unreadable
            return path
    return None


def _dynamic_probe(kind: str, tracefs: Path | None) -> bool:
    """kprobe support: the perf PMU libbpf attaches through (no tracefs needed), or the
    legacy tracefs control file."""
    return os.path.exists(PMU_DIR / kind / "type") or bool(
        tracefs and os.path.exists(tracefs / f"{kind}_events"))


def _btf_scan(btf_ok: bool) -> tuple[tuple[str, ...], int | None]:
    """Missing tp_btf targets of any strategy, and the BTF id of FENTRY_TEST_FUNC."""
    wanted = sorted({tp for s in STRATEGIES for tp in s.btf_tracepoints})
    if not btf_ok:
        return tuple(wanted), None
    with libbpf.VmlinuxBtf() as btf:
        missing = tuple(tp for tp in wanted if btf.find(f"btf_trace_{tp}", libbpf.BTF_KIND_TYPEDEF) is None)
        return missing, btf.find(FENTRY_TEST_FUNC, libbpf.BTF_KIND_FUNC)


def _fentry(btf_id: int | None, bpf_allowed: bool) -> tuple[bool, str | None]:
    if btf_id is None:
        return False, f"{FENTRY_TEST_FUNC} not in kernel BTF"
    if not bpf_allowed:
        return False, "bpf() not permitted"
    err = libbpf.fentry_attach_errno(btf_id)
    return (True, None) if err == 0 else (False, _errname(err))


def _errname(err: int) -> str:
    return f"{errno.errorcode.get(err, err)}: {os.strerror(err)}"


def uprobe_problem(multi_err: int, perf_err: int) -> str:
    """Why neither uprobe mechanism works, and what to do."""
    no_multi = multi_err in _NOT_IN_KERNEL
    multi = ("this kernel has no uprobe_multi links (Linux 6.6+)" if no_multi
             else f"uprobe_multi link: {_errname(multi_err)}")
    text = (f"HTTPS through OpenSSL is not traced: uprobes cannot attach ({multi}; "
            f"perf uprobe: {_errname(perf_err)})")
    if missing_capabilities(wanted={"PERFMON": REQUIRED_CAPABILITIES["PERFMON"]}):
        return text + ": add capability PERFMON"
    denied = perf_err in (errno.EACCES, errno.EPERM)
    if no_multi and denied and missing_capabilities(wanted={"SYS_ADMIN": SYS_ADMIN}):
        return text + (": without uprobe_multi links, perf uprobes need SYS_ADMIN since Linux 6.16 "
                       "(and stable kernels since July 2025): add capability SYS_ADMIN or use Linux 6.6+")
    return text


def uprobe_support() -> UprobeSupport:
    """Attach an empty uprobe to a real library function (through /proc/<pid>/root, as for a
    pod's libssl) by each mechanism in preference order; the first that works is used."""
    try:
        target = libbpf.uprobe_test_target()
    except (BpfError, OSError) as exc:
        return UprobeSupport(None, f"no library to try uprobes on: {exc}", errno.ENOENT)
    multi = libbpf.uprobe_attach_errno(*target, multi=True)
    if multi == 0:
        return UprobeSupport(UPROBE_MULTI)
    perf = libbpf.uprobe_attach_errno(*target, multi=False)
    if perf == 0:
        return UprobeSupport(UPROBE_PERF)
    return UprobeSupport(None, uprobe_problem(multi, perf), perf)


def usable(strategy: Strategy, f: KernelFeatures) -> bool:
    return (f.btf and f.bpf_allowed and f.ringbuf
            and not set(strategy.btf_tracepoints) & set(f.missing_btf_tracepoints)
            and (not strategy.needs_tracefs or f.tracefs is not None)
            and (not strategy.needs_kprobes or f.kprobes)
            and (not strategy.needs_fentry or f.fentry))


def missing_capabilities(status: str | None = None, paranoid: int | None = None,
                         wanted: dict[str, int] | None = None) -> tuple[str, ...]:
    """Capabilities absent from this process's effective set (/proc/self/status CapEff):
    of `wanted`, by default the required ones."""
    if status is None:
        status = Path("/proc/self/status").read_text()
    if paranoid is None:
        try:
            paranoid = int(PERF_EVENT_PARANOID.read_text())
        except (OSError, ValueError):
            paranoid = 2
    effective = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("CapEff:"))
    if wanted is None:
        wanted = dict(REQUIRED_CAPABILITIES)
        if paranoid > 2:
            wanted["SYS_ADMIN"] = SYS_ADMIN
    return tuple(name for name, bit in wanted.items() if not effective >> bit & 1)


def _problems(f: KernelFeatures) -> tuple[str, ...]:
    out = []
    if f.missing_capabilities:
        out.append("missing capabilities " + ", ".join(f.missing_capabilities)
                   + ": add them to securityContext.capabilities.add (or run as root)")
    if not f.btf:
        out.append(FIX_BTF)
    if not f.bpf_allowed:
        # Without privileges tracefs is unreadable too: its findings would mislead.
        out.append(FIX_PRIVILEGE)
        return tuple(out)
    if not f.ringbuf:
        out.append("BPF ring buffer maps unsupported: Linux 5.8 or newer needed")
    if f.tracefs is None:
        out.append(FIX_TRACEFS)
    if f.missing_btf_tracepoints:
        out.append("kernel lacks tracepoints " + ", ".join(f.missing_btf_tracepoints)
                   + ": the tracepoint strategy needs Linux 6.4 or newer")
    if f.uprobe_error:
        out.append(f.uprobe_error)
    return tuple(out)


def probe_features() -> KernelFeatures:
    """Probe the running kernel (needs the same privileges as `run` for a full answer)."""
    btf_ok = os.access(BTF_PATH, os.R_OK)
    tracefs = tracefs_dir()
    bpf_allowed = libbpf.bpf_syscall_errno() == 0
    missing, fentry_id = _btf_scan(btf_ok)
    fentry_ok, fentry_error = _fentry(fentry_id, bpf_allowed)
    uprobes = uprobe_support() if bpf_allowed else UprobeSupport(None, "bpf() not permitted", errno.EPERM)
    features = KernelFeatures(
        kernel_release=os.uname().release, btf=btf_ok, tracefs=str(tracefs) if tracefs else None,
        missing_btf_tracepoints=missing, kprobes=_dynamic_probe("kprobe", tracefs),
        uprobes=uprobes.mechanism is not None, uprobe_mechanism=uprobes.mechanism,
        uprobe_error=uprobes.error, bpf_allowed=bpf_allowed,
        ringbuf=bpf_allowed and libbpf.map_type_supported(libbpf.BPF_MAP_TYPE_RINGBUF), fentry=fentry_ok, fentry_error=fentry_error,
        missing_capabilities=missing_capabilities(), strategy=None, problems=(),
    )
    chosen = next((s.name for s in STRATEGIES if usable(s, features)), None)
    return replace(features, strategy=chosen, problems=_problems(features))
