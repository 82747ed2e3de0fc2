"""The gRPC server and load generator of the benchmarks: unary calls at a fixed rate (grpcio,
no generated code: a generic handler with raw-bytes messages).

    python grpc_paced.py serve PORT
    python grpc_paced.py client PORT RATE SECONDS CHANNELS STREAMS WARMUP

`serve` answers `bench.Echo/Call` with its request (16 bytes) and prints `listening`.
`client` opens CHANNELS channels (one HTTP/2 connection each: local subchannel pools), runs
WARMUP calls one at a time over them in turn (so that the sidecar has seen this process and
every connection before the measured load), prints `ready` and waits for a line on stdin. Then it
offers RATE calls per second for SECONDS seconds, at most STREAMS in flight on each channel
(concurrent streams on one connection, as a gRPC client shares a channel), and prints one JSON
line: calls completed, errors, the elapsed time, the achieved rate, latency percentiles and its
own CPU time.

Send slots fall every 1/RATE seconds on the monotonic clock; a call that completed frees its
stream for the next due slot, so a client that fell behind catches up (debt capped at 1 s, as
benchmarks/lua/paced.lua does). Latency counts from the call's start (no coordinated-omission
correction). Calls complete on grpcio's threads; the pacing thread only starts them.
"""

from __future__ import annotations

import json
import queue
import resource
import statistics
import sys
import time
from concurrent import futures

import grpc

SERVICE, METHOD = "bench.Echo", "Call"
PAYLOAD = b"0123456789abcdef"
MAX_DEBT = 1.0     # seconds of missed slots caught up at most
DRAIN_TIMEOUT = 10.0  # seconds to wait for the calls still in flight when the load ends
TIMEOUT = 10.0


def _identity(data: bytes) -> bytes:
    return data


def serve(port: int) -> None:
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        METHOD: grpc.unary_unary_rpc_method_handler(lambda request, context: request, _identity, _identity)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def paced(stubs: list[grpc.UnaryUnaryMultiCallable], streams: int, rate: float, seconds: float) -> dict:
    free: queue.SimpleQueue[int] = queue.SimpleQueue()  # a channel with a stream to spare, once per stream
    for _ in range(streams):
        for i in range(len(stubs)):
            free.put(i)
    latencies: list[float] = []
    errors: list[int] = []

    def done(i: int, started: float, call: grpc.Future) -> None:
        if call.exception() is None:
            latencies.append(time.monotonic() - started)
        else:
            errors.append(i)
        free.put(i)

    interval, sent = 1.0 / rate, 0
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    end, next_slot = start + seconds, start
    while (now := time.monotonic()) < end:
        next_slot = max(next_slot, now - MAX_DEBT)
        if next_slot > now:
            time.sleep(next_slot - now)
        try:
            i = free.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            break
        started = time.monotonic()
        future = stubs[i].future(PAYLOAD, timeout=TIMEOUT)
        future.add_done_callback(lambda f, i=i, t=started: done(i, t, f))
        sent += 1
        next_slot += interval
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while len(latencies) + len(errors) < sent and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {"sent": sent, "operations": len(latencies), "errors": len(errors), "seconds": elapsed,
            "rate": len(latencies) / elapsed, "p50_us": q[49] * 1e6, "p99_us": q[98] * 1e6, "cpu_seconds": cpu}


def client(port: int, rate: float, seconds: float, channels: int, streams: int, warmup: int) -> None:
    opened = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
              for _ in range(channels)]
    for channel in opened:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    stubs = [c.unary_unary(f"/{SERVICE}/{METHOD}", _identity, _identity) for c in opened]
    for i in range(warmup):
        assert stubs[i % channels](PAYLOAD, timeout=TIMEOUT) == PAYLOAD
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(paced(stubs, streams, rate, seconds)), flush=True)
    for channel in opened:
        channel.close()


def main() -> None:
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        port, rate, seconds, channels, streams, warmup = sys.argv[2:8]
        client(int(port), float(rate), float(seconds), int(channels), int(streams), int(warmup))


if __name__ == "__main__":
    main()
