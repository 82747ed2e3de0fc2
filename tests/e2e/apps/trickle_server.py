"""Test app: an HTTP/1.1 server that writes each response in pieces, each its own write
(TCP_NODELAY, a pause between them), one connection at a time, closing after each answer.
GET /hello answers 200 "hello\\n".

    trickle_server.py PORT SIZES    SIZES: comma-separated piece sizes, the last one repeated
"""

from __future__ import annotations

import socket
import sys

from pieces import parse_sizes, send_in_pieces

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n"

sizes = parse_sizes(sys.argv[2])
with socket.create_server(("127.0.0.1", int(sys.argv[1]))) as server:
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            send_in_pieces(conn, RESPONSE, sizes)
