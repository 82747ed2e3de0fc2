"""(1) Overhead on the instrumented app: nginx and a Python server in a pod, loaded by wrk
from outside over keep-alive connections, paced and at full speed, with and without the
sidecar, alternating. The app's own CPU per request is utime+stime over each wrk run: for
nginx, of its single worker, pinned to cpu 1 with wrk on cpu 0 (issue 9's method)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .common import App, Context, Pod, children_of, cpu_seconds, log, ratio, start_app, warm_up, wrk
from .results_model import Section, at_least, at_most

# Paced rates: well inside what each app serves alone (nginx ~50 k/s, Python ~10 k/s here).
FIXED_RATE = {"nginx": 5000, "python": 1000}
CONNECTIONS = 16
VARIANTS = ("without", "with")
NGINX_CPU, WRK_CPU = 1, 0


def app_process(app: App) -> int:
    """The pid whose CPU is the app's: nginx's one worker, pinned to NGINX_CPU (its master only
    waits), or the Python server's process."""
    if app.name != "nginx":
        return app.pid
    deadline = time.monotonic() + 10
    while not children_of(app.pid):  # the master listens before it forks the worker
        if time.monotonic() > deadline:
            raise RuntimeError("nginx started no worker")
        time.sleep(0.01)
    worker = children_of(app.pid)[0]
    os.sched_setaffinity(worker, {NGINX_CPU})
    return worker


def timed_wrk(app: App, pid: int, duration: float, tmp: Path, rate: float | None = None) -> dict:
    """One wrk run (pinned to WRK_CPU for nginx) and the app's CPU µs per request over it."""
    cpu0 = cpu_seconds(pid)
    result = wrk(app.url, duration, CONNECTIONS, tmp, rate=rate, cpu=WRK_CPU if app.name == "nginx" else None)
    return {**vars(result), "cpu_us": (cpu_seconds(pid) - cpu0) / max(1, result.requests) * 1e6}


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "app_overhead", "1. Overhead on the instrumented app",
        "Each app runs alone in a simulated pod (its own PID namespace). wrk (1 thread, "
        f"{CONNECTIONS} keep-alive connections, outside the pod; pinned to cpu {WRK_CPU} for nginx, whose single "
        f"worker is pinned to cpu {NGINX_CPU}) loads it for {s.duration:g} s paced at a "
        "fixed rate (nginx " + f"{FIXED_RATE['nginx']:,}, Python {FIXED_RATE['python']:,} req/s; "
        "wrk's delay() hook with a monotonic-clock schedule, see lua/paced.lua) and then at full speed. "
        "Runs alternate without / with the sidecar (started fresh for each 'with' run, OTLP/gRPC to "
        "a receiver outside the pod); each ratio is with/without within the same run pair. "
        "Latency: wrk's, from the request's write to the end of its response. App CPU per request: utime+stime of "
        "nginx's worker (of the whole Python process) over the wrk run, divided by the requests wrk completed; "
        "it includes the probes' run time in the app's syscalls.")
    raw: dict = {}
    for app_kind in ("nginx", "python"):
        rate = FIXED_RATE[app_kind]
        runs: dict = {v: [] for v in VARIANTS}
        pod = Pod(f"app-{app_kind}", s.tmp)
        try:
            app = start_app(app_kind, pod, s.tmp)
            pid = app_process(app)
            warm_up(app.url)
            for run, variant in _order(s.runs):
                sidecar = ctx.sidecar(pod) if variant == "with" else None
                try:
                    warm_up(app.url)
                    fixed = timed_wrk(app, pid, s.duration, s.tmp, rate=rate)
                    full = timed_wrk(app, pid, s.duration, s.tmp)
                finally:
                    stopped = sidecar.stop() if sidecar else {}
                runs[variant].append({"fixed": fixed, "full": full,
                                      "sidecar_stopped": {k: stopped.get(k) for k in ("records", "exchanges")}})
                log(f"{app_kind} run {run} {variant}: fixed {fixed['rps']:,.0f} req/s p99 {fixed['p99_us']} us "
                    f"{fixed['cpu_us']:.1f} us CPU/req; full {full['rps']:,.0f} req/s p99 {full['p99_us']} us "
                    f"{full['cpu_us']:.1f} us CPU/req")
                time.sleep(0.2)
        finally:
            pod.close()
        raw[app_kind] = runs
        label = "nginx" if app_kind == "nginx" else "Python http.server"
        for mode, mode_label in (("fixed", f"{rate:,} req/s"), ("full", "full speed")):
            pairs = list(zip(runs["without"], runs["with"]))
            thr = [ratio(w[mode]["rps"], b[mode]["rps"]) for b, w in pairs]
            p50 = [ratio(w[mode]["p50_us"], b[mode]["p50_us"]) for b, w in pairs]
            p99 = [ratio(w[mode]["p99_us"], b[mode]["p99_us"]) for b, w in pairs]
            thr_goal = at_least(0.97) if (app_kind == "nginx" and mode == "full") else None
            sec.add(f"{app_kind}.{mode}.throughput_ratio", f"{label}, {mode_label}: throughput with/without",
                    "ratio", thr, thr_goal)
            sec.add(f"{app_kind}.{mode}.p50_ratio", f"{label}, {mode_label}: p50 latency with/without", "ratio", p50)
            sec.add(f"{app_kind}.{mode}.p99_ratio", f"{label}, {mode_label}: p99 latency with/without", "ratio", p99,
                    at_most(1.05, "<= 1.05"))
            cpu_goal = at_most(1.10, "<= ×1.10") if (app_kind == "nginx" and mode == "full") else None
            sec.add(f"{app_kind}.{mode}.cpu_ratio", f"{label}, {mode_label}: app's own CPU per request with/without",
                    "ratio", [ratio(w[mode]["cpu_us"], b[mode]["cpu_us"]) for b, w in pairs], cpu_goal)
            for variant in VARIANTS:
                sec.add(f"{app_kind}.{mode}.{variant}.rps", f"{label}, {mode_label}: req/s {variant} sidecar",
                        "req/s", [r[mode]["rps"] for r in runs[variant]])
                sec.add(f"{app_kind}.{mode}.{variant}.p99_us", f"{label}, {mode_label}: p99 {variant} sidecar",
                        "µs", [r[mode]["p99_us"] for r in runs[variant]])
                sec.add(f"{app_kind}.{mode}.{variant}.cpu_us", f"{label}, {mode_label}: app's CPU per request "
                        f"{variant} sidecar", "µs", [r[mode]["cpu_us"] for r in runs[variant]])
    sec.raw = raw
    return sec


def _order(runs: int):
    """without, with | with, without | ... : alternating pairs."""
    for run in range(runs):
        for variant in (VARIANTS if run % 2 == 0 else VARIANTS[::-1]):
            yield run, variant
