"""(2) Cost of the sidecar itself, in two modes (spans over OTLP/gRPC with metrics on; metrics
only): CPU per exchange, peak RSS, events lost and the probes' run time per exchange (summed, and
by program) at 1 k, 5 k, 10 k and 30 k requests/s; the highest rate with no loss, without and with
the webhook's default CPU limit.

Events lost are counted two ways, independently of the sidecar's own claims: the kernel's own
counter (`ringbuf_drops` of the per-CPU array `counters`, read with bpftool from the map the sidecar
holds) and end to end: requests wrk completed minus what reached the user after the sidecar's final
flush on SIGTERM (server spans at the OTLP receiver; with metrics only, the exchanges the sidecar
recorded), so any loss counts: ring buffer, parser, the span queue, the exporter.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

from .baseline import OLD_PROBES
from .common import (CLK_TCK, Context, Pod, bpf_prog_stats, bpf_stats_enabled, cpu_limit, cpu_seconds, log,
                     start_app, warm_up, wrk)
from .results_model import Section, at_least, at_most

CONNECTIONS = 32
RATES = (1000, 5000, 10000, 30000)
NO_LOSS_RATE = 30000  # issue 9: no loss at 30 000 exchanges/s without a CPU limit
PROBE_RATE = 10000    # the rate whose probe time is listed by program
MODES = {"otlp": "spans over OTLP/gRPC + metrics", "metrics": "metrics only"}
CPU_GOAL_US = {"otlp": 12, "metrics": 6}
PROBE_GOAL_US = 1.5
MIN_CALLS = 0.01  # programs running less often per exchange are left out of the by-program list
IDLE_CORES = 0.05  # below this the sidecar has drained its backlog (idle polling only)
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
        out["main" if int(task.name) == pid else "other"] += (int(f[11]) + int(f[12])) / CLK_TCK
    return out


WARM_UP = 50
CPU_LIMIT = 0.5  # cores: the webhook's default sidecar CPU limit (BEYLA_WEBHOOK_SIDECAR_CPU_LIMIT=500m)


def wait_idle(pid: int, window: float = 0.5, timeout: float = 20.0) -> float:
    """Until pid used at most IDLE_CORES over `window` seconds (its backlog is drained; with
    metrics only there are no spans to wait for). Returns the time that quiet window began."""
    deadline = time.monotonic() + timeout
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(window)
        t1, c1 = time.monotonic(), cpu_seconds(pid)
        if c1 - c0 <= IDLE_CORES * (t1 - t0):
            break
        t0, c0 = t1, c1
    return t0


def program_deltas(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Run time (ns) and runs of each program between two bpf_prog_stats readings."""
    return {name: {"ns": p["run_time_ns"] - before.get(name, {}).get("run_time_ns", 0),
                   "runs": p["run_cnt"] - before.get(name, {}).get("run_cnt", 0)} for name, p in after.items()}


