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

import shutil
import subprocess
import sys

from . import paced
from .common import APPS, LOOPBACK, Context, Pod, Settings, free_port, wait_port
from .results_model import Section

RATES = (1000, 5000)
CONNECTIONS = 8   # a client's connection pool; one command in flight on each
WARM_UP = 200     # operations before the measured load (25 per connection)


def start_redis(pod: Pod) -> int:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server not found (make test-deps installs it)")
    port = free_port()
    pod.spawn(["redis-server", "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
               "--dir", str(pod.dir)], stdout=subprocess.DEVNULL)
    wait_port(port)
    return port


def client_argv(port: int, rate: int, seconds: float) -> list[str]:
    return [sys.executable, str(APPS / "redis_paced.py"), str(port), str(rate), str(seconds), str(CONNECTIONS),
            str(WARM_UP)]


def metric_operations(text: str, redis_port: int) -> float:
    """Operations counted in db.client.operation.duration for redis_port (the client's end only)."""
    return paced.sample_sum(text, "db_client_operation_duration_seconds_count{", f'server_port="{redis_port}"')


WORKLOAD = paced.Workload(
    "redis_cost", "7. Sidecar CPU per Redis operation", "Redis operation (2 exchanges)", "operation", "ops",
    "exchange", "db.client.operation.duration", 1, RATES, WARM_UP,
    8000,  # a 10 ms tick of CPU time is then 1.25 µs per operation at most
    client_argv, metric_operations)


def method(s: Settings) -> str:
    seconds = ", ".join(f"{paced.load_seconds(WORKLOAD, s, r):g} s at {r:,}/s" for r in RATES)
    return (
        f"redis-server and a paced client (benchmarks/apps/redis_paced.py: {CONNECTIONS} connections, one "
        f"command in flight on each, SET and GET in turn, 3-byte values) in one pod; {WARM_UP} warm-up "
        f"operations, then the client offers each rate ({seconds}; CPU is read in 10 ms ticks). "
        "redis-benchmark has no rate option: a bounded -n runs at full speed, not at a fixed rate. A fresh "
        "sidecar per run, in the two modes of section 2 (spans over OTLP/gRPC to the receiver outside the pod "
        "with metrics on, or metrics only), alternating. Both ends are in the pod: one operation is two "
        "exchanges (client and server) and, with spans, two spans. CPU: CPU time of all the sidecar's "
        "threads from the start of the load until it has caught up (the receiver got the spans; metrics only: "
        "its CPU use fell below 0.05 cores), per operation completed; with spans also split into the main "
        "thread and the others (OTLP export). Probe time: kernel.bpf_stats_enabled run time of the sidecar's "
        "programs over the load, per operation (both ends' syscalls). No loss: exchanges expected (2 per "
        "operation, warm-up included) = spans received after the final flush (metrics only: exchanges the "
        "sidecar recorded) + the losses the sidecar counts (kernel exchange drops, parse failures, pipelined "
        "exchanges; with spans, spans dropped or failed); and db.client.operation.duration counts every "
        "operation once.")


def measure(ctx: Context) -> Section:
    return paced.measure(ctx, WORKLOAD, start_redis, method(ctx.settings))
