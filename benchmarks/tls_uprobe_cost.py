"""Per-request cost of the OpenSSL uprobes, as the instrumented process pays it.

One process runs N HTTP-sized request/response exchanges over a TLS connection on a
socketpair (client SSL_write -> server SSL_read -> server SSL_write -> client SSL_read:
4 SSL calls, each an entry and a return probe: 8 uprobe hits per request), and times them:

  off       no uprobes (two probe sessions loaded, as in the other modes)
  foreign   uprobes attached to this libssl by a session that does not observe this
            process's PID namespace: the price a process outside the pod pays for sharing
            the file (breakpoint trap + namespace check)
  traced    uprobes attached by a session observing this namespace: the full cost
            (capture, socket tie, ring buffer), with a thread draining the ring buffer

Each mode runs ROUNDS times, alternating; the median per-request time is reported, and
the difference to `off` is the uprobe cost. The script re-runs itself in a PID namespace of
its own (a pod of one), so that `traced` records nothing but its own calls. Root needed.
Not a test: numbers vary by CPU and load.

    .venv/bin/python -m benchmarks.tls_uprobe_cost [requests]
"""

from __future__ import annotations

import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from beyla_sidecar.bpf.loader import Probes, pid_namespace_inode
from beyla_sidecar.discover.maps import executable_files
from beyla_sidecar.discover.tls import classify

ROUNDS = 5
IN_POD = "BEYLA_TLS_BENCH_IN_POD"
REQUEST = b"GET /hello HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"


def tls_pair(cert: Path) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """A connected client/server TLS pair over a socketpair (handshake done)."""
    a, b = socket.socketpair()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    result: list[ssl.SSLSocket] = []
    t = threading.Thread(target=lambda: result.append(server_ctx.wrap_socket(b, server_side=True)))
    t.start()
    client = client_ctx.wrap_socket(a)
    t.join()
    return client, result[0]


def run(client: ssl.SSLSocket, server: ssl.SSLSocket, n: int) -> float:
    """Seconds per request."""
    start = time.perf_counter()
    for _ in range(n):
        client.sendall(REQUEST)
        server.recv(4096)
        server.sendall(RESPONSE)
        client.recv(4096)
    return (time.perf_counter() - start) / n


def libssl() -> tuple[str, dict[str, int]]:
    for f in executable_files(os.getpid()):
        found = classify(f.host_path(os.getpid()), f.path, False)
        if found.openssl:
            return f.host_path(os.getpid()), found.openssl
    raise SystemExit("this Python's ssl module maps no OpenSSL library with symbols")


class Drain(threading.Thread):
    def __init__(self, probes: Probes) -> None:
        super().__init__(daemon=True)
        self.probes = probes
        self.records = 0
        self.stop = threading.Event()

    def count(self, _record: memoryview) -> None:
        self.records += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.probes.poll(10, self.count)


def main() -> None:
    if os.environ.get(IN_POD) != "1":
        os.execvpe("unshare", ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m",
                               "benchmarks.tls_uprobe_cost", *sys.argv[1:]], {**os.environ, IN_POD: "1"})
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with tempfile.TemporaryDirectory() as tmp:
        cert = Path(tmp) / "both.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=bench", "-keyout", cert, "-out", cert], check=True, capture_output=True)
        client, server = tls_pair(cert)
    path, offsets = libssl()
    run(client, server, 1000)  # warm-up
    times: dict[str, list[float]] = {"off": [], "foreign": [], "traced": []}
    with Probes() as foreign, Probes(ringbuf_size=64 << 20) as traced:
        traced.allow_pid_namespace(pid_namespace_inode())
        drain = Drain(traced)
        drain.start()
        for _ in range(ROUNDS):
            times["off"].append(run(client, server, n))
            for mode, probes in (("foreign", foreign), ("traced", traced)):
                uprobes = probes.attach_openssl(path, offsets)
                times[mode].append(run(client, server, n))
                probes.detach(uprobes)
        drain.stop.set()
        drain.join()
        counters = traced.counters()
        drops = counters["event_drops"] + counters["exchange_drops"]
    med = {mode: statistics.median(v) * 1e6 for mode, v in times.items()}
    print(f"OpenSSL uprobe cost per request ({n} requests x {ROUNDS} rounds, 4 SSL calls = 8 uprobe hits"
          f" per request; {path.split('/root', 1)[-1]})")
    for mode in times:
        extra = "" if mode == "off" else f"  +{med[mode] - med['off']:.2f} us/request" \
                                           f" (+{(med[mode] - med['off']) / 8 * 1000:.0f} ns/hit)"
        print(f"  {mode:<8} {med[mode]:7.2f} us/request{extra}")
    print(f"  records read while traced: {drain.records}, ring buffer drops: {drops}")


if __name__ == "__main__":
    main()
