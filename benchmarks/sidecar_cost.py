"""(2) Cost of the sidecar itself: CPU per 1 000 requests and peak RSS at 1 k, 5 k, 10 k and
the highest sustainable request rate; events lost and the rate at which loss begins.

Events lost are counted two ways, since the sidecar has no self-metrics endpoint yet:
the kernel's own counter (`ringbuf_drops` of the per-CPU array `counters`, read with bpftool
from the map the sidecar holds) and end to end: requests wrk completed minus server spans
the OTLP receiver got after the sidecar flushed on SIGTERM (any loss: ring buffer, parser,
the SDK batch queue, the exporter).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .common import Context, Pod, bpf_prog_stats, bpf_stats_enabled, cpu_limit, log, start_app, warm_up, wrk
from .results_model import Section, at_most

CONNECTIONS = 32
BASE_RATES = (1000, 5000, 10000)
RAMP = (2500, 5000, 7500, 10000, 12500, 15000, 20000, 25000, 30000, 40000)
SUSTAINED = 0.97  # achieved/offered rate below which a rate is not sustained
MAX_LAG = 1.0     # seconds the sidecar may still be exporting after the load ends


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the sidecar's threads: 'main' (ring buffer, parsing, spans) and
    'other' (the SDK's batch export thread and gRPC's threads)."""
    out = {"main": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            f = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out["main" if int(task.name) == pid else "other"] += (int(f[11]) + int(f[12])) / 100
    return out


WARM_UP = 50
CPU_LIMIT = 0.5  # cores: the webhook's default sidecar CPU limit (BEYLA_WEBHOOK_SIDECAR_CPU_LIMIT=500m)


def one_run(ctx: Context, pod: Pod, url: str, rate: int, limit: float | None = None) -> dict:
    s = ctx.settings
    rcv = ctx.receiver
    sidecar = ctx.sidecar(pod)
    limited = contextlib.nullcontext(False) if limit is None else cpu_limit(sidecar.pid, limit, f"beyla-bench-{sidecar.pid}")
    try:
        with limited as capped:
            spans0 = rcv.snapshot()[1]
            warm_up(url, WARM_UP)
            time.sleep(0.3)
            cpu0, threads0, progs0 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid), bpf_prog_stats(sidecar.pid)
            result = wrk(url, max(2.0, s.duration - 1), CONNECTIONS, s.tmp, rate=rate)
            load_end, cpu_load = time.monotonic(), sidecar.cpu_seconds()
            expected = WARM_UP + result.requests
            # Let the sidecar catch up (full batches of 512 spans leave at once) before reading CPU.
            last_arrival = rcv.wait_quiet(quiet=1.0, timeout=20.0, at_least=spans0 + expected - 600)
            cpu1, threads1, progs1 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid), bpf_prog_stats(sidecar.pid)
            rss = sidecar.peak_rss_mb()
            counters = sidecar.bpf_counters() or {}
            selfm = sidecar.self_metrics()
    finally:
        stopped = sidecar.stop()
    rcv.wait_quiet(quiet=0.5, timeout=10.0)
    spans = rcv.snapshot()[1] - spans0
    exchanges = stopped.get("exchanges")
    if selfm:  # the sidecar's own counters, when it has the endpoint (read before the final flush)
        exchanges = exchanges if exchanges is not None else selfm.get("beyla_sidecar_requests_completed_total")
        counters.setdefault("ringbuf_drops", int(selfm.get("beyla_sidecar_events_lost_total", 0)))
    bpf_ns = sum(p["run_time_ns"] - progs0.get(name, {}).get("run_time_ns", 0) for name, p in progs1.items())
    bpf_runs = sum(p["run_cnt"] - progs0.get(name, {}).get("run_cnt", 0) for name, p in progs1.items())
    n = max(1, result.requests)
    return {
        "rate": rate, "cpu_limit": limit if capped else None, "achieved_rps": result.rps,
        "requests": result.requests, "errors": result.errors, "expected_spans": expected, "server_spans": spans,
        "lost": max(0, expected - spans),
        "lost_before_exchange": None if exchanges is None else max(0, expected - exchanges),
        "lost_after_exchange": None if exchanges is None else max(0, exchanges - spans),
        "ringbuf_drops": counters.get("ringbuf_drops"), "read_fails": counters.get("read_fails"),
        "cpu_s_per_1000": (cpu1 - cpu0) / n * 1000,
        "cpu_us_main": (threads1["main"] - threads0["main"]) / n * 1e6,
        "cpu_us_export": (threads1["other"] - threads0["other"]) / n * 1e6,
        "sidecar_cores": (cpu_load - cpu0) / result.seconds,  # during the load only
        "catch_up_s": max(0.0, last_arrival - load_end),
        "peak_rss_mb": rss, "bpf_us_per_request": bpf_ns / n / 1000, "bpf_runs_per_request": bpf_runs / n,
        "p99_us": result.p99_us, "records": stopped.get("records"), "exchanges": exchanges,
        "self_metrics": selfm,
        "spans_dropped_queue": None if not selfm else selfm.get("beyla_sidecar_spans_dropped_total"),
        "bpf_ns_per_request_by_program": {
            name: round((p["run_time_ns"] - progs0.get(name, {}).get("run_time_ns", 0)) / n)
            for name, p in progs1.items()},
        "bpf_runs_per_request_by_program": {
            name: round((p["run_cnt"] - progs0.get(name, {}).get("run_cnt", 0)) / n, 2)
            for name, p in progs1.items()},
    }


