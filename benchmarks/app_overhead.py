"""(1) Overhead on the instrumented app: nginx and a Python server in a pod, loaded by wrk
from outside over keep-alive connections, paced and at full speed, with and without the
sidecar, alternating; for nginx also with the sidecar's network metrics on (issue 10). The
app's own CPU per request is CPU time over each wrk run: for nginx, of its single worker,
pinned to cpu 1 with wrk on cpu 0 (issue 9's method); the sidecar's, over the same run until it
has caught up.

The pod shares the host's network namespace and wrk talks to nginx over loopback, which the
network metrics' packet filter sees but does not count: what nginx pays there is the packet
socket's presence (a clone of each packet sent, the filter's early return for lo), not the
counting a pod's eth0 traffic gets (benchmarks/netflow_cost.py measures that per packet). The
flows the sidecar did count in those runs (the host's other traffic) are reported by interface."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

from .common import App, Context, Pod, Sidecar, children_of, cpu_seconds, log, ratio, start_app, warm_up, wrk
from .results_model import Section, at_least, at_most
from .sidecar_cost import IDLE_CORES

# Paced rates: well inside what each app serves alone (nginx ~50 k/s, Python ~10 k/s here).
FIXED_RATE = {"nginx": 5000, "python": 1000}
CONNECTIONS = 16
VARIANTS = ("without", "with")
NET = "with_net"  # nginx only: the sidecar with the network metrics on
# A 1 s flush so that the flows of a run are in the scrape at its end (a flush costs ~30 µs per flow).
NET_ENV = {"BEYLA_NETWORK_METRICS": "true", "BEYLA_NETWORK_FLUSH_INTERVAL": "1s"}
VARIANT_LABELS = {"without": "without sidecar", "with": "with sidecar", NET: "with sidecar + network metrics"}
NGINX_CPU, WRK_CPU = 1, 0
IDLE_WINDOW = 0.25  # seconds of at most IDLE_CORES that tell the sidecar has caught up


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


def timed_wrk(app: App, pid: int, duration: float, tmp: Path, rate: float | None = None,
              sidecar: Sidecar | None = None) -> dict:
    """One wrk run (pinned to WRK_CPU for nginx): the app's CPU µs per request over it, and the
    sidecar's from its start until the sidecar has caught up (exported the run's spans)."""
    cpu0, side0 = cpu_seconds(pid), sidecar.cpu_seconds() if sidecar else 0.0
    result = wrk(app.url, duration, CONNECTIONS, tmp, rate=rate, cpu=WRK_CPU if app.name == "nginx" else None)
    cpu1, n = cpu_seconds(pid), max(1, result.requests)
    side_us = None if sidecar is None else (cpu_until_idle(sidecar.pid) - side0) / n * 1e6
    return {**vars(result), "cpu_us": (cpu1 - cpu0) / n * 1e6, "sidecar_cpu_us": side_us}


def cpu_until_idle(pid: int, timeout: float = 20.0) -> float:
    """pid's CPU seconds when it went idle (the start of the first IDLE_WINDOW in which it used at
    most IDLE_CORES), leaving the idle window itself out."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW)
        after = cpu_seconds(pid)
        if after - before <= IDLE_CORES * IDLE_WINDOW:
            break
        before = after
    return before


