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

import subprocess
import sys

from . import paced
from .common import APPS, Context, Pod, Settings, free_port, wait_port
from .results_model import Section

RATES = (500, 1000)
CHANNELS = 2  # HTTP/2 connections of the client
STREAMS = 4   # calls in flight at most on each
WARM_UP = 200     # calls before the measured load (100 per channel)
SERVICE = "bench.Echo"  # apps/grpc_paced.py


def start_server(pod: Pod) -> int:
    port = free_port()
    proc, _ = pod.spawn([sys.executable, str(APPS / "grpc_paced.py"), "serve", str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline() != b"listening\n":
        raise RuntimeError("the gRPC server did not start")
    wait_port(port)
    return port


def client_argv(port: int, rate: int, seconds: float) -> list[str]:
    return [sys.executable, str(APPS / "grpc_paced.py"), "client", str(port), str(rate), str(seconds),
            str(CHANNELS), str(STREAMS), str(WARM_UP)]


def metric_calls(text: str, server_port: int) -> float:
    """Calls counted in rpc.server.call.duration plus rpc.client.call.duration (both ends) for the
    benchmark's service."""
    label = f'rpc_service="{SERVICE}"'
    return (paced.sample_sum(text, "rpc_server_call_duration_seconds_count", label) +
            paced.sample_sum(text, "rpc_client_call_duration_seconds_count", label))


WORKLOAD = paced.Workload(
    "grpc_cost", "9. Sidecar CPU per gRPC unary call", "gRPC unary call (2 streams)", "call", "calls",
    "stream", "rpc.{server,client}.call.duration", 2, RATES, WARM_UP,
    4000,  # a 10 ms tick of CPU time is then 2.5 µs per call at most (of ~100)
    client_argv, metric_calls,
    ("http2_streams_dropped",))  # HTTP/2 streams the sidecar forgot unfinished (bounds)


def method(s: Settings) -> str:
    seconds = ", ".join(f"{paced.load_seconds(WORKLOAD, s, r):g} s at {r:,}/s" for r in RATES)
    return (
        f"A grpcio server and a paced grpcio client (benchmarks/apps/grpc_paced.py: {CHANNELS} channels, i.e. "
        f"HTTP/2 connections, up to {STREAMS} unary calls in flight on each, 16-byte messages, no generated "
        f"code) in one pod; {WARM_UP} warm-up calls, then the client offers each rate ({seconds}; CPU is read "
        "in 10 ms ticks). grpcio needs about 0.5 ms of CPU per call at each end here, hence the low rates. "
        "A fresh sidecar per run, in the two modes of section 2 (spans over OTLP/gRPC to the receiver outside "
        "the pod with metrics on, or metrics only), alternating. Both ends are in the pod: one call is two "
        "HTTP/2 streams (client and server) and, with spans, two spans. CPU: CPU time of all the sidecar's "
        "threads from the start of the load until it has caught up (the receiver got the spans; metrics only: "
        "its CPU use fell below 0.05 cores), per call completed; with spans also split into the main thread "
        "and the others (OTLP export). Probe time: kernel.bpf_stats_enabled run time of the sidecar's programs "
        "over the load, per call (both ends' syscalls). No loss: streams expected (2 per call, warm-up "
        "included) = spans received after the final flush (metrics only: exchanges the sidecar recorded) + "
        "the losses the sidecar counts; and rpc.server.call.duration plus rpc.client.call.duration count "
        "every call once at each end.")


def measure(ctx: Context) -> Section:
    return paced.measure(ctx, WORKLOAD, start_server, method(ctx.settings))
