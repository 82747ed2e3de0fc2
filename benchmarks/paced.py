"""Sidecar CPU per operation of a paced client and its server, both in one pod (redis_cost,
grpc_cost): a fresh sidecar per run in the two modes of sidecar_cost (spans over OTLP/gRPC with
metrics on; metrics only), the client warmed up and then paced at fixed rates, with the no-loss
check. Both ends of every connection are in the pod, so each operation is two exchanges (HTTP/2:
streams) for the sidecar, and two spans.

The client (benchmarks/apps/*_paced.py) prints `ready` once warmed up, waits for `go` on stdin, runs
the load and prints its JSON result: operations, sent, errors, rate, p50_us, p99_us, cpu_seconds,
seconds.
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from .common import LOOPBACK, Context, Pod, Settings, bpf_prog_stats, bpf_stats_enabled, log
from .results_model import Section, at_most
from .sidecar_cost import MODES, program_deltas, thread_cpu, wait_idle

BATCH = 512  # OTEL_BSP_MAX_EXPORT_BATCH_SIZE: a last partial batch may leave later


@dataclass(frozen=True)
class Workload:
    key: str                 # the section's key and its title
    title: str
    what: str                # one operation, in figure labels: "Redis operation (2 exchanges)"
    unit: str                # an operation, and its rate unit: "op", "ops"
    units: str
    halves: str              # what the sidecar sees of an operation, twice: "exchange", "stream"
    metric: str              # the duration metric that counts operations, in labels
    metric_per_operation: int  # its count per operation (1: the client's end only; 2: both ends)
    rates: tuple[int, ...]
    warm_up: int             # operations before the measured load
    min_operations: int      # per full run: CPU is read in 10 ms ticks
    client_argv: Callable[[int, int, float], list[str]]  # (server port, rate, seconds) -> argv
    metric_count: Callable[[str, int], float]  # (Prometheus text, server port) -> operations counted
    extra_losses: tuple[str, ...] = ()  # self-metrics counted as lost beyond the common ones


class Client:
    """The paced client in the pod: warmed up on construction, measured load on `run`."""

    def __init__(self, pod: Pod, argv: list[str], seconds: float) -> None:
        self.seconds = seconds
        self.proc, self.pid = pod.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self._line(30.0) != "ready":
            raise RuntimeError(f"the client did not warm up: {argv}")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            raise TimeoutError(f"no output from the client in {timeout:g} s")
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
            raise RuntimeError(f"the client failed: {line!r}") from None


def metric_text(port: int | None) -> str | None:
    """The sidecar's Prometheus exposition (None without an endpoint)."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return None


def sample_sum(text: str, prefix: str, label: str) -> float:
    """The sum of the samples whose line starts with `prefix` and holds `label` (`name="value"`)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix) and label in line)


def counted_losses(w: Workload, selfm: dict[str, float] | None, traces: bool) -> float | None:
    """What the sidecar says it lost: the kernel's whole-exchange drops, parse failures, pipelined
    exchanges, the workload's own, and with spans, spans its exporter dropped or failed to deliver."""
    if selfm is None:
        return None
    names = ["exchanges_lost", "parse_failures", "pipelined_exchanges", *w.extra_losses]
    if traces:
        names += ["spans_dropped", "spans_failed"]
    return sum(selfm.get(f"beyla_sidecar_{n}_total", 0.0) for n in names)


def load_seconds(w: Workload, s: Settings, rate: int) -> float:
    """Quick: 2 s. Full: the run's duration, longer at low rates (min_operations)."""
    return 2.0 if s.quick else max(s.duration, w.min_operations / rate)


def one_run(ctx: Context, w: Workload, pod: Pod, server_port: int, rate: int, mode: str) -> dict:
    """A fresh sidecar in `mode` (sidecar_cost.MODES) and the client paced at `rate` operations/s."""
    rcv, traces = ctx.receiver, mode == "otlp"
    seconds = load_seconds(w, ctx.settings, rate)
    sidecar = ctx.sidecar(pod, traces=traces)
    try:
        spans0, server0 = rcv.snapshot()
        client = Client(pod, w.client_argv(server_port, rate, seconds), seconds)
        time.sleep(0.3)  # the warm-up's records drained
        cpu0, threads0, progs0 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid), bpf_prog_stats(sidecar.pid)
        result = client.run()
        load_end = time.monotonic()
        if sidecar.proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited during the load:\n{sidecar.text_log()}")
        progs = program_deltas(progs0, bpf_prog_stats(sidecar.pid))
        ops = w.warm_up + result["operations"]
        if traces:  # caught up when the receiver has the spans (export included)
            last = rcv.wait_quiet(quiet=1.0, timeout=20.0, at_least=server0 + ops - BATCH)
        else:
            last = wait_idle(sidecar.pid)
        cpu1, threads1 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid)
        rss = sidecar.peak_rss_mb()
        kernel = sidecar.bpf_counters() or {}
        selfm = sidecar.self_metrics()
        text = metric_text(sidecar.metrics_port)
    finally:
        stopped = sidecar.stop()
    if traces:
        rcv.wait_quiet(quiet=0.5, timeout=10.0)
    expected = 2 * ops  # the client's end and the server's
    delivered = rcv.snapshot()[0] - spans0 if traces else stopped.get("exchanges")
    counted = counted_losses(w, selfm, traces)
    lost = None if delivered is None else expected - delivered
    metric = None if text is None else w.metric_count(text, server_port)
    n = max(1, result["operations"])
    return {
        "mode": mode, "rate": rate, "achieved_rps": result["rate"], "operations": result["operations"],
        "sent": result["sent"], "errors": result["errors"], "p50_us": result["p50_us"], "p99_us": result["p99_us"],
        "client_cores": result["cpu_seconds"] / result["seconds"],
        "expected": expected, "delivered": delivered,
        "server_spans": rcv.snapshot()[1] - server0 if traces else None,
        "lost": lost, "counted_losses": counted,
        "unaccounted": None if lost is None or counted is None else lost - counted,
        "metric_count": metric,
        "metric_missing": None if metric is None else (w.metric_per_operation * ops - metric) / w.metric_per_operation,
        "ringbuf_drops": kernel.get("ringbuf_drops"),
        "cpu_us": (cpu1 - cpu0) / n * 1e6,
        "cpu_us_main": (threads1["main"] - threads0["main"]) / n * 1e6,
        "cpu_us_export": (threads1["other"] - threads0["other"]) / n * 1e6,
        "catch_up_s": max(0.0, last - load_end),
        "bpf_us_per_op": sum(p["ns"] for p in progs.values()) / n / 1000,
        "peak_rss_mb": rss, "exchanges": stopped.get("exchanges"),
        "parse_failures": stopped.get("parse_failures"), "self_metrics": selfm,
    }


