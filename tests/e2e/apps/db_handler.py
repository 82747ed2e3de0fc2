"""Test app: a threaded HTTP/1.1 server whose handler queries Redis and PostgreSQL.

`db_handler.py PORT REDIS_PORT REDIS_PASSWORD [POSTGRES_DSN]`: GET /orders/<id> runs, on the
serving thread, a Redis GET of `order:<id>` (one RESP connection per thread, AUTH once) and,
with a DSN, `SELECT qty FROM orders WHERE item = %s` through psycopg (the extended protocol, one
connection per thread), then answers 200 with what they returned. Prints `ready` when listening.
"""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def command(*args: str) -> bytes:
    parts = [a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


class Backends:
    """One serving thread's connections."""

    def __init__(self, redis_port: int, password: str, dsn: str | None) -> None:
        self.redis = socket.create_connection(("127.0.0.1", redis_port))
        self.redis.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.replies = self.redis.makefile("rb")
        self.call("AUTH", password)
        self.pg = None
        if dsn:
            import psycopg  # only the PostgreSQL variant needs it

            self.pg = psycopg.connect(dsn, autocommit=True)

    def call(self, *args: str) -> bytes:
        self.redis.sendall(command(*args))
        line = self.replies.readline()
        if line.startswith(b"$") and line != b"$-1\r\n":
            line += self.replies.read(int(line[1:]) + 2)
        return line


class Server(ThreadingHTTPServer):
    def __init__(self, port: int, redis_port: int, password: str, dsn: str | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.backend_args = (redis_port, password, dsn)
        self.local = threading.local()

    def backends(self) -> Backends:
        """The calling thread's, opened on its first request (so by the serving thread)."""
        b: Backends | None = getattr(self.local, "backends", None)
        if b is None:
            b = self.local.backends = Backends(*self.backend_args)
        return b


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        order = self.path.rsplit("/", 1)[-1]
        backends = self.server.backends()
        body = backends.call("GET", f"order:{order}")
        if backends.pg is not None:
            row = backends.pg.execute("SELECT qty FROM orders WHERE item = %s", (order,)).fetchone()
            body += repr(row).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    port, redis_port, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dsn = sys.argv[4] if len(sys.argv) > 4 else None

    server = Server(port, redis_port, password, dsn)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