def sustained(r: dict) -> bool:
    """No loss, the offered rate achieved, and the sidecar not behind at the end of the load
    (a backlog only hides in the ring buffer for a while)."""
    return (r["lost"] == 0 and not r["ringbuf_drops"] and r["achieved_rps"] >= SUSTAINED * r["rate"]
            and r["catch_up_s"] <= MAX_LAG)


def ramp(ctx: Context, pod: Pod, url: str, start: int, limit: float | None = None) -> list[dict]:
    """One run per rate from `start`: up while sustained, else down until sustained. Past the
    first rate not sustained on the way up, a few more steps up look for where loss begins
    (stopping when the achieved rate no longer grows: the machine is saturated)."""
    runs: list[dict] = []
    idx, direction, extra = RAMP.index(start), 0, 0
    while 0 <= idx < len(RAMP):
        r = one_run(ctx, pod, url, RAMP[idx], limit)
        runs.append(r)
        ok = sustained(r)
        log(f"ramp{'' if limit is None else f' (CPU limit {limit:g})'} {RAMP[idx]:,} req/s: achieved "
            f"{r['achieved_rps']:,.0f}, lost {r['lost']} (kernel drops {r['ringbuf_drops']}, before exchange "
            f"{r['lost_before_exchange']}, after {r['lost_after_exchange']}), sidecar {r['sidecar_cores']:.2f} "
            f"cores, {r['catch_up_s']:.1f} s behind -> {'sustained' if ok else 'NOT sustained'}")
        lossy = bool(r["lost"] or r["ringbuf_drops"])
        if direction >= 0 and not ok and any(sustained(x) for x in runs):
            # above the highest sustained rate: go on up until loss shows or throughput stops growing
            grew = len(runs) < 2 or r["achieved_rps"] > 1.05 * runs[-2]["achieved_rps"]
            extra += 1
            if lossy or not grew or extra > 3:
                break
            idx += 1
            direction = 1
            continue
        step = 1 if ok else -1
        if direction and step != direction:
            break
        direction, idx = step, idx + step
    return runs


def ramp_summary(runs: list[dict]) -> tuple[int | None, int | None, int | None]:
    """(highest sustained rate, first rate above it not sustained, first rate above it with loss)."""
    passing = [r["rate"] for r in runs if sustained(r)]
    top = max(passing) if passing else 0
    failing = [r["rate"] for r in runs if not sustained(r) and r["rate"] > top]
    lossy = [r["rate"] for r in runs if (r["lost"] or r["ringbuf_drops"]) and r["rate"] > top]
    return (top or None), min(failing, default=None), min(lossy, default=None)


