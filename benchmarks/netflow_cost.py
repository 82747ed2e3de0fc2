"""Cost of the network metrics (BEYLA_NETWORK_METRICS): the socket filter per packet in the kernel
and the sidecar's flush per flow.

    sudo .venv/bin/python -m benchmarks.netflow_cost [--rate 10000] [--seconds 5] [--flows 1]

Two network namespaces joined by a veth (traffic stays inside them). In the "pod" namespace the
filter is loaded on its packet socket (bpf/netflow.py) exactly as the sidecar does, and a paced
UDP sender sends `rate` datagrams per second (64-byte payload) across `flows` destination ports to
a sink in the peer namespace. Kernel: the filter's run time per call from kernel.bpf_stats_enabled
(run_time_ns / run_cnt in the program's fdinfo; turned on for the measurement, then restored); a
call is one packet seen by the socket, either direction. Sidecar: CPU time of NetworkMetrics.flush
(drain, attributes, counters) per flow, over 1 000 distinct flows.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
POD, PEER = "bnfpod", "bnfpeer"
POD_ADDR, PEER_ADDR = "10.233.0.2", "10.233.0.1"
SINK = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({PEER_ADDR!r}, 0)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "import select\nwhile True: select.select([], [], [])")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def setup() -> None:
    for ns in (POD, PEER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", "bnfa", "type", "veth", "peer", "name", "bnfb")
    sh("ip", "link", "set", "bnfa", "netns", POD)
    sh("ip", "link", "set", "bnfb", "netns", PEER)
    sh("ip", "-n", POD, "addr", "add", f"{POD_ADDR}/24", "dev", "bnfa")
    sh("ip", "-n", PEER, "addr", "add", f"{PEER_ADDR}/24", "dev", "bnfb")
    for ns, dev in ((POD, "bnfa"), (PEER, "bnfb")):
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def prog_stats(fd: int) -> tuple[int, int]:
    info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines())
    return int(info.get("run_time_ns", "0")), int(info.get("run_cnt", "0"))


def send_paced(rate: int, seconds: float, flows: int) -> int:
    """`rate` datagrams/s for `seconds`, in 1 ms slots; drops are impossible (UDP sendto to a
    neighbour); ICMP port unreachable answers are rate-limited by the peer's kernel."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    payload = b"x" * 64
    sent, start = 0, time.monotonic()
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * rate)
        while sent < due:
            s.sendto(payload, (PEER_ADDR, 40000 + sent % flows))
            sent += 1
        time.sleep(0.001)
    return sent


def inside(rate: int, seconds: float, flows: int) -> dict:
    from beyla_sidecar.bpf.netflow import PacketFlows
    from beyla_sidecar.config import Config, load
    from beyla_sidecar.network import NetworkMetrics
    from opentelemetry.sdk.resources import Resource

    cfg = load(Config, {"BEYLA_NETWORK_METRICS": "true"})
    net = NetworkMetrics(cfg, Resource({"service.name": "bench"}))
    net._flows = PacketFlows(cfg.network_flow_map_size)  # the thread is not started: flushes are timed here
    prog_fd = next(int(fd) for fd in os.listdir("/proc/self/fd")
                   if os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:bpf-prog")
    t0, n0 = prog_stats(prog_fd)
    sent = send_paced(rate, seconds, flows)
    time.sleep(0.2)
    t1, n1 = prog_stats(prog_fd)
    net.flush()
    # the flush: 1 000 distinct flows (one datagram each), drained and turned into series
    send_paced(20_000, 0.05, 1000)
    time.sleep(0.1)
    cpu0 = time.process_time()
    net.flush()
    flush_cpu = time.process_time() - cpu0
    drained = net.stats.flows
    net.stop()
    calls = n1 - n0
    return {"rate": rate, "seconds": seconds, "flows": flows, "sent": sent, "filter_calls": calls,
            "filter_ns_per_packet": round((t1 - t0) / calls, 1) if calls else None,
            "flush_us_per_flow": round(flush_cpu * 1e6 / 1000, 2), "flows_drained": drained}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--flows", type=int, default=1)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        print(json.dumps(inside(args.rate, args.seconds, args.flows)))
        return
    setup()
    saved = STATS.read_text().strip()
    STATS.write_text("1")
    sink = subprocess.Popen(["ip", "netns", "exec", PEER, sys.executable, "-c", SINK])
    try:
        out = subprocess.run(["ip", "netns", "exec", POD, sys.executable, "-m", "benchmarks.netflow_cost",
                              "--inside", "--rate", str(args.rate), "--seconds", str(args.seconds),
                              "--flows", str(args.flows)],
                             check=True, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
        print(out.stdout.strip())
    finally:
        STATS.write_text(saved)
        sink.terminate()
        sink.wait()
        for ns in (POD, PEER):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main()
