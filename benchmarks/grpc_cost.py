"""(9) Sidecar CPU per gRPC unary call (issue 12): a grpcio server and a paced grpcio client in one
pod, at fixed rates, in the two modes of sidecar_cost (spans over OTLP/gRPC with metrics on;
metrics only), with the no-loss check.

Both ends of every connection are in the pod, so each call is two HTTP/2 streams seen by the
sidecar (the client's and the server's) and, with spans, two spans; gRPC metrics are recorded at
both ends (rpc.client.call.duration and rpc.server.call.duration). The figures are per call, i.e.
per pair of streams.

The load generator is apps/grpc_paced.py (Python grpcio, no generated code): ghz and h2load are not
in Debian, and a Python client keeps the server and the client the same stack as the e2e tests.
It opens 2 channels (2 HTTP/2 connections) with up to 4 calls in flight on each (multiplexed
streams), warms up (process and connections seen by the sidecar), then waits for the harness to
start the measured load: the expected counts are exact. grpcio costs about 0.5 ms of CPU per call at
each end on this machine, so the rates are low (1 000 calls/s already takes about one core for the
client and the server together, out of 2).

Not measured here: streaming RPCs, TLS, large messages, the probes' share per program (sidecar_cost
lists it for HTTP).
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import time
import urllib.request

from .common import (APPS, LOOPBACK, Context, Pod, Settings, bpf_prog_stats, bpf_stats_enabled, free_port,
                     log, wait_port)
from . import redis_cost
from .results_model import Section, at_most
from .sidecar_cost import MODES, program_deltas, thread_cpu, wait_idle

RATES = (500, 1000)
CHANNELS = 2  # HTTP/2 connections of the client
STREAMS = 4   # calls in flight at most on each
WARM_UP = 200     # calls before the measured load (100 per channel)
BATCH = 512       # OTEL_BSP_MAX_EXPORT_BATCH_SIZE: a last partial batch may leave later
MIN_CALLS = 4000  # per full run: a 10 ms tick of CPU time is then 2.5 µs per call at most (of ~100)
SERVICE = "bench.Echo"  # apps/grpc_paced.py
DURATION_COUNTS = ("rpc_server_call_duration_seconds_count", "rpc_client_call_duration_seconds_count")


def start_server(pod: Pod) -> int:
    port = free_port()
    proc, _ = pod.spawn([sys.executable, str(APPS / "grpc_paced.py"), "serve", str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"listening\n":
        raise RuntimeError("the gRPC server did not start")
    wait_port(port)
    return port


class Client:
    """apps/grpc_paced.py client in the pod: warmed up on construction, measured load on `run`."""

    def __init__(self, pod: Pod, port: int, rate: int, seconds: float) -> None:
        self.seconds = seconds
        argv = [sys.executable, str(APPS / "grpc_paced.py"), "client", str(port), str(rate), str(seconds),
                str(CHANNELS), str(STREAMS), str(WARM_UP)]
        self.proc, self.pid = pod.spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self._line(30.0) != "ready":
            raise RuntimeError("the gRPC client did not warm up")

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            raise TimeoutError(f"no output from the gRPC client in {timeout:g} s")
        return self.proc.stdout.readline().decode().strip()

    def run(self) -> dict:
        """The measured load; returns the client's JSON result once all its calls completed."""
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
            raise RuntimeError(f"the gRPC client failed: {line!r}") from None


def metric_calls(port: int | None) -> float | None:
    """Calls counted in rpc.server.call.duration plus rpc.client.call.duration for the benchmark's
    service, from the sidecar's Prometheus endpoint (None without one)."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(DURATION_COUNTS) and f'rpc_service="{SERVICE}"' in line)


def counted_losses(selfm: dict[str, float] | None, traces: bool) -> float | None:
    """What redis_cost counts as lost, plus HTTP/2 streams the sidecar forgot unfinished (bounds)."""
    counted = redis_cost.counted_losses(selfm, traces)
    return None if counted is None or selfm is None else \
        counted + selfm.get("beyla_sidecar_http2_streams_dropped_total", 0.0)


def load_seconds(s: Settings, rate: int) -> float:
    """Quick: 2 s. Full: the run's duration, longer at low rates (MIN_CALLS)."""
    return 2.0 if s.quick else max(s.duration, MIN_CALLS / rate)


