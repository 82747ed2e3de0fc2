"""The Redis load generator of the benchmarks: a client paced at a fixed rate of operations.

    python redis_paced.py PORT RATE SECONDS CONNECTIONS WARMUP

Opens CONNECTIONS connections to 127.0.0.1:PORT, runs WARMUP operations one at a time over
them in turn (so that the sidecar has seen this process and every connection before the
measured load), prints `ready` and waits for a line on stdin. Then it offers RATE operations
per second for SECONDS seconds and prints one JSON line: operations completed, errors, the
elapsed time, the achieved rate, latency percentiles and its own CPU time.

Operations alternate `SET key:<n> xxx` and `GET key:<n>` over 100 keys (3-byte values, as
redis-benchmark's default), RESP2, one command per write and one command in flight per
connection (no pipelining): every operation is one exchange. Send slots fall every 1/RATE
seconds on the monotonic clock; a connection that got its reply takes the next due slot, so a
client that fell behind catches up (debt capped at 1 s, as benchmarks/lua/paced.lua does). The
event loop sleeps with millisecond granularity (epoll), so sends cluster within a millisecond.
Latency counts from the actual write (no coordinated-omission correction).
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import statistics
import sys
import time

KEYS = 100
VALUE = b"xxx"
MAX_DEBT = 1.0     # seconds of missed slots caught up at most
DRAIN_TIMEOUT = 10.0  # seconds to wait for the replies still due when the load ends


def command(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def operation(i: int) -> bytes:
    key = b"key:%d" % (i // 2 % KEYS)
    return command(b"SET", key, VALUE) if i % 2 == 0 else command(b"GET", key)


def reply_end(buf: bytes) -> int:
    """Length of the complete reply at the start of buf (simple, error, integer or bulk
    string: what SET and GET answer), or 0 while it is incomplete."""
    eol = buf.find(b"\r\n")
    if eol < 0:
        return 0
    if buf[:1] != b"$":
        return eol + 2
    size = int(buf[1:eol])
    end = eol + 2 + (size + 2 if size >= 0 else 0)
    return end if len(buf) >= end else 0


class Connection:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.sent_at: float | None = None  # when the command in flight was written

    def call(self, data: bytes) -> bytes:
        """Blocking round trip (warm-up)."""
        self.sock.sendall(data)
        while not (end := reply_end(self.buf)):
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        reply, self.buf = self.buf[:end], self.buf[end:]
        return reply


def paced(conns: list[Connection], rate: float, seconds: float) -> dict:
    sel = selectors.DefaultSelector()
    for c in conns:
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    idle = list(conns)
    latencies: list[float] = []
    errors = sent = 0
    interval = 1.0 / rate
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    end, next_slot = start + seconds, start
    while True:
        now = time.monotonic()
        sending = now < end
        if sending:
            next_slot = max(next_slot, now - MAX_DEBT)
            while idle and next_slot <= now:
                c = idle.pop()
                c.sock.send(operation(sent))  # a few dozen bytes: an empty socket buffer takes them whole
                c.sent_at = time.monotonic()
                sent += 1
                next_slot += interval
        elif len(idle) == len(conns) or now > end + DRAIN_TIMEOUT:
            break
        timeout = max(0.0, next_slot - now) if sending and idle else 0.05
        for key, _ in sel.select(timeout):
            c = key.data
            chunk = c.sock.recv(65536)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            c.buf += chunk
            if (n := reply_end(c.buf)) and c.sent_at is not None:
                errors += c.buf[:1] == b"-"
                c.buf = c.buf[n:]
                latencies.append(time.monotonic() - c.sent_at)
                c.sent_at = None
                idle.append(c)
    elapsed = time.monotonic() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {"sent": sent, "operations": len(latencies), "errors": errors, "seconds": elapsed,
            "rate": len(latencies) / elapsed, "p50_us": q[49] * 1e6, "p99_us": q[98] * 1e6,
            "cpu_seconds": cpu}


def main() -> None:
    port, rate, seconds, connections, warmup = (int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]),
                                                int(sys.argv[4]), int(sys.argv[5]))
    conns = [Connection(port) for _ in range(connections)]
    for i in range(warmup):
        conns[i % connections].call(operation(i))
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(paced(conns, rate, seconds)), flush=True)


if __name__ == "__main__":
    main()
