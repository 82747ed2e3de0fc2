"""An asyncio frontend calling a threaded backend, both in this process (tests/bpf/test_asyncio.py).

Prints {"ns_inode": ...}, waits for "go" on stdin, then sends N concurrent requests GET /f/<i>
(blocking sockets, one thread each); the frontend's handler (a Task per connection, from
asyncio.start_server) calls GET /b/<i>/1 and /b/<i>/2 at once through asyncio.gather (a Task each)
and answers when both are back. The backend answers after a pseudo-random delay, so that the
calls of concurrent requests finish out of order. Prints {"ok": N} at the end."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

N = int(sys.argv[1])


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(random.Random(self.path).uniform(0.002, 0.03))
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def call(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.rpartition(b"\r\n\r\n")[2]


async def frontend(backend: int, ready: threading.Event, box: list[int]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        i = head.split()[1].decode().rsplit("/", 1)[1]
        one, two = await asyncio.gather(call(backend, f"/b/{i}/1"), call(backend, f"/b/{i}/2"))
        body = one + b" " + two
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    box.append(server.sockets[0].getsockname()[1])
    ready.set()
    await asyncio.sleep(3600)


def get(port: int, i: int, out: dict[int, bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET /f/{i} HTTP/1.1\r\nHost: f\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        out[i] = data.rpartition(b"\r\n\r\n")[2]


def main() -> None:
    print(json.dumps({"ns_inode": os.stat("/proc/self/ns/pid").st_ino}), flush=True)
    sys.stdin.readline()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    ready, box = threading.Event(), []
    threading.Thread(target=lambda: asyncio.run(frontend(backend.server_address[1], ready, box)),
                     daemon=True).start()
    ready.wait()
    out: dict[int, bytes] = {}
    threads = [threading.Thread(target=get, args=(box[0], i, out)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out[i] == f"/b/{i}/1 /b/{i}/2".encode() for i in range(N)), out
    print(json.dumps({"ok": N, "frontend": box[0]}), flush=True)


if __name__ == "__main__":
    main()
