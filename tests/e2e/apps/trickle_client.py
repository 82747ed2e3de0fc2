"""Test client: sends the bytes of stdin on a new connection in pieces, each its own write
(TCP_NODELAY, a pause between them so that each is also its own read at the server), then
prints the status line of the answer (read to its end: the request asks the server to close).

    trickle_client.py PORT SIZES    SIZES: comma-separated piece sizes, the last one repeated
                                    ("1": byte by byte; "1,2,3,1000": "G", "ET", " / ", the rest)
"""

from __future__ import annotations

import socket
import sys

from pieces import parse_sizes, send_in_pieces

request = sys.stdin.buffer.read()
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    send_in_pieces(s, request, parse_sizes(sys.argv[2]))
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
print(answer.split(b"\r\n", 1)[0].decode())
