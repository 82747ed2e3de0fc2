"""Test app: a server that records exactly the bytes each connection brought (uninstrumented peer).

    recorder.py http <host> <port> <out.jsonl>   HTTP/1.1 requests: each request's raw bytes (head
                                                 and Content-Length body) recorded, answered 200
                                                 with the sha256 of the body
    recorder.py echo <host> <port> <out.jsonl>   anything: all bytes until the peer shuts its side
                                                 down, recorded and echoed back
Records: one JSON object per line, {"raw": <hex>}.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading

lock = threading.Lock()


def record(out: str, raw: bytes) -> None:
    with lock, open(out, "a") as f:
        f.write(json.dumps({"raw": raw.hex()}) + "\n")


def read_request(conn: socket.socket, buf: bytes) -> tuple[bytes, bytes] | None:
    """One request (head and body) from buf plus what the connection brings; (request, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def serve_http(conn: socket.socket, out: str) -> None:
    buf = b""
    with conn:
        while (got := read_request(conn, buf)) is not None:
            request, buf = got
            record(out, request)
            digest = hashlib.sha256(request.partition(b"\r\n\r\n")[2]).hexdigest().encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(digest), digest))


def serve_echo(conn: socket.socket, out: str) -> None:
    data = b""
    with conn:
        while chunk := conn.recv(65536):
            data += chunk
        if data:  # not a readiness probe's bare connect
            record(out, data)
        conn.sendall(data)


def main() -> None:
    mode, host, port, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    serve = serve_http if mode == "http" else serve_echo
    with socket.create_server((host, port), backlog=64) as server:
        print("listening", flush=True)
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn, out), daemon=True).start()


if __name__ == "__main__":
    main()
