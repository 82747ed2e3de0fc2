"""(7) Sidecar CPU per Redis operation (issue 13): redis-server and a paced client in one pod,
at fixed rates, in the two modes of sidecar_cost (spans over OTLP/gRPC with metrics on; metrics
only), with the no-loss check.

Both ends of every connection are in the pod, so each operation is two exchanges (the client's
and redis-server's) and, with spans, two spans; Redis metrics (db.client.operation.duration) are
the client's only. The figures are per operation, i.e. per pair of exchanges.

The load generator is apps/redis_paced.py, not redis-benchmark: redis-benchmark has no rate
option, so a bounded -n would run at whatever speed 2 shared cores allow (tens of thousands of
operations/s, not the fixed rates asked for), and each invocation would add its own set-up
traffic (CONFIG GET) and a new process for the sidecar to discover inside the measured window.
The paced client warms up (process and connections seen by the sidecar), then waits for the
harness to start the measured load, and sends only SET and GET: the expected counts are exact.
At 1 000 and 5 000 operations/s it needs 0.1-0.2 cores; much higher rates would want a C client.

Not measured here: pipelined commands (one exchange holds several), TLS, large values, the
probes' share per program (sidecar_cost lists it for HTTP).
"""

from __future__ import annotations

import json
import select
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

from .common import (APPS, LOOPBACK, Context, Pod, Settings, bpf_prog_stats, bpf_stats_enabled, free_port,
                     log, wait_port)
from .results_model import Section, at_most
from .sidecar_cost import MODES, program_deltas, thread_cpu, wait_idle

RATES = (1000, 5000)
CONNECTIONS = 8   # a client's connection pool; one command in flight on each
WARM_UP = 200     # operations before the measured load (25 per connection)
BATCH = 512       # OTEL_BSP_MAX_EXPORT_BATCH_SIZE: a last partial batch may leave later
MIN_OPERATIONS = 8000  # per full run: a 10 ms tick of CPU time is then 1.25 µs per operation at most
DURATION_COUNT = "db_client_operation_duration_seconds_count"


def start_redis(pod: Pod) -> int:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server not found (make test-deps installs it)")
    port = free_port()
    pod.spawn(["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
               "--dir", str(pod.dir)], stdout=subprocess.DEVNULL)
    wait_port(port)
    return port


