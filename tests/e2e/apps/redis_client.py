"""Test client: a raw-socket Redis client speaking RESP3 on one connection, with pipelines.

`redis_client.py PORT PASSWORD GETS` runs, waiting for each write's replies before the next:
HELLO 3 AUTH (RESP3 from then on), SET, GETS single GETs, a pipeline of 10 INCRs in one write,
a pipeline SET/LPUSH/GET whose LPUSH fails (WRONGTYPE), HGETALL (a RESP3 map), then bytes that are no
Redis request (the server answers a protocol error and closes). Prints one line per reply.
"""

from __future__ import annotations

import socket
import sys
from typing import BinaryIO


def command(*args: str) -> bytes:
    parts = [a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def reply(f: BinaryIO) -> object:
    """One RESP2/RESP3 reply."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError(line)
    t, rest = line[:1], line[1:-2]
    if t in b"+-:_#,(":
        return (t + rest).decode()
    n = int(rest)
    if t in b"$!=":
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if t in b"*~>":
        return None if n < 0 else [reply(f) for _ in range(n)]
    if t == b"%":
        return {str(reply(f)): reply(f) for _ in range(n)}
    raise ValueError(line)


def main() -> None:
    port, password, gets = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")

        def send(data: bytes, replies: int = 1) -> None:
            s.sendall(data)  # one write: a pipeline is one exchange
            for _ in range(replies):
                print(reply(f), flush=True)

        send(command("HELLO", "3", "AUTH", "default", password, "SETNAME", "e2e"))
        send(command("SET", "greeting", "hello world"))
        for _ in range(gets):
            send(command("GET", "greeting"))
        send(command("INCR", "n") * 10, 10)
        send(command("SET", "s", "v") + command("LPUSH", "s", "x") + command("GET", "s"), 3)
        send(command("HGETALL", "h"))
        s.sendall(b"*1\r\n$x\r\n")  # no bulk length: the server answers an error and closes
        print(reply(f), flush=True)
        assert f.read() == b""


if __name__ == "__main__":
    main()
