"""Test client: sends the bytes of stdin as they are, in one write, on a new connection, and
prints the status line of the answer (read to its end: the server closes after it)."""

from __future__ import annotations

import socket
import sys

request = sys.stdin.buffer.read()
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    s.sendall(request)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
print(answer.split(b"\r\n", 1)[0].decode())