def flow_packets(sidecar: Sidecar) -> dict[str, float]:
    """Packets in the sidecar's flow metrics so far, by interface (its Prometheus endpoint)."""
    if sidecar.metrics_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{sidecar.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^beyla_network_flow_packets_total\{(.*)\} (\S+)$', text, re.M):
        iface = (re.search(r'iface="([^"]*)"', m[1]) or [None, "?"])[1]
        out[iface] = out.get(iface, 0.0) + float(m[2])
    return out


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
        "Latency: wrk's, from the request's write to the end of its response. App CPU per request: CPU time of "
        "nginx's worker (of the whole Python process) over the wrk run, divided by the requests wrk completed; "
        "it includes the probes' run time in the app's syscalls. Sidecar CPU per request: CPU time of all "
        "its threads from the start of the wrk run until its CPU use fell below 0.05 cores (spans exported). "
        f"nginx also runs with the sidecar's network metrics on ({', '.join(f'{k}={v}' for k, v in NET_ENV.items())}), "
        "in the same alternation. After each nginx run with the sidecar, nginx runs once more without it, "
        "paced at the rate it reached at full speed with it: the same throughput, so that its CPU per request "
        "compares without the batching a faster run gets (more requests per wake-up). "
        "The pod shares the host's network namespace and wrk reaches nginx over loopback, which the packet "
        "filter sees (each packet sent is cloned for the packet socket and the "
        "filter returns at its loopback check) but does not count: this is the cost of the feature's "
        "presence, not of counting nginx's packets (benchmarks/netflow_cost.py: 0.25-0.54 µs per counted "
        "packet); the flows the sidecar counted meanwhile are the host's other traffic.")
    raw: dict = {}
    seen: list[dict[str, float]] = []  # flows counted by interface, each network-metrics run
    for app_kind in ("nginx", "python"):
        rate = FIXED_RATE[app_kind]
        variants = (*VARIANTS, NET) if app_kind == "nginx" else VARIANTS
        runs: dict = {v: [] for v in variants}
        pod = Pod(f"app-{app_kind}", s.tmp)
        try:
            app = start_app(app_kind, pod, s.tmp)
            pid = app_process(app)
            warm_up(app.url)
            for run, variant in _order(s.runs, variants):
                sidecar = None if variant == "without" else ctx.sidecar(pod, NET_ENV if variant == NET else None)
                try:
                    warm_up(app.url)
                    fixed = timed_wrk(app, pid, s.duration, s.tmp, rate=rate, sidecar=sidecar)
                    full = timed_wrk(app, pid, s.duration, s.tmp, sidecar=sidecar)
                    if variant == NET and sidecar is not None:
                        seen.append(flow_packets(sidecar))
                finally:
                    stopped = sidecar.stop() if sidecar else {}
                entry = {"fixed": fixed, "full": full,
                         "sidecar_stopped": {k: stopped.get(k) for k in ("records", "exchanges")}}
                if variant == "with" and app_kind == "nginx":
                    # nginx alone again, paced at the rate it reached at full speed with the sidecar
                    entry["same_rate"] = timed_wrk(app, pid, s.duration, s.tmp, rate=full["rps"])
                runs[variant].append(entry)
                log(f"{app_kind} run {run} {variant}: fixed {fixed['rps']:,.0f} req/s p99 {fixed['p99_us']} us "
                    f"{fixed['cpu_us']:.1f} us CPU/req; full {full['rps']:,.0f} req/s p99 {full['p99_us']} us "
                    f"{full['cpu_us']:.1f} us CPU/req" + ("" if sidecar is None else
                    f"; sidecar {fixed['sidecar_cpu_us']:.1f} / {full['sidecar_cpu_us']:.1f} us CPU/req"))
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
            if mode == "full" and app_kind == "nginx":
                sec.add(f"{app_kind}.{mode}.same_rate_cpu_ratio", f"{label}, {mode_label}: app's own CPU per "
                        "request with/without at the rate reached with the sidecar", "ratio",
                        [ratio(w["full"]["cpu_us"], w["same_rate"]["cpu_us"]) for w in runs["with"]])
                sec.add(f"{app_kind}.{mode}.same_rate_cpu_us", f"{label}, {mode_label}: app's CPU per request "
                        "without sidecar, paced at the rate reached with it", "µs",
                        [w["same_rate"]["cpu_us"] for w in runs["with"]])
            if NET in runs:
                sec.add(f"{app_kind}.{mode}.net_cpu_ratio", f"{label}, {mode_label}: app's own CPU per request, "
                        "network metrics on/off", "ratio",
                        [ratio(n[mode]["cpu_us"], w[mode]["cpu_us"]) for w, n in zip(runs["with"], runs[NET])])
            for variant in variants:
                at = VARIANT_LABELS[variant]
                sec.add(f"{app_kind}.{mode}.{variant}.rps", f"{label}, {mode_label}: req/s {at}",
                        "req/s", [r[mode]["rps"] for r in runs[variant]])
                sec.add(f"{app_kind}.{mode}.{variant}.p99_us", f"{label}, {mode_label}: p99 {at}",
                        "µs", [r[mode]["p99_us"] for r in runs[variant]])
                sec.add(f"{app_kind}.{mode}.{variant}.cpu_us", f"{label}, {mode_label}: app's CPU per request "
                        f"{at}", "µs", [r[mode]["cpu_us"] for r in runs[variant]])
                if variant != "without":
                    sec.add(f"{app_kind}.{mode}.{variant}.sidecar_cpu_us", f"{label}, {mode_label}: sidecar's CPU "
                            f"per request {at}", "µs", [r[mode]["sidecar_cpu_us"] for r in runs[variant]])
    if seen:
        counted = ", ".join(f"{iface} {sum(s.get(iface, 0) for s in seen) / len(seen):,.0f}"
                            for iface in sorted({i for s in seen for i in s})) or "none at all"
        sec.notes.append(f"Network metrics runs: packets in the flow metrics per run, by interface: {counted}. "
                         "nginx's loopback traffic is not counted; anything else is the host's own traffic, which "
                         "this pod's sidecar sees because the pod shares the host's network namespace.")
    raw["network_flows_seen"] = seen
    sec.raw = raw
    return sec


def _order(runs: int, variants: tuple[str, ...]):
    """without, with[, with_net] | the reverse | ... : alternating groups."""
    for run in range(runs):
        for variant in (variants if run % 2 == 0 else variants[::-1]):
            yield run, variant