def add_figures(w: Workload, sec: Section, per_run: dict[tuple[str, int], list[dict]]) -> None:
    for (mode, rate), runs in per_run.items():
        at = f"{MODES[mode]}, {rate:,} {w.units}/s"
        sec.add(f"cpu_us.{mode}.{rate}", f"Sidecar CPU per {w.what}, {at}", "µs", [r["cpu_us"] for r in runs])
        if mode == "otlp":
            sec.add(f"cpu_main_us.{mode}.{rate}", f"… of which main thread, {at}", "µs",
                    [r["cpu_us_main"] for r in runs])
            sec.add(f"cpu_export_us.{mode}.{rate}", f"… of which other threads (OTLP export), {at}", "µs",
                    [r["cpu_us_export"] for r in runs])
        sec.add(f"bpf_us.{mode}.{rate}", f"Probe time per {w.unit}, all programs, {at}", "µs",
                [r["bpf_us_per_op"] for r in runs])
        sec.add(f"achieved.{mode}.{rate}", f"Achieved rate, {at} offered", f"{w.units}/s",
                [r["achieved_rps"] for r in runs])
        delivered = "spans" if mode == "otlp" else "exchanges recorded"
        sec.add(f"lost.{mode}.{rate}", f"{w.halves.capitalize()}s lost (2 × {w.units} − {delivered}), {at}",
                f"{w.halves}s", [r["lost"] for r in runs], at_most(0, "0"))
        sec.add(f"unaccounted.{mode}.{rate}", f"… of which not counted by the sidecar, {at}", f"{w.halves}s",
                [r["unaccounted"] for r in runs], at_most(0, "0"))
        sec.add(f"metric_missing.{mode}.{rate}", f"{w.units.capitalize()} missing from {w.metric}, {at}",
                w.units, [r["metric_missing"] for r in runs], at_most(0, "0"))
        sec.add(f"ringbuf_drops.{mode}.{rate}", f"Ring-buffer drops (kernel counter), {at}", "records",
                [r["ringbuf_drops"] for r in runs])


def measure(ctx: Context, w: Workload, start_server: Callable[[Pod], int], method: str) -> Section:
    """Every rate in both modes, `runs` times, alternating their order; a pod and its server for all."""
    s = ctx.settings
    sec = Section(w.key, w.title, method)
    per_run: dict[tuple[str, int], list[dict]] = {(m, r): [] for r in w.rates for m in MODES}
    pod = Pod(w.key.replace("_", "-"), s.tmp)
    try:
        server_port = start_server(pod)
        with bpf_stats_enabled():
            for run in range(s.runs):
                for mode, rate in (list(per_run) if run % 2 == 0 else list(per_run)[::-1]):
                    r = one_run(ctx, w, pod, server_port, rate, mode)
                    per_run[(mode, rate)].append(r)
                    log(f"run {run} {mode} {rate:,} {w.units}/s: achieved {r['achieved_rps']:,.0f}, "
                        f"{r['cpu_us']:.1f} µs CPU/{w.unit} (main {r['cpu_us_main']:.0f} + other threads "
                        f"{r['cpu_us_export']:.0f}), lost {r['lost']} (counted {r['counted_losses']}), metric "
                        f"{w.units} missing {r['metric_missing']}, probes {r['bpf_us_per_op']:.2f} µs/{w.unit}, "
                        f"client {r['client_cores']:.2f} cores")
    finally:
        pod.close()
    add_figures(w, sec, per_run)
    runs = [r for rs in per_run.values() for r in rs]
    if any(r["errors"] or r["sent"] != r["operations"] for r in runs):
        sec.notes.append(f"Some runs had failed or unanswered {w.units}: see the JSON (errors, sent).")
    if any(r["lost"] is not None and r["lost"] < 0 for r in runs):
        sec.notes.append(f"Some runs delivered more spans or exchanges than {w.halves}s made (negative loss): "
                         "traffic other than the client's reached the sidecar.")
    halves = ", ".join(f"{MODES[m]} at {r:,} {w.units}/s {statistics.median([x['cpu_us'] for x in rs]) / 2:.1f} µs"
                       for (m, r), rs in per_run.items())
    sec.notes.append(f"Sidecar CPU per {w.halves} (half a {w.unit}'s), to compare with section 2: {halves}; "
                     f"the {w.halves} rate is twice the {w.unit} rate.")
    sec.notes.append(f"The client's own CPU: {max(r['client_cores'] for r in runs):.2f} cores at most; its p99 "
                     f"latency {max(r['p99_us'] for r in runs):,.0f} µs at most.")
    sec.raw = {"runs": {f"{m}.{r}": v for (m, r), v in per_run.items()}}
    return sec