def one_run(ctx: Context, pod: Pod, server_port: int, rate: int, mode: str) -> dict:
    """A fresh sidecar in `mode` (sidecar_cost.MODES) and the client paced at `rate` calls/s."""
    rcv, traces = ctx.receiver, mode == "otlp"
    seconds = load_seconds(ctx.settings, rate)
    sidecar = ctx.sidecar(pod, traces=traces)
    try:
        spans0, server0 = rcv.snapshot()
        client = Client(pod, server_port, rate, seconds)
        time.sleep(0.3)  # the warm-up's records drained
        cpu0, threads0, progs0 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid), bpf_prog_stats(sidecar.pid)
        result = client.run()
        load_end = time.monotonic()
        if sidecar.proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited during the load:\n{sidecar.text_log()}")
        progs = program_deltas(progs0, bpf_prog_stats(sidecar.pid))
        calls = WARM_UP + result["operations"]
        if traces:  # caught up when the receiver has the spans (export included)
            last = rcv.wait_quiet(quiet=1.0, timeout=20.0, at_least=server0 + calls - BATCH)
        else:
            last = wait_idle(sidecar.pid)
        cpu1, threads1 = sidecar.cpu_seconds(), thread_cpu(sidecar.pid)
        rss = sidecar.peak_rss_mb()
        kernel = sidecar.bpf_counters() or {}
        selfm = sidecar.self_metrics()
        metric = metric_calls(sidecar.metrics_port)
    finally:
        stopped = sidecar.stop()
    if traces:
        rcv.wait_quiet(quiet=0.5, timeout=10.0)
    expected = 2 * calls  # streams: the client's end and the server's
    delivered = rcv.snapshot()[0] - spans0 if traces else stopped.get("exchanges")
    counted = counted_losses(selfm, traces)
    lost = None if delivered is None else expected - delivered
    n = max(1, result["operations"])
    return {
        "mode": mode, "rate": rate, "achieved_rps": result["rate"], "operations": result["operations"],
        "sent": result["sent"], "errors": result["errors"], "p50_us": result["p50_us"], "p99_us": result["p99_us"],
        "client_cores": result["cpu_seconds"] / result["seconds"],
        "expected_streams": expected, "delivered": delivered,
        "server_spans": rcv.snapshot()[1] - server0 if traces else None,
        "lost": lost, "counted_losses": counted,
        "unaccounted": None if lost is None or counted is None else lost - counted,
        "metric_calls": metric, "metric_missing": None if metric is None else expected - metric,
        "ringbuf_drops": kernel.get("ringbuf_drops"),
        "cpu_us": (cpu1 - cpu0) / n * 1e6,
        "cpu_us_main": (threads1["main"] - threads0["main"]) / n * 1e6,
        "cpu_us_export": (threads1["other"] - threads0["other"]) / n * 1e6,
        "catch_up_s": max(0.0, last - load_end),
        "bpf_us_per_call": sum(p["ns"] for p in progs.values()) / n / 1000,
        "peak_rss_mb": rss, "exchanges": stopped.get("exchanges"),
        "parse_failures": stopped.get("parse_failures"), "self_metrics": selfm,
    }


def method(s: Settings) -> str:
    seconds = ", ".join(f"{load_seconds(s, r):g} s at {r:,}/s" for r in RATES)
    return (
        f"A grpcio server and a paced grpcio client (benchmarks/apps/grpc_paced.py: {CHANNELS} channels, i.e. "
        f"HTTP/2 connections, up to {STREAMS} unary calls in flight on each, 16-byte messages, no generated "
        f"code) in one pod; {WARM_UP} warm-up calls, then the client offers each rate ({seconds}; CPU is read "
        "in 10 ms ticks). grpcio needs about 0.5 ms of CPU per call at each end here, hence the low rates. "
        "A fresh sidecar per run, in the two modes of section 2 (spans over OTLP/gRPC to the receiver outside "
        "the pod with metrics on, or metrics only), alternating. Both ends are in the pod: one call is two "
        "HTTP/2 streams (client and server) and, with spans, two spans. CPU: utime+stime of all the sidecar's "
        "threads from the start of the load until it has caught up (the receiver got the spans; metrics only: "
        "its CPU use fell below 0.05 cores), per call completed; with spans also split into the main thread "
        "and the others (OTLP export). Probe time: kernel.bpf_stats_enabled run time of the sidecar's programs "
        "over the load, per call (both ends' syscalls). No loss: streams expected (2 per call, warm-up "
        "included) = spans received after the final flush (metrics only: exchanges the sidecar recorded) + "
        "the losses the sidecar counts; and rpc.server.call.duration plus rpc.client.call.duration count "
        "every call once at each end.")