def ramp_note(r: dict) -> str:
    queue = "" if r.get("spans_dropped_queue") is None else f", span queue drops {r['spans_dropped_queue']:.0f}"
    return (f"{r['rate']:,} req/s offered: achieved {r['achieved_rps']:,.0f}, lost {r['lost']} of "
            f"{r['expected_spans']:,} (kernel ring-buffer drops {r['ringbuf_drops']}, lost before the tracker's "
            f"exchange {r['lost_before_exchange']}, after it {r['lost_after_exchange']}{queue}), sidecar "
            f"{r['sidecar_cores']:.2f} cores, {r['catch_up_s']:.1f} s behind at the end, "
            f"{r['cpu_s_per_1000'] * 1000:.0f} µs CPU/req.")


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "sidecar_cost", "2. Cost of the sidecar",
        f"nginx in a pod, wrk paced at each rate for {max(2.0, s.duration - 1):g} s ({CONNECTIONS} keep-alive connections); "
        "a fresh sidecar per run (so its peak RSS, VmHWM, belongs to that rate), OTLP/gRPC export to a receiver "
        "outside the pod. CPU: utime+stime of all the sidecar's threads from the start of the load until the "
        "receiver got the spans (export included), per request; split into the main thread (ring buffer, "
        "decoding, HTTP parsing, span building) and the other threads (SDK batch export: protobuf encoding, "
        "gRPC). Probe time: kernel.bpf_stats_enabled run time of the sidecar's BPF programs, spent in the "
        "app's and wrk's threads, not the sidecar's. Lost: requests completed minus server spans received "
        "after the sidecar's final flush, and the kernel ring-buffer drop counter. First a ramp (one run per "
        f"rate, from 10 000 req/s up or down) finds the highest rate with no loss, >= {SUSTAINED:.0%} "
        f"of the offered rate achieved and the sidecar at most {MAX_LAG:g} s behind when the load stops; then the "
        "runs per rate, interleaved; last a ramp with the sidecar capped at the webhook's default CPU limit.")
    pod = Pod("sidecar-cost", s.tmp)
    try:
        app = start_app("nginx", pod, s.tmp)
        warm_up(app.url)
        with bpf_stats_enabled():
            free_ramp = ramp(ctx, pod, app.url, 10000)
            highest, not_sustained, loss_begins = ramp_summary(free_ramp)
            rates = list(dict.fromkeys([*BASE_RATES, *([highest] if highest else [])]))
            per_rate: dict[int, list[dict]] = {r: [] for r in rates}
            for run in range(s.runs):
                order = rates if run % 2 == 0 else rates[::-1]
                for rate in order:
                    r = one_run(ctx, pod, app.url, rate)
                    per_rate[rate].append(r)
                    log(f"run {run} {rate:,} req/s: {r['cpu_s_per_1000']:.3f} CPU s/1000 req "
                        f"(main {r['cpu_us_main']:.0f} + export {r['cpu_us_export']:.0f} µs/req), "
                        f"RSS {r['peak_rss_mb']:.0f} MB, lost {r['lost']}, probes {r['bpf_us_per_request']:.2f} µs/req")
            limited_ramp = ramp(ctx, pod, app.url, 5000, CPU_LIMIT)
            lim_highest, _, lim_loss = ramp_summary(limited_ramp)
    finally:
        pod.close()

    for rate in rates:
        runs = per_rate[rate]
        name = f"{rate:,} req/s" + (" (highest sustainable)" if rate == highest else "")
        sec.add(f"cpu_per_1000.{rate}", f"CPU per 1 000 requests at {name}", "CPU s",
                [r["cpu_s_per_1000"] for r in runs], at_most(0.020, "<= 0.020 (20 µs/req)"))
        sec.add(f"cpu_main_us.{rate}", f"… of which main thread (capture, parse, spans) at {name}", "µs/req",
                [r["cpu_us_main"] for r in runs])
        sec.add(f"cpu_export_us.{rate}", f"… of which export threads (OTLP encode, gRPC) at {name}", "µs/req",
                [r["cpu_us_export"] for r in runs])
        sec.add(f"peak_rss.{rate}", f"Peak RSS at {name}", "MB", [r["peak_rss_mb"] for r in runs],
                at_most(80, "<= 80 MB"))
        lost_goal = at_most(0, "0 (up to 10 000 req/s)") if rate <= 10000 else None
        sec.add(f"lost.{rate}", f"Events lost at {name} (requests − server spans)", "requests",
                [r["lost"] for r in runs], lost_goal)
        sec.add(f"ringbuf_drops.{rate}", f"Ring-buffer drops (kernel counter) at {name}", "records",
                [r["ringbuf_drops"] for r in runs], lost_goal)
        sec.add(f"bpf_us.{rate}", f"Probe run time in the app's threads at {name}", "µs/req",
                [r["bpf_us_per_request"] for r in runs])
    sec.add("highest_sustainable", "Highest sustainable rate, no CPU limit (ramp)", "req/s",
            [highest] if highest else [])
    sec.add("not_sustained", "… first rate not sustained (ramp)", "req/s", [not_sustained] if not_sustained else [])
    sec.add("loss_begins", "… first rate with events lost (ramp)", "req/s", [loss_begins] if loss_begins else [])
    sec.add("highest_sustainable_limited", f"Highest sustainable rate, sidecar CPU limit {CPU_LIMIT:g} (ramp)",
            "req/s", [lim_highest] if lim_highest else [])
    sec.add("loss_begins_limited", f"… first rate with events lost, CPU limit {CPU_LIMIT:g} (ramp)", "req/s",
            [lim_loss] if lim_loss else [])
    sec.notes.append("Ramp, no CPU limit: " + " ".join(ramp_note(r) for r in free_ramp))
    if not loss_begins and not_sustained:
        first = next(r for r in free_ramp if r["rate"] == not_sustained)
        sec.notes.append(f"No event lost in the ramp without a CPU limit: at {not_sustained:,} req/s the offered rate "
                         f"is not reached ({first['achieved_rps']:,.0f} req/s) because nginx, wrk and the sidecar "
                         f"(then using {first['sidecar_cores']:.2f} cores) share this machine's 2 cores; the sidecar "
                         "slows the app down instead of dropping events.")
    sec.notes.append(f"Ramp, sidecar capped at {CPU_LIMIT:g} CPU (cgroup CFS quota, the webhook's default limit "
                     "500m): " + " ".join(ramp_note(r) for r in limited_ramp))
    if limited_ramp and limited_ramp[0]["cpu_limit"] is None:
        sec.notes.append("The CPU limit could not be applied (no writable cgroup cpu controller).")
    sec.raw = {"ramp": free_ramp, "ramp_cpu_limited": limited_ramp,
               "runs": {str(k): v for k, v in per_rate.items()}}
    return sec