class Client:
    """apps/redis_paced.py in the pod: warmed up on construction, measured load on `run`."""

    def __init__(self, pod: Pod, port: int, rate: int, seconds: float) -> None:
        self.seconds = seconds
        argv = [sys.executable, str(APPS / "redis_paced.py"), str(port), str(rate), str(seconds),
                str(CONNECTIONS), str(WARM_UP)]
        self.proc, self.pid = pod.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self._line(30.0) != "ready":
            raise RuntimeError("the Redis client did not warm up")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            raise TimeoutError(f"no output from the Redis client in {timeout:g} s")
        return self.proc.stdout.readline().decode().strip()

    def run(self) -> dict:
        """The measured load; returns the client's JSON result once it has all its replies."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        line = self._line(self.seconds + 30)
        self.proc.wait(10)
        self.proc.stdin.close()
        self.proc.stdout.close()  # type: ignore[union-attr]
        try:
            return json.loads(line)
        except ValueError:
            raise RuntimeError(f"the Redis client failed: {line!r}") from None


def metric_operations(port: int | None, redis_port: int) -> float | None:
    """Operations counted in db.client.operation.duration for redis_port, from the sidecar's
    Prometheus endpoint (None without one)."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(DURATION_COUNT + "{") and f'server_port="{redis_port}"' in line)


def counted_losses(selfm: dict[str, float] | None, traces: bool) -> float | None:
    """Exchanges the sidecar says it lost (the kernel's whole-exchange drops, parse failures,
    pipelined exchanges) and, with spans, spans its exporter dropped or failed to deliver."""
    if selfm is None:
        return None
    names = ["exchanges_lost", "parse_failures", "pipelined_exchanges"]
    if traces:
        names += ["spans_dropped", "spans_failed"]
    return sum(selfm.get(f"beyla_sidecar_{n}_total", 0.0) for n in names)


def load_seconds(s: Settings, rate: int) -> float:
    """Quick: 2 s. Full: the run's duration, longer at low rates (MIN_OPERATIONS)."""
    return 2.0 if s.quick else max(s.duration, MIN_OPERATIONS / rate)


def one_run(ctx: Context, pod: Pod, redis_port: int, rate: int, mode: str) -> dict:
    """A fresh sidecar in `mode` (sidecar_cost.MODES) and the client paced at `rate` operations/s."""
    rcv, traces = ctx.receiver, mode == "otlp"
    seconds = load_seconds(ctx.settings, rate)
    sidecar = ctx.sidecar(pod, traces=traces)
    try:
        spans0, server0 = rcv.snapshot()
        client = Client(pod, redis_port, rate, seconds)
        time.sleep(0.3)  # the warm-up's records drained
        cpu0, threads0, progs0 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid), bpf_prog_stats(sidecar.pid)
        result = client.run()
        load_end = time.monotonic()
        if sidecar.proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited during the load:\n{sidecar.text_log()}")
        progs = program_deltas(progs0, bpf_prog_stats(sidecar.pid))
        ops = WARM_UP + result["operations"]
        if traces:  # caught up when the receiver has the spans (export included)
            last = rcv.wait_quiet(quiet=1.0, timeout=20.0, at_least=server0 + ops - BATCH)
        else:
            last = wait_idle(sidecar.pid)
        cpu1, threads1 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid)
        rss = sidecar.peak_rss_mb()
        kernel = sidecar.bpf_counters() or {}
        selfm = sidecar.self_metrics()
        metric_ops = metric_operations(sidecar.metrics_port, redis_port)
    finally:
        stopped = sidecar.stop()
    if traces:
        rcv.wait_quiet(quiet=0.5, timeout=10.0)
    expected = 2 * ops  # exchanges: the client's end and redis-server's
    delivered = rcv.snapshot()[0] - spans0 if traces else stopped.get("exchanges")
    counted = counted_losses(selfm, traces)
    lost = None if delivered is None else expected - delivered
    n = max(1, result["operations"])
    return {
        "mode": mode, "rate": rate, "achieved_rps": result["rate"], "operations": result["operations"],
        "sent": result["sent"], "errors": result["errors"], "p50_us": result["p50_us"], "p99_us": result["p99_us"],
        "client_cores": result["cpu_seconds"] / result["seconds"],
        "expected_exchanges": expected, "delivered": delivered,
        "server_spans": rcv.snapshot()[1] - server0 if traces else None,
        "lost": lost, "counted_losses": counted,
        "unaccounted": None if lost is None or counted is None else lost - counted,
        "metric_operations": metric_ops, "metric_missing": None if metric_ops is None else ops - metric_ops,
        "ringbuf_drops": kernel.get("ringbuf_drops"),
        "cpu_us": (cpu1 - cpu0) / n * 1e6,
        "cpu_us_main": (threads1["main"] - threads0["main"]) / n * 1e6,
        "cpu_us_export": (threads1["other"] - threads0["other"]) / n * 1e6,
        "catch_up_s": max(0.0, last - load_end),
        "bpf_us_per_op": sum(p["ns"] for p in progs.values()) / n / 1000,
        "peak_rss_mb": rss, "exchanges": stopped.get("exchanges"),
        "parse_failures": stopped.get("parse_failures"), "self_metrics": selfm,
    }


def method(s: Settings) -> str:
    seconds = ", ".join(f"{load_seconds(s, r):g} s at {r:,}/s" for r in RATES)
    return (
        f"redis-server and a paced client (benchmarks/apps/redis_paced.py: {CONNECTIONS} connections, one "
        f"command in flight on each, SET and GET in turn, 3-byte values) in one pod; {WARM_UP} warm-up "
        f"operations, then the client offers each rate ({seconds}; CPU is read in 10 ms ticks). "
        "redis-benchmark has no rate option: a bounded -n runs at full speed, not at a fixed rate. A fresh "
        "sidecar per run, in the two modes of section 2 (spans over OTLP/gRPC to the receiver outside the pod "
        "with metrics on, or metrics only), alternating. Both ends are in the pod: one operation is two "
        "exchanges (client and server) and, with spans, two spans. CPU: utime+stime of all the sidecar's "
        "threads from the start of the load until it has caught up (the receiver got the spans; metrics only: "
        "its CPU use fell below 0.05 cores), per operation completed; with spans also split into the main "
        "thread and the others (OTLP export). Probe time: kernel.bpf_stats_enabled run time of the sidecar's "
        "programs over the load, per operation (both ends' syscalls). No loss: exchanges expected (2 per "
        "operation, warm-up included) = spans received after the final flush (metrics only: exchanges the "
        "sidecar recorded) + the losses the sidecar counts (kernel exchange drops, parse failures, pipelined "
        "exchanges; with spans, spans dropped or failed); and db.client.operation.duration counts every "
        "operation once.")


