"""`make bench`: run every measurement, write benchmarks/results/<time>.{md,json} and latest.*.

    python -m benchmarks.run [--quick] [--only app_overhead,sidecar_cost,...]

BENCH_QUICK=1 is the same as --quick: 2 runs per figure and short loads, to check the
harness (figures from it are not meant to be quoted). A full run takes about 22 minutes on
2 cores. Needs root (BPF, PID namespaces), wrk, nginx, bpftool, redis-server and the built probes.
Traffic goes to 127.0.0.1 only; every load and wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import (agent, app_overhead, asyncio_cost, causality, grpc_cost, node_cost, profile, redis_cost, sidecar_cost,
               startup)
from .common import Context, Receiver, Settings, log
from .results_model import Section, as_json, markdown

MEASUREMENTS = {
    "app_overhead": app_overhead.measure,
    "sidecar_cost": sidecar_cost.measure,
    "node_cost": node_cost.measure,
    "agent": agent.measure,
    "startup": startup.measure,
    "profile": profile.measure,
    "redis_cost": redis_cost.measure,
    "causality": causality.measure,
    "asyncio_cost": asyncio_cost.measure,
    "grpc_cost": grpc_cost.measure,
}
RESULTS = Path(__file__).resolve().parent / "results"


def preflight() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("run as root (BPF, PID namespaces)")
    for tool in ("wrk", "nginx", "bpftool", "unshare", "nsenter", "dd", "taskset"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (make test-deps installs it)")
    check = subprocess.run([sys.executable, "-m", "beyla_sidecar.cli", "check"], capture_output=True, text=True,
                           timeout=60)
    if check.returncode != 0:
        problems.append("beyla-sidecar check failed:\n" + check.stdout + check.stderr)
    return problems


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=RESULTS.parent.parent, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "beyla_sidecar", "probes"],
                               capture_output=True, text=True, cwd=RESULTS.parent.parent, timeout=10).stdout.strip()
        return rev + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
                        help="short runs to check the harness (also BENCH_QUICK=1)")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                        help="comma-separated subset of: " + ", ".join(MEASUREMENTS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.only.split(",") if m.strip()] or list(MEASUREMENTS)
    unknown = [m for m in chosen if m not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; known: {', '.join(MEASUREMENTS)}")
    problems = preflight()
    if problems:
        for p in problems:
            log(p)
        return 2

    settings = Settings.make(args.quick)
    started = time.monotonic()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    receiver = Receiver()
    ctx = Context(settings, receiver)
    sections: list[Section] = []
    try:
        for name in chosen:
            log(f"--- {name} ({'quick' if settings.quick else 'full'})")
            t0 = time.monotonic()
            try:
                sec = MEASUREMENTS[name](ctx)
            except Exception as exc:  # one failed measurement must not lose the others
                log(f"{name} failed: {exc!r}")
                sec = Section(name, name, "", error=f"{type(exc).__name__}: {exc}"[:2000])
            sec.seconds = time.monotonic() - t0
            sections.append(sec)
            log(f"--- {name} done in {sec.seconds:.0f} s")
    finally:
        receiver.close()
        shutil.rmtree(settings.tmp, ignore_errors=True)

    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "kernel": platform.release(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "git": git_rev(), "quick": settings.quick,
        "runs": settings.runs, "duration_s": settings.duration, "elapsed_s": time.monotonic() - started,
        "load_before": load_before, "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "measurements": chosen,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if settings.quick else "")
    text = markdown(sections, meta)
    data = json.dumps(as_json(sections, meta), indent=1, default=str)
    for name in (stamp, "latest"):
        (args.out / f"{name}.md").write_text(text + "\n")
        (args.out / f"{name}.json").write_text(data + "\n")
    print(text)
    log(f"results: {args.out / (stamp + '.md')} and .json ({meta['elapsed_s']:.0f} s)")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
