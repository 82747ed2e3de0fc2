"""Writes data in pieces, each its own write (TCP_NODELAY, a pause between them so that each
is also its own read at the other end): for the trickle test apps."""

from __future__ import annotations

import socket
import time


def parse_sizes(arg: str) -> list[int]:
    """SIZES: comma-separated piece sizes, the last one repeated."""
    return [int(s) for s in arg.split(",")]


def send_in_pieces(sock: socket.socket, data: bytes, sizes: list[int]) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    at, i = 0, 0
    while at < len(data):
        size = sizes[min(i, len(sizes) - 1)]
        sock.sendall(data[at:at + size])
        at, i = at + size, i + 1
        time.sleep(0.002)
