"""The apps of the causality measurement (benchmarks/causality.py): a backend, and frontends
that call it once per request, each forwarding its request's id so that the truth is known.

    python causality_apps.py backend  PORT DELAY_MS
    python causality_apps.py uvicorn  PORT BACKEND_PORT    ASGI on uvicorn, httpx.AsyncClient
    python causality_apps.py aiohttp  PORT BACKEND_PORT    aiohttp.web, aiohttp.ClientSession
    python causality_apps.py threaded PORT BACKEND_PORT    ThreadingHTTPServer, http.client

A frontend answers GET /f/<id> by calling GET /b/<id> on the backend and returning its body;
the backend answers /b/<id> after DELAY_MS with the id. The event-loop frontends share one
client (its keep-alive connection pool) between all requests, as real apps do; the threaded
one opens a connection per call in the handler's thread. nginx (proxy_pass) is configured by
causality.py itself.
"""

from __future__ import annotations

import http.client
import sys
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOPBACK = "127.0.0.1"


def request_id(path: str, prefix: str) -> str | None:
    """The id of /<prefix>/<id>, None for any other path."""
    head = f"/{prefix}/"
    return path[len(head):] if path.startswith(head) and len(path) > len(head) else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator's connections are
    disable_nagle_algorithm = True  # head and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def backend(port: int, delay_ms: float) -> None:
    class Backend(_Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            rid = request_id(self.path, "b")
            if rid is None:
                self.answer(404, b"not found\n")
                return
            time.sleep(delay_ms / 1000)  # so that the frontend's requests overlap
            self.answer(200, rid.encode())

    _serve_threads(Backend, port)


def threaded(port: int, backend_port: int) -> None:
    class Frontend(_Handler):
        def do_GET(self) -> None:  # noqa: N802
            rid = request_id(self.path, "f")
            if rid is None:
                self.answer(404, b"not found\n")
                return
            conn = http.client.HTTPConnection(LOOPBACK, backend_port, timeout=10)
            try:
                conn.request("GET", f"/b/{rid}")
                resp = conn.getresponse()
                self.answer(resp.status, resp.read())
            finally:
                conn.close()

    _serve_threads(Frontend, port)


def _serve_threads(handler: type[BaseHTTPRequestHandler], port: int) -> None:
    server = ThreadingHTTPServer((LOOPBACK, port), handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    server.serve_forever()


def uvicorn_app(port: int, backend_port: int) -> None:
    import httpx
    import uvicorn

    client: list[httpx.AsyncClient] = []  # made inside the server's event loop (lifespan)

    async def app(scope: dict, receive: Callable[[], Awaitable[dict]],
                  send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    client.append(httpx.AsyncClient(timeout=10))
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await client[0].aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        rid = request_id(scope["path"], "f")
        status, body = 404, b"not found\n"
        if rid is not None:
            resp = await client[0].get(f"http://{LOOPBACK}:{backend_port}/b/{rid}")
            status, body = resp.status_code, resp.content
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False, lifespan="on")


def aiohttp_app(port: int, backend_port: int) -> None:
    from aiohttp import ClientSession, ClientTimeout, web

    async def forward(request: web.Request) -> web.Response:
        session: ClientSession = request.app["session"]
        async with session.get(f"http://{LOOPBACK}:{backend_port}/b/{request.match_info['rid']}") as resp:
            return web.Response(status=resp.status, body=await resp.read(), content_type="text/plain")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = ClientSession(timeout=ClientTimeout(total=10))
        yield
        await app["session"].close()

    app = web.Application()
    app.router.add_get("/f/{rid}", forward)
    app.cleanup_ctx.append(session_ctx)
    web.run_app(app, host=LOOPBACK, port=port, print=None, access_log=None)


def main(argv: list[str]) -> None:
    kind, port, arg = argv[0], int(argv[1]), argv[2]
    if kind == "backend":
        backend(port, float(arg))
    elif kind == "threaded":
        threaded(port, int(arg))
    elif kind == "uvicorn":
        uvicorn_app(port, int(arg))
    elif kind == "aiohttp":
        aiohttp_app(port, int(arg))
    else:
        raise SystemExit(f"unknown app {kind!r}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        pass
