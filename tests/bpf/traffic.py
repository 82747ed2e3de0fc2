"""TCP traffic generator for the probe tests, run as a subprocess (inside or outside a new
PID namespace). Protocol on stdio: prints {"ns_inode": N}, waits for a line on stdin, runs
the exchanges of the plan given as JSON in argv[1], prints the result as JSON and exits.

Each exchange: the client sends `request` bytes with `send` (one syscall), the server waits
until all of them are queued, receives them with `recv` (one syscall), then answers
`reply` bytes which the client reads with one recv(MSG_WAITALL). Each syscall therefore
moves exactly the planned byte count, so the test can expect exact events.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import sys
import termios
import threading
import time


def payload(tag: str, size: int) -> bytes:
    """Deterministic, recognisable bytes of a given size."""
    pattern = f"<{tag}>".encode()
    return (pattern * (size // len(pattern) + 1))[:size]


def send(sock: socket.socket, method: str, data: bytes) -> None:
    half = len(data) // 2
    if method == "send":
        sent = sock.send(data)
    elif method == "write":
        sent = os.write(sock.fileno(), data)
    elif method == "sendmsg2":  # two iovecs: the probe captures the first
        sent = sock.sendmsg([data[:half], data[half:]])
    else:
        raise ValueError(method)
    assert sent == len(data), (method, sent, len(data))


def wait_queued(sock: socket.socket, size: int) -> None:
    queued = array.array("i", [0])
    deadline = time.monotonic() + 10
    while True:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, queued)
        if queued[0] >= size or time.monotonic() > deadline:
            return
        time.sleep(0.001)


def recv(sock: socket.socket, method: str, size: int) -> bytes:
    half = size // 2
    if method == "recv":
        return sock.recv(size)
    if method == "read":
        return os.read(sock.fileno(), size)
    if method == "readv2":  # two iovecs: the probe captures the first
        first, second = bytearray(half), bytearray(size - half)
        got = os.readv(sock.fileno(), [first, second])
        return bytes(first + second)[:got]
    if method == "recvmsg":
        return sock.recvmsg(size)[0]
    if method == "peek_recv":  # a MSG_PEEK first: must not produce an event
        sock.recv(size, socket.MSG_PEEK)
        return sock.recv(size)
    raise ValueError(method)


def serve(listener: socket.socket, plan: list[dict], errors: list[BaseException]) -> None:
    try:
        conn, _ = listener.accept()
        with conn:
            for i, step in enumerate(plan):
                wait_queued(conn, step["request"])
                got = recv(conn, step["recv"], step["request"])
                assert got == payload(f"req{i}", step["request"]), (i, len(got))
                conn.sendall(payload(f"rep{i}", step["reply"]))
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


def main() -> None:
    plan = json.loads(sys.argv[1])
    print(json.dumps({"ns_inode": os.stat("/proc/self/ns/pid").st_ino}), flush=True)
    sys.stdin.readline()
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []
    server = threading.Thread(target=serve, args=(listener, plan, errors))
    server.start()
    client = socket.create_connection(listener.getsockname())
    for i, step in enumerate(plan):
        send(client, step["send"], payload(f"req{i}", step["request"]))
        reply = client.recv(step["reply"], socket.MSG_WAITALL)
        assert reply == payload(f"rep{i}", step["reply"]), (i, len(reply))
    result = {"pid": os.getpid(), "server_port": listener.getsockname()[1],
              "client_port": client.getsockname()[1]}
    client.close()
    server.join()
    listener.close()
    if errors:
        raise errors[0]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
