"""Test client: HTTP/1.1 pipelining. On one connection, BATCHES times: COUNT GET requests in
one write, then their COUNT responses read (each to the end of its Content-Length).
Prints the status codes received, comma-separated.

    pipeline_client.py PORT PATH COUNT BATCHES
"""

from __future__ import annotations

import socket
import sys

port, path, count, batches = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
statuses = []
with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
    buf = b""

    def read_response() -> int:
        global buf
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (h.partition(b":") for h in lines[1:]) if k.lower() == b"content-length")
        while len(buf) < length:
            buf += s.recv(65536)
        buf = buf[length:]
        return int(lines[0].split()[1])

    for b in range(batches):
        s.sendall(b"".join(f"GET {path}?b={b}&i={i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
                           for i in range(count)))
        statuses += [read_response() for _ in range(count)]
print(",".join(map(str, statuses)))
