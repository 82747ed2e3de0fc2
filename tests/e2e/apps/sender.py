"""Test client: one connection to host:port, sends each payload (hex arguments) as its own write;
`--http`: waits for one HTTP response after each payload whose first byte starts a request
(a payload starting with "+" continues the previous one: a body sent in its own write);
otherwise shuts its side down and reads the echo. Prints the answers as JSON (hex)."""

from __future__ import annotations

import json
import socket
import sys


def read_response(s: socket.socket) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += s.recv(65536)
    return body


def main() -> None:
    http = sys.argv[1] == "--http"
    args = sys.argv[2:] if http else sys.argv[1:]
    host, port, payloads = args[0], int(args[1]), args[2:]
    answers = []
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i, p in enumerate(payloads):
            s.sendall(bytes.fromhex(p.lstrip("+")))
            last = i + 1 == len(payloads) or not payloads[i + 1].startswith("+")
            if http and last:
                answers.append(read_response(s).hex())
        if not http:
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            answers.append(data.hex())
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
