"""Test app: a binary echo server no protocol module knows. Each connection: one read, echoed back
in one write, then closed (so that apps/raw_client.py, which reads until the close, returns)."""

from __future__ import annotations

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        data = conn.recv(65536)
        if data:
            conn.sendall(data)


def main() -> None:
    with socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=64) as server:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
