"""(1) Overhead on the instrumented app: nginx and a Python server in a pod, loaded by wrk
from outside over keep-alive connections, paced and at full speed, with and without the
sidecar, alternating."""

from __future__ import annotations

import time

from .common import Context, Pod, log, ratio, start_app, warm_up, wrk
from .results_model import Section, at_least, at_most

# Paced rates: well inside what each app serves alone (nginx ~50 k/s, Python ~10 k/s here).
FIXED_RATE = {"nginx": 5000, "python": 1000}
CONNECTIONS = 16
VARIANTS = ("without", "with")


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "app_overhead", "1. Overhead on the instrumented app",
        "Each app runs alone in a simulated pod (its own PID namespace). wrk (1 thread, "
        f"{CONNECTIONS} keep-alive connections, outside the pod) loads it for {s.duration:g} s paced at a "
        "fixed rate (nginx " + f"{FIXED_RATE['nginx']:,}, Python {FIXED_RATE['python']:,} req/s; "
        "wrk's delay() hook with a monotonic-clock schedule, see lua/paced.lua) and then at full speed. "
        "Runs alternate without / with the sidecar (started fresh for each 'with' run, OTLP/gRPC to "
        "a receiver outside the pod); each ratio is with/without within the same run pair. "
        "Latency: wrk's, from the request's write to the end of its response.")
    raw: dict = {}
    for app_kind in ("nginx", "python"):
        rate = FIXED_RATE[app_kind]
        runs: dict = {v: [] for v in VARIANTS}
        pod = Pod(f"app-{app_kind}", s.tmp)
        try:
            app = start_app(app_kind, pod, s.tmp)
            warm_up(app.url)
            for run, variant in _order(s.runs):
                sidecar = ctx.sidecar(pod) if variant == "with" else None
                try:
                    warm_up(app.url)
                    fixed = wrk(app.url, s.duration, CONNECTIONS, s.tmp, rate=rate)
                    full = wrk(app.url, s.duration, CONNECTIONS, s.tmp)
                finally:
                    stopped = sidecar.stop() if sidecar else {}
                runs[variant].append({"fixed": vars(fixed), "full": vars(full),
                                      "sidecar_stopped": {k: stopped.get(k) for k in ("records", "exchanges")}})
                log(f"{app_kind} run {run} {variant}: fixed {fixed.rps:,.0f} req/s p99 {fixed.p99_us} us; "
                    f"full {full.rps:,.0f} req/s p99 {full.p99_us} us")
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
            for variant in VARIANTS:
                sec.add(f"{app_kind}.{mode}.{variant}.rps", f"{label}, {mode_label}: req/s {variant} sidecar",
                        "req/s", [r[mode]["rps"] for r in runs[variant]])
                sec.add(f"{app_kind}.{mode}.{variant}.p99_us", f"{label}, {mode_label}: p99 {variant} sidecar",
                        "µs", [r[mode]["p99_us"] for r in runs[variant]])
    sec.raw = raw
    return sec


def _order(runs: int):
    """without, with | with, without | ... : alternating pairs."""
    for run in range(runs):
        for variant in (VARIANTS if run % 2 == 0 else VARIANTS[::-1]):
            yield run, variant