def one_run(ctx: Context, pod: Pod, url: str, rate: int, limit: float | None = None, mode: str = "otlp") -> dict:
    """One fresh sidecar in `mode` (MODES) under wrk paced at `rate`, capped at `limit` cores if given."""
    s = ctx.settings
    rcv = ctx.receiver
    traces = mode == "otlp"
    sidecar = ctx.sidecar(pod, traces=traces)
    limited = contextlib.nullcontext(False) if limit is None else cpu_limit(sidecar.pid, limit, f"beyla-bench-{sidecar.pid}")
    try:
        with limited as capped:
            spans0 = rcv.snapshot()[1]
            warm_up(url, WARM_UP)
            time.sleep(0.3)
            cpu0, threads0, progs0 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid), bpf_prog_stats(sidecar.pid)
            result = wrk(url, max(2.0, s.duration - 1), CONNECTIONS, s.tmp, rate=rate)
            load_end, cpu_load = time.monotonic(), sidecar.cpu_seconds()
            progs = program_deltas(progs0, bpf_prog_stats(sidecar.pid))  # the probes run in the load's threads
            expected = WARM_UP + result.requests
            if traces:  # let the sidecar catch up (full batches of 512 spans leave at once) before reading CPU
                last_arrival = rcv.wait_quiet(quiet=1.0, timeout=20.0, at_least=spans0 + expected - 600)
            else:
                last_arrival = wait_idle(sidecar.pid)
            cpu1, threads1 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid)
            rss = sidecar.peak_rss_mb()
            counters = sidecar.bpf_counters() or {}
            selfm = sidecar.self_metrics()
    finally:
        stopped = sidecar.stop()
    if traces:
        rcv.wait_quiet(quiet=0.5, timeout=10.0)
    exchanges = stopped.get("exchanges")
    if selfm:  # the sidecar's own counters, when it has the endpoint (read before the final flush)
        exchanges = exchanges if exchanges is not None else selfm.get("beyla_sidecar_requests_completed_total")
        counters.setdefault("ringbuf_drops", int(selfm.get("beyla_sidecar_events_lost_total", 0)))
    # What reached the user: server spans at the receiver, or (metrics only) exchanges recorded.
    delivered = rcv.snapshot()[1] - spans0 if traces else exchanges
    n = max(1, result.requests)
    return {
        "mode": mode, "rate": rate, "cpu_limit": limit if capped else None, "achieved_rps": result.rps,
        "requests": result.requests, "errors": result.errors, "expected_spans": expected, "delivered": delivered,
        "lost": None if delivered is None else max(0, expected - delivered),
        "lost_before_exchange": None if exchanges is None else max(0, expected - exchanges),
        "lost_after_exchange": None if exchanges is None or delivered is None else max(0, exchanges - delivered),
        "ringbuf_drops": counters.get("ringbuf_drops"), "read_fails": counters.get("read_fails"),
        "cpu_us": (cpu1 - cpu0) / n * 1e6,
        "cpu_us_main": (threads1["main"] - threads0["main"]) / n * 1e6,
        "cpu_us_export": (threads1["other"] - threads0["other"]) / n * 1e6,
        "sidecar_cores": (cpu_load - cpu0) / result.seconds,  # during the load only
        "catch_up_s": max(0.0, last_arrival - load_end),
        "peak_rss_mb": rss, "bpf_us_per_request": sum(p["ns"] for p in progs.values()) / n / 1000,
        "bpf_runs_per_request": sum(p["runs"] for p in progs.values()) / n, "bpf_by_program": progs,
        "p99_us": result.p99_us, "records": stopped.get("records"), "exchanges": exchanges,
        "self_metrics": selfm,
        "spans_dropped_queue": None if not selfm else selfm.get("beyla_sidecar_spans_dropped_total"),
    }


def by_program(runs: list[dict]) -> list[tuple[str, list[float], float, float]]:
    """(program, µs per exchange in each run, calls per exchange, µs per call) for the programs
    that ran at least MIN_CALLS times per exchange, the costliest first."""
    out = []
    for name in dict.fromkeys(n for r in runs for n in r["bpf_by_program"]):
        ns = [r["bpf_by_program"].get(name, {}).get("ns", 0) for r in runs]
        calls = [r["bpf_by_program"].get(name, {}).get("runs", 0) for r in runs]
        requests = [max(1, r["requests"]) for r in runs]
        if sum(calls) / sum(requests) < MIN_CALLS:
            continue
        per_exchange = [x / q / 1000 for x, q in zip(ns, requests)]
        out.append((name, per_exchange, sum(calls) / sum(requests), sum(ns) / max(1, sum(calls)) / 1000))
    return sorted(out, key=lambda p: -statistics.median(p[1]))


def lossy(r: dict) -> bool:
    return bool(r["lost"] or r["ringbuf_drops"])


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
        if direction >= 0 and not ok and any(sustained(x) for x in runs):
            # above the highest sustained rate: go on up until loss shows or throughput stops growing
            grew = len(runs) < 2 or r["achieved_rps"] > 1.05 * runs[-2]["achieved_rps"]
            extra += 1
            if lossy(r) or not grew or extra > 3:
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
    with_loss = [r["rate"] for r in runs if lossy(r) and r["rate"] > top]
    return (top or None), min(failing, default=None), min(with_loss, default=None)


def highest_without_loss(runs: list[dict]) -> int | None:
    """The highest rate of a ramp run without loss, below the first rate that lost events."""
    first_loss = min((r["rate"] for r in runs if lossy(r)), default=None)
    return max((r["rate"] for r in runs if not lossy(r) and (first_loss is None or r["rate"] < first_loss)),
               default=None)