def add_figures(sec: Section, per_run: dict[tuple[str, int], list[dict]]) -> None:
    for (mode, rate), runs in per_run.items():
        at = f"{MODES[mode]}, {rate:,} ops/s"
        sec.add(f"cpu_us.{mode}.{rate}", f"Sidecar CPU per Redis operation (2 exchanges), {at}", "µs",
                [r["cpu_us"] for r in runs])
        if mode == "otlp":
            sec.add(f"cpu_main_us.{mode}.{rate}", f"… of which main thread, {at}", "µs",
                    [r["cpu_us_main"] for r in runs])
            sec.add(f"cpu_export_us.{mode}.{rate}", f"… of which other threads (OTLP export), {at}", "µs",
                    [r["cpu_us_export"] for r in runs])
        sec.add(f"bpf_us.{mode}.{rate}", f"Probe time per operation, all programs, {at}", "µs",
                [r["bpf_us_per_op"] for r in runs])
        sec.add(f"achieved.{mode}.{rate}", f"Achieved rate, {at} offered", "ops/s", [r["achieved_rps"] for r in runs])
        delivered = "spans" if mode == "otlp" else "exchanges recorded"
        sec.add(f"lost.{mode}.{rate}", f"Exchanges lost (2 × operations − {delivered}), {at}", "exchanges",
                [r["lost"] for r in runs], at_most(0, "0"))
        sec.add(f"unaccounted.{mode}.{rate}", f"… of which not counted by the sidecar, {at}", "exchanges",
                [r["unaccounted"] for r in runs], at_most(0, "0"))
        sec.add(f"metric_missing.{mode}.{rate}", f"Operations missing from db.client.operation.duration, {at}",
                "operations", [r["metric_missing"] for r in runs], at_most(0, "0"))
        sec.add(f"ringbuf_drops.{mode}.{rate}", f"Ring-buffer drops (kernel counter), {at}", "records",
                [r["ringbuf_drops"] for r in runs])


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section("redis_cost", "7. Sidecar CPU per Redis operation", method(s))
    per_run: dict[tuple[str, int], list[dict]] = {(m, r): [] for r in RATES for m in MODES}
    pod = Pod("redis-cost", s.tmp)
    try:
        redis_port = start_redis(pod)
        with bpf_stats_enabled():
            for run in range(s.runs):
                for mode, rate in (list(per_run) if run % 2 == 0 else list(per_run)[::-1]):
                    r = one_run(ctx, pod, redis_port, rate, mode)
                    per_run[(mode, rate)].append(r)
                    log(f"run {run} {mode} {rate:,} ops/s: achieved {r['achieved_rps']:,.0f}, {r['cpu_us']:.1f} µs "
                        f"CPU/op (main {r['cpu_us_main']:.0f} + other threads {r['cpu_us_export']:.0f}), lost "
                        f"{r['lost']} (counted {r['counted_losses']}), metric ops missing {r['metric_missing']}, "
                        f"probes {r['bpf_us_per_op']:.2f} µs/op, client {r['client_cores']:.2f} cores")
    finally:
        pod.close()
    add_figures(sec, per_run)
    runs = [r for rs in per_run.values() for r in rs]
    if any(r["errors"] or r["sent"] != r["operations"] for r in runs):
        sec.notes.append("Some runs had Redis error replies or unanswered commands: see the JSON (errors, sent).")
    if any(r["lost"] is not None and r["lost"] < 0 for r in runs):
        sec.notes.append("Some runs delivered more spans or exchanges than operations made (negative loss): "
                         "traffic other than the client's reached the sidecar.")
    halves = ", ".join(f"{MODES[m]} at {r:,} ops/s {statistics.median([x['cpu_us'] for x in rs]) / 2:.1f} µs"
                       for (m, r), rs in per_run.items())
    sec.notes.append(f"Sidecar CPU per exchange (half an operation's), to compare with section 2: {halves}; "
                     "the exchange rate is twice the operation rate.")
    sec.notes.append(f"The client's own CPU: {max(r['client_cores'] for r in runs):.2f} cores at most; its p99 "
                     f"latency {max(r['p99_us'] for r in runs):,.0f} µs at most (from the write, not the slot).")
    sec.raw = {"runs": {f"{m}.{r}": v for (m, r), v in per_run.items()}}
    return sec
