"""(9) What the asyncio probes cost an event-loop app (BEYLA_ASYNCIO_TASKS): per Task step, and
per request of a uvicorn + httpx frontend, with the probes on and off.

Per step: apps/task_steps.py runs STEPS steps of one Task in the pod (its CPU time, read by
itself), started before a fresh sidecar so that its _asyncio is attached at the sidecar's start.

The pod and apps of the causality measurement (tests/e2e/apps/causality_apps.py): the frontend
answers GET /f/<id> by calling the backend. Per run, a fresh sidecar (metrics only: the app's side
is what is measured) with BEYLA_ASYNCIO_TASKS=true or false, alternating; 20 keep-alive
connections from outside the pod send the requests. The frontend's CPU time per request
holds the uprobes' whole cost (breakpoint traps on entry and return, the programs); bpf_stats
gives the programs' share (beyla_aio_*) and how many times they ran per request.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from .causality import FRONTENDS, drive, start_backend, start_frontend
from .common import APPS, Context, Pod, Sidecar, bpf_prog_stats, bpf_stats_enabled, cpu_seconds, log
from .results_model import Section
from .sidecar_cost import program_deltas

FRONTEND = "uvicorn"
CONCURRENCY = 20
REQUESTS = 3000
WARM_UP = 200  # the app's pools and the sidecar's probes settle
MODES = {"on": "true", "off": "false"}
STEPS = 300_000


def step_run(pod: Pod, mode: str, steps: int) -> float:
    """CPU µs per Task step of a fresh task_steps.py under a fresh sidecar in `mode`."""
    proc, _ = pod.spawn([sys.executable, str(APPS / "task_steps.py"), str(steps)], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("task_steps.py did not start")
        sidecar = Sidecar(pod, None, env={"BEYLA_ASYNCIO_TASKS": MODES[mode]})
        try:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            seconds = float(proc.stdout.readline())
        finally:
            sidecar.stop()
    finally:
        proc.kill()
        proc.wait()
    return seconds / steps * 1e6


def one_run(pod: Pod, port: int, app_pid: int, mode: str, requests: int, run: int) -> dict:
    sidecar = Sidecar(pod, None, env={"BEYLA_ASYNCIO_TASKS": MODES[mode]})
    try:
        drive(port, [f"w{run}{mode}{i}" for i in range(WARM_UP)], CONCURRENCY)
        cpu0, progs0 = cpu_seconds(app_pid), bpf_prog_stats(sidecar.pid)
        answered = drive(port, [f"r{run}{mode}{i}" for i in range(requests)], CONCURRENCY)
        cpu1, progs = cpu_seconds(app_pid), program_deltas(progs0, bpf_prog_stats(sidecar.pid))
    finally:
        sidecar.stop()
    aio = {name: p for name, p in progs.items() if name.startswith("beyla_aio")}
    n = max(1, answered)
    return {"mode": mode, "answered": answered, "requests": requests,
            "app_cpu_us": (cpu1 - cpu0) / n * 1e6,
            "aio_probe_us": sum(p["ns"] for p in aio.values()) / n / 1000,
            "aio_runs": sum(p["runs"] for p in aio.values()) / n,
            "all_probe_us": sum(p["ns"] for p in progs.values()) / n / 1000}


def measure(ctx: Context) -> Section:
    s = ctx.settings
    runs = 1 if s.quick else max(3, s.runs)
    requests = 500 if s.quick else REQUESTS
    steps = STEPS // 10 if s.quick else STEPS
    sec = Section("asyncio_cost", "9. The asyncio probes' cost to an event-loop app",
                  f"{FRONTENDS[FRONTEND]} frontend calling a threaded backend in one pod, {requests} requests "
                  f"over {CONCURRENCY} keep-alive connections per run after {WARM_UP} to warm up; a fresh "
                  f"metrics-only sidecar per run with BEYLA_ASYNCIO_TASKS on or off, alternating; {runs} "
                  "run(s) each. App CPU: the frontend's CPU time per request (the uprobes' traps "
                  "included); probe time: bpf_stats of beyla_aio_* per request. Per step: task_steps.py, "
                  f"{steps} steps of one Task, its own CPU time.")
    per: dict[str, list[dict]] = {m: [] for m in MODES}
    per_step: dict[str, list[float]] = {m: [] for m in MODES}
    pod = Pod("asyncio-cost", s.tmp)
    try:
        for run in range(runs):
            for mode in (("on", "off") if run % 2 == 0 else ("off", "on")):
                per_step[mode].append(step_run(pod, mode, steps))
                log(f"run {run} asyncio {mode}: {per_step[mode][-1]:.2f} µs per Task step")
        port, pid = start_frontend(pod, FRONTEND, start_backend(pod))
        with bpf_stats_enabled():
            for run in range(runs):
                for mode in (("on", "off") if run % 2 == 0 else ("off", "on")):
                    r = one_run(pod, port, pid, mode, requests, run)
                    per[mode].append(r)
                    log(f"run {run} asyncio {mode}: app {r['app_cpu_us']:.1f} µs/request, aio probes "
                        f"{r['aio_probe_us']:.2f} µs in {r['aio_runs']:.1f} runs, answered {r['answered']}")
    finally:
        pod.close()
    for mode, values in per_step.items():
        sec.add(f"step_us.{mode}", f"CPU per Task step, asyncio probes {mode}", "µs", values)
    for mode, rs in per.items():
        sec.add(f"app_cpu_us.{mode}", f"Frontend CPU per request, asyncio probes {mode}", "µs",
                [r["app_cpu_us"] for r in rs])
    sec.add("aio_probe_us", "Probe time of the asyncio programs per request", "µs",
            [r["aio_probe_us"] for r in per["on"]])
    sec.add("aio_runs", "Asyncio program runs per request", "runs", [r["aio_runs"] for r in per["on"]])
    step_on, step_off = (statistics.median(per_step[m]) for m in ("on", "off"))
    on, off = (statistics.median(r["app_cpu_us"] for r in per[m]) for m in ("on", "off"))
    sec.notes.append(f"CPU per Task step, on − off (medians): {step_on - step_off:+.2f} µs "
                     f"(×{step_on / step_off:.2f}); "
                     f"frontend CPU per request, on / off (medians): ×{on / off:.3f} ({on - off:+.1f} µs).")
    sec.raw = {"requests": per, "steps": per_step}
    return sec