def ramp_note(r: dict) -> str:
    queue = "" if r.get("spans_dropped_queue") is None else f", span queue drops {r['spans_dropped_queue']:.0f}"
    return (f"{r['rate']:,} req/s offered: achieved {r['achieved_rps']:,.0f}, lost {r['lost']} of "
            f"{r['expected_spans']:,} (kernel ring-buffer drops {r['ringbuf_drops']}, lost before the tracker's "
            f"exchange {r['lost_before_exchange']}, after it {r['lost_after_exchange']}{queue}), sidecar "
            f"{r['sidecar_cores']:.2f} cores, {r['catch_up_s']:.1f} s behind at the end, "
            f"{r['cpu_us']:.0f} µs CPU/req.")


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "sidecar_cost", "2. Cost of the sidecar",
        f"nginx in a pod, wrk paced at each rate for {max(2.0, s.duration - 1):g} s ({CONNECTIONS} keep-alive "
        "connections); a fresh sidecar per run (so its peak RSS, VmHWM, belongs to that run), in one of two modes: "
        "spans over OTLP/gRPC to a receiver outside the pod with metrics on (Prometheus endpoint; OTLP metric push "
        "every 60 s by default), or metrics only (BEYLA_TRACE_PRINTER=disabled, no OTLP endpoint, "
        "BEYLA_PROMETHEUS_PORT set). CPU: CPU time of all the sidecar's threads from the start of the load "
        "until it has caught up (the receiver got the spans, export included; with metrics only, its CPU use fell "
        f"below {IDLE_CORES:g} cores), per exchange; with spans, split into the main thread (ring buffer, decoding, "
        "HTTP parsing, span building, metrics) and the other threads (batch export: protobuf encoding, gRPC; the "
        "split in 10 ms clock ticks). "
        "Probe time: kernel.bpf_stats_enabled run time of all the BPF programs whose fds the sidecar holds, over "
        "the load, per exchange: spent in nginx's threads and, for the namespace check that drops them, wrk's "
        f"and every other process's; listed by program at {PROBE_RATE:,} req/s. Lost: requests completed minus "
        "server spans received (metrics only: exchanges the sidecar recorded) after the sidecar's final flush, "
        "and the kernel ring-buffer drop counter. First a ramp (one run per rate, from 10 000 req/s up or down, "
        f"spans mode) finds the highest rate with no loss, >= {SUSTAINED:.0%} of the offered rate achieved and "
        f"the sidecar at most {MAX_LAG:g} s behind when the load stops; then the runs per rate and mode, "
        "interleaved; last a ramp with the sidecar capped at the webhook's default CPU limit.")
    pod = Pod("sidecar-cost", s.tmp)
    try:
        app = start_app("nginx", pod, s.tmp)
        warm_up(app.url)
        with bpf_stats_enabled():
            free_ramp = ramp(ctx, pod, app.url, 10000)
            highest, not_sustained, loss_begins = ramp_summary(free_ramp)
            per_run: dict[tuple[str, int], list[dict]] = {(m, r): [] for r in RATES for m in MODES}
            for run in range(s.runs):
                for mode, rate in (list(per_run) if run % 2 == 0 else list(per_run)[::-1]):
                    r = one_run(ctx, pod, app.url, rate, mode=mode)
                    per_run[(mode, rate)].append(r)
                    log(f"run {run} {mode} {rate:,} req/s: achieved {r['achieved_rps']:,.0f}, {r['cpu_us']:.1f} µs "
                        f"CPU/exchange (main {r['cpu_us_main']:.0f} + other threads {r['cpu_us_export']:.0f}), "
                        f"RSS {r['peak_rss_mb']:.0f} MB, lost {r['lost']}, probes {r['bpf_us_per_request']:.2f} µs")
            limited_ramp = ramp(ctx, pod, app.url, 5000, CPU_LIMIT)
            lim_highest, _, lim_loss = ramp_summary(limited_ramp)
    finally:
        pod.close()

    for mode, mode_label in MODES.items():
        for rate in RATES:
            runs, at = per_run[(mode, rate)], f"{mode_label}, {rate:,} req/s"
            sec.add(f"cpu_us.{mode}.{rate}", f"Sidecar CPU per exchange, {at}", "µs", [r["cpu_us"] for r in runs],
                    at_most(CPU_GOAL_US[mode], f"<= {CPU_GOAL_US[mode]} µs"))
            if mode == "otlp":
                sec.add(f"cpu_main_us.{mode}.{rate}", f"… of which main thread (capture, parse, spans, metrics), "
                        f"{at}", "µs", [r["cpu_us_main"] for r in runs])
                sec.add(f"cpu_export_us.{mode}.{rate}", f"… of which other threads (OTLP encode, gRPC), {at}", "µs",
                        [r["cpu_us_export"] for r in runs])
                sec.add(f"peak_rss.{rate}", f"Peak RSS, {at}", "MB", [r["peak_rss_mb"] for r in runs],
                        at_most(80, "<= 80 MB"))
            # Both modes: with spans, the probes also see the sidecar's own export traffic.
            sec.add(f"bpf_us.{mode}.{rate}", f"Probe time per exchange, all programs, {at}", "µs",
                    [r["bpf_us_per_request"] for r in runs], at_most(PROBE_GOAL_US, f"<= {PROBE_GOAL_US:g} µs"))
            achieved_goal = (at_least(SUSTAINED * rate, f">= {SUSTAINED * rate:,.0f} req/s")
                             if rate == NO_LOSS_RATE else None)
            sec.add(f"achieved.{mode}.{rate}", f"Achieved rate, {at} offered", "req/s",
                    [r["achieved_rps"] for r in runs], achieved_goal)
            delivered = "server spans" if mode == "otlp" else "exchanges recorded"
            sec.add(f"lost.{mode}.{rate}", f"Exchanges lost (requests − {delivered}), {at}", "exchanges",
                    [r["lost"] for r in runs], at_most(0, f"0 (up to {NO_LOSS_RATE:,}/s)"))
            sec.add(f"ringbuf_drops.{mode}.{rate}", f"Ring-buffer drops (kernel counter), {at}", "records",
                    [r["ringbuf_drops"] for r in runs])
    probe_runs = per_run[("otlp", PROBE_RATE)]
    listed = by_program(probe_runs)
    for name, per_exchange, calls, per_call in listed:
        sec.add(f"probe.{name}", f"… probe `{name}` at {PROBE_RATE:,} req/s ({calls:.2g} calls per exchange, "
                f"{per_call:.2g} µs per call)", "µs/exchange", per_exchange)
    unlisted = len({n for r in probe_runs for n in r["bpf_by_program"]}) - len(listed)
    sec.notes.append(f"Probe time by program: {unlisted} more programs ran less than {MIN_CALLS:g} times per "
                     f"exchange. {OLD_PROBES}")
    sec.add("highest_sustainable", "Highest sustainable rate, no CPU limit (ramp)", "req/s",
            [highest] if highest else [])
    sec.add("not_sustained", "… first rate not sustained (ramp)", "req/s", [not_sustained] if not_sustained else [])
    sec.add("loss_begins", "… first rate with events lost (ramp)", "req/s", [loss_begins] if loss_begins else [])
    sec.add("highest_sustainable_limited", f"Highest sustainable rate, sidecar CPU limit {CPU_LIMIT:g} (ramp)",
            "req/s", [lim_highest] if lim_highest else [])
    no_loss = highest_without_loss(limited_ramp)
    sec.add("no_loss_limited", f"Highest rate with no loss, sidecar CPU limit {CPU_LIMIT:g} (ramp)", "req/s",
            [no_loss] if no_loss else [])
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
    if not lim_loss and limited_ramp:
        sec.notes.append(f"No loss in the capped ramp up to {max(r['rate'] for r in limited_ramp):,} req/s: the "
                         "highest rate with no loss is at least that.")
    if limited_ramp and limited_ramp[0]["cpu_limit"] is None:
        sec.notes.append("The CPU limit could not be applied (no writable cgroup cpu controller).")
    sec.raw = {"ramp": free_ramp, "ramp_cpu_limited": limited_ramp,
               "runs": {f"{m}.{r}": v for (m, r), v in per_run.items()}}
    return sec
