"""Test app: a threaded HTTP/1.1 server with known routes, run inside and outside the pod."""

from __future__ import annotations

import http.client
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG = b"x" * 100_000


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # head and body are two writes: without TCP_NODELAY each keep-alive exchange waits for a
    # delayed ACK (40 ms)
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/big":
            self._send(200, BIG)
        elif path == "/error":
            self._send(500, b"boom\n")
        elif path == "/proxy":
            # A client call made by the serving thread: its span must be the server span's child.
            conn = http.client.HTTPConnection("127.0.0.1", self.server.server_address[1], timeout=5)
            conn.request("GET", "/hello")
            status = conn.getresponse().status
            conn.close()
            self._send(200, f"upstream {status}\n".encode())
        elif path.startswith(("/call/", "/calls/")):
            # A call to another host (another pod): /call/<host>:<port>/<path>, /calls/: over HTTPS
            # (any certificate)
            scheme, _, target = path[1:].partition("/")
            target, _, rest = target.partition("/")
            host, _, port = target.rpartition(":")
            conn = (http.client.HTTPSConnection(host, int(port), timeout=5, context=ssl._create_unverified_context())
                    if scheme == "calls" else http.client.HTTPConnection(host, int(port), timeout=5))
            conn.request("GET", "/" + rest)
            upstream = conn.getresponse()
            body = upstream.read()
            conn.close()
            self._send(upstream.status, body)
        elif path.startswith("/hello"):
            self._send(200, b"hello\n")
        elif path.startswith("/users/"):
            self._send(200, b"user\n")
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(201, body)


if __name__ == "__main__":
    server = ThreadingHTTPServer((sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1", int(sys.argv[1])), Handler)
    print("listening", flush=True)
    server.serve_forever()
