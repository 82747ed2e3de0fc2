"""Test server: an ASGI app on hypercorn over cleartext HTTP/2, reached with `Upgrade: h2c` (curl
--http2 on an http:// URL) or prior knowledge; HTTP/1.1 too.

    h2c_server.py PORT       prints `listening` once it accepts connections

GET /bytes/N answers N bytes (status 200); anything else 404 with a short body.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve
from hypercorn.config import Config


async def app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    status, body = 404, b"not found\n"
    if path.startswith("/bytes/") and path[7:].isdigit():
        status, body = 200, b"b" * int(path[7:])
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    task = asyncio.ensure_future(serve(app, config))  # type: ignore[arg-type]
    while True:  # listening once a connection succeeds
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    print("listening", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
