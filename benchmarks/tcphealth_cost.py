"""Cost of TCP health (BEYLA_NETWORK_METRICS): the tracepoint programs per event, for the pod's
own connections and for everyone else's on the node (the hooks are node-wide; they drop other
network namespaces first).

    sudo .venv/bin/python -m benchmarks.tcphealth_cost [--connections 2000]

Three namespaces: "pod" and "peer" joined by a veth, and "other" (loopback only). The programs
are loaded as the sidecar loads them (bpf/tcphealth.py), filtering for the pod's namespace. Each
workload is `connections` TCP connections, one byte each way then a close (both ends run by the
kernel, so each connection is about 10 state changes), or `connections` refused attempts:

    other      client and server in "other", over loopback: the rest of the node
    pod        client in "pod", server in "peer": counted (an RTT sample at each close)
    refused    attempts from "pod" to a closed port of "peer": counted (a failure, a reset)

Kernel time per program call and per connection come from kernel.bpf_stats_enabled (run_time_ns /
run_cnt in each program's fdinfo; turned on for the measurement, then restored). That time includes
the statistics' own clock reads: an empty program on inet_sock_set_state, attached alongside
(compiled here with clang), measures that floor, reported as `empty_ns_per_call`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
POD, PEER, OTHER = "bthpod", "bthpeer", "bthother"
POD_ADDR, PEER_ADDR = "10.234.0.2", "10.234.0.1"
WORKLOAD = """
import socket, sys, threading
mode, server, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "refused":
    for _ in range(n):
        with socket.socket() as c:
            try:
                c.connect((server, 9))
            except ConnectionRefusedError:
                pass
    sys.exit()
srv = socket.create_server((server, 0)) if mode == "local" else None
port = srv.getsockname()[1] if srv else 7000
def serve():
    while True:
        conn, _ = srv.accept()
        with conn:
            conn.sendall(conn.recv(1))
if srv:
    threading.Thread(target=serve, daemon=True).start()
for _ in range(n):
    with socket.create_connection((server, port)) as c:
        c.sendall(b"x")
        c.recv(1)
"""
PEER_SERVER = """
import socket
srv = socket.create_server(({addr!r}, 7000), backlog=512)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.sendall(conn.recv(1))
"""


EMPTY = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("tp_btf/inet_sock_set_state")
int empty(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "GPL";
"""


def empty_object(tmp: Path) -> Path:
    clang = next(c for c in ("clang-19", "clang-18", "clang-17", "clang-16", "clang") if shutil.which(c))
    (tmp / "empty.bpf.c").write_text(EMPTY)
    sh(clang, "-O2", "-g", "-target", "bpf", f"-I/usr/include/{platform.machine()}-linux-gnu", "-c",
       str(tmp / "empty.bpf.c"), "-o", str(tmp / "empty.bpf.o"))
    return tmp / "empty.bpf.o"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def setup() -> None:
    for ns in (POD, PEER, OTHER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "link", "add", "btha", "type", "veth", "peer", "name", "bthb")
    sh("ip", "link", "set", "btha", "netns", POD)
    sh("ip", "link", "set", "bthb", "netns", PEER)
    sh("ip", "-n", POD, "addr", "add", f"{POD_ADDR}/24", "dev", "btha")
    sh("ip", "-n", PEER, "addr", "add", f"{PEER_ADDR}/24", "dev", "bthb")
    sh("ip", "-n", POD, "link", "set", "btha", "up")
    sh("ip", "-n", PEER, "link", "set", "bthb", "up")


def prog_stats(fd: int) -> tuple[int, int]:
    info = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines())
    return int(info.get("run_time_ns", "0")), int(info.get("run_cnt", "0"))


def measure(fds: dict[str, int], ns: str, mode: str, server: str, connections: int) -> dict:
    before = {name: prog_stats(fd) for name, fd in fds.items()}
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", WORKLOAD, mode, server, str(connections)],
                   check=True, timeout=600)
    out: dict = {"connections": connections, "programs": {}}
    total_ns = 0
    for name, fd in fds.items():
        t, n = prog_stats(fd)
        t, n = t - before[name][0], n - before[name][1]
        if name == "empty":
            out["empty_ns_per_call"] = round(t / n, 1) if n else None
            continue
        total_ns += t
        if n:
            out["programs"][name] = {"calls": n, "ns_per_call": round(t / n, 1)}
    out["ns_per_connection"] = round(total_ns / connections, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    args = parser.parse_args()
    from beyla_sidecar.bpf import libbpf
    from beyla_sidecar.bpf.tcphealth import TcpHealthProbes
    from beyla_sidecar.network import RTT_BOUNDS

    setup()
    saved = STATS.read_text().strip()
    peer = subprocess.Popen(["ip", "netns", "exec", PEER, sys.executable, "-c", PEER_SERVER.format(addr=PEER_ADDR)])
    try:
        pod_netns = os.stat(f"/run/netns/{POD}").st_ino
        with TcpHealthProbes(4096, RTT_BOUNDS, netns=pod_netns) as probes, \
                tempfile.TemporaryDirectory() as tmp:
            empty = libbpf.BpfObject(empty_object(Path(tmp)))
            empty.load()
            [prog] = empty.programs()
            link = prog.attach()
            fds = {**probes.program_fds, "empty": prog.fd}
            STATS.write_text("1")
            sh("ip", "netns", "exec", POD, sys.executable, "-c",
               f"import socket, time\nfor _ in range(100):\n    try:\n        socket.create_connection(({PEER_ADDR!r}, "
               f"7000), 1).close(); break\n    except OSError: time.sleep(0.05)")
            results = {
                "other": measure(fds, OTHER, "local", "127.0.0.1", args.connections),
                "pod": measure(fds, POD, "remote", PEER_ADDR, args.connections),
                "refused": measure(fds, POD, "refused", PEER_ADDR, args.connections),
            }
            link.destroy()
            empty.close()
            drained = probes.drain()
            results["pod_destinations_drained"] = len(drained)
            results["rtt_samples"] = sum(d.rtt_count for d in drained)
        print(json.dumps(results, indent=1))
    finally:
        STATS.write_text(saved)
        peer.terminate()
        peer.wait()
        for ns in (POD, PEER, OTHER):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    main()