def add_figures(sec: Section, per_run: dict[tuple[str, int], list[dict]]) -> None:
    for (mode, rate), runs in per_run.items():
        at = f"{MODES[mode]}, {rate:,} calls/s"
        sec.add(f"cpu_us.{mode}.{rate}", f"Sidecar CPU per gRPC unary call (2 streams), {at}", "µs",
                [r["cpu_us"] for r in runs])
        if mode == "otlp":
            sec.add(f"cpu_main_us.{mode}.{rate}", f"… of which main thread, {at}", "µs",
                    [r["cpu_us_main"] for r in runs])
            sec.add(f"cpu_export_us.{mode}.{rate}", f"… of which other threads (OTLP export), {at}", "µs",
                    [r["cpu_us_export"] for r in runs])
        sec.add(f"bpf_us.{mode}.{rate}", f"Probe time per call, all programs, {at}", "µs",
                [r["bpf_us_per_call"] for r in runs])
        sec.add(f"achieved.{mode}.{rate}", f"Achieved rate, {at} offered", "calls/s",
                [r["achieved_rps"] for r in runs])
        delivered = "spans" if mode == "otlp" else "exchanges recorded"
        sec.add(f"lost.{mode}.{rate}", f"Streams lost (2 × calls − {delivered}), {at}", "streams",
                [r["lost"] for r in runs], at_most(0, "0"))
        sec.add(f"unaccounted.{mode}.{rate}", f"… of which not counted by the sidecar, {at}", "streams",
                [r["unaccounted"] for r in runs], at_most(0, "0"))
        sec.add(f"metric_missing.{mode}.{rate}", f"Calls missing from rpc.{{server,client}}.call.duration, {at}",
                "calls", [r["metric_missing"] for r in runs], at_most(0, "0"))
        sec.add(f"ringbuf_drops.{mode}.{rate}", f"Ring-buffer drops (kernel counter), {at}", "records",
                [r["ringbuf_drops"] for r in runs])


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section("grpc_cost", "9. Sidecar CPU per gRPC unary call", method(s))
    per_run: dict[tuple[str, int], list[dict]] = {(m, r): [] for r in RATES for m in MODES}
    pod = Pod("grpc-cost", s.tmp)
    try:
        server_port = start_server(pod)
        with bpf_stats_enabled():
            for run in range(s.runs):
                for mode, rate in (list(per_run) if run % 2 == 0 else list(per_run)[::-1]):
                    r = one_run(ctx, pod, server_port, rate, mode)
                    per_run[(mode, rate)].append(r)
                    log(f"run {run} {mode} {rate:,} calls/s: achieved {r['achieved_rps']:,.0f}, {r['cpu_us']:.1f} µs "
                        f"CPU/call (main {r['cpu_us_main']:.0f} + other threads {r['cpu_us_export']:.0f}), lost "
                        f"{r['lost']} (counted {r['counted_losses']}), metric calls missing {r['metric_missing']}, "
                        f"probes {r['bpf_us_per_call']:.2f} µs/call, client {r['client_cores']:.2f} cores")
    finally:
        pod.close()
    add_figures(sec, per_run)
    runs = [r for rs in per_run.values() for r in rs]
    if any(r["errors"] or r["sent"] != r["operations"] for r in runs):
        sec.notes.append("Some runs had failed or unfinished calls: see the JSON (errors, sent).")
    if any(r["lost"] is not None and r["lost"] < 0 for r in runs):
        sec.notes.append("Some runs delivered more spans or exchanges than streams made (negative loss): "
                         "traffic other than the client's reached the sidecar.")
    halves = ", ".join(f"{MODES[m]} at {r:,} calls/s {statistics.median([x['cpu_us'] for x in rs]) / 2:.1f} µs"
                       for (m, r), rs in per_run.items())
    sec.notes.append(f"Sidecar CPU per stream (half a call's), to compare with section 2: {halves}.")
    sec.notes.append(f"The client's own CPU: {max(r['client_cores'] for r in runs):.2f} cores at most; its p99 "
                     f"latency {max(r['p99_us'] for r in runs):,.0f} µs at most.")
    sec.raw = {"runs": {f"{m}.{r}": v for (m, r), v in per_run.items()}}
    return sec
