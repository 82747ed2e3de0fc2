"""A TCP client for the TCP health tests; prints one JSON object.

    python tcp_client.py connect ADDRESS PORT COUNT [TIMEOUT [SYNCNT]]
        COUNT connection attempts; outcomes by errno name ("ok" when one connects, then closed)
    python tcp_client.py exchange ADDRESS PORT COUNT close|abort|wait
        COUNT connections, one line each way; then `close` (FIN), `abort` (SO_LINGER 0: a reset)
        or `wait` (until the server closes or resets it). Reports each connection's smoothed RTT
        (TCP_INFO tcpi_rtt, microseconds) just before the end, and how each ended.
    python tcp_client.py ports ADDRESS FIRST COUNT
        one connection attempt to each of COUNT ports from FIRST; outcomes as for connect
    python tcp_client.py stream ADDRESS PORT SECONDS
        one connection sending 1 KiB every 10 ms for SECONDS, then closes and reads the answer
"""

import errno
import json
import socket
import struct
import sys
import time
from collections import Counter

TCP_SYNCNT = 7
TCP_INFO_RTT = struct.Struct("I")  # tcpi_rtt: offset 68 of struct tcp_info
TCP_INFO_RTT_OFFSET = 68
LINGER_ZERO = struct.pack("ii", 1, 0)


def family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def outcome(exc: OSError) -> str:
    if exc.errno is None:  # socket.timeout: the client's own deadline (ETIMEDOUT is the kernel's)
        return "timeout"
    return errno.errorcode.get(exc.errno, str(exc.errno))


def connect(address: str, port: int, count: int, timeout: float | None, syncnt: int | None) -> dict:
    outcomes: Counter[str] = Counter()
    for _ in range(count):
        with socket.socket(family(address), socket.SOCK_STREAM) as s:
            if syncnt is not None:
                s.setsockopt(socket.IPPROTO_TCP, TCP_SYNCNT, syncnt)
            s.settimeout(timeout)
            try:
                s.connect((address, port))
                outcomes["ok"] += 1
            except OSError as exc:
                outcomes[outcome(exc)] += 1
    return {"outcomes": dict(outcomes)}


def ports(address: str, first: int, count: int) -> dict:
    outcomes: Counter[str] = Counter()
    for port in range(first, first + count):
        outcomes.update(connect(address, port, 1, 5, None)["outcomes"])
    return {"outcomes": dict(outcomes)}


def rtt_us(s: socket.socket) -> int:
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return TCP_INFO_RTT.unpack_from(info, TCP_INFO_RTT_OFFSET)[0]


def exchange(address: str, port: int, count: int, end: str) -> dict:
    rtts, ends = [], Counter()
    for i in range(count):
        s = socket.create_connection((address, port), timeout=10)
        line = f"hello {i}\n".encode()
        s.sendall(line)
        got = b""
        while len(got) < len(line):
            got += s.recv(4096)
        if end == "wait":
            try:
                ends["eof" if s.recv(4096) == b"" else "data"] += 1
            except ConnectionResetError:
                ends["reset"] += 1
        else:
            # the answer acknowledged our line: no sample comes before an abort, which closes
            # at once (a FIN's acknowledgement is one more sample)
            rtts.append(rtt_us(s))
            if end == "abort":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            else:
                s.shutdown(socket.SHUT_WR)
                s.recv(4096)
            ends[end] += 1
        s.close()
    return {"rtt_us": rtts, "ends": dict(ends)}


def stream(address: str, port: int, seconds: float) -> dict:
    sent = 0
    with socket.create_connection((address, port), timeout=30) as s:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            s.sendall(b"x" * 1024)
            sent += 1024
            time.sleep(0.01)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64)
    return {"sent": sent, "received_by_server": int(answer)}


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "connect":
    out = connect(args[0], int(args[1]), int(args[2]), float(args[3]) if len(args) > 3 else None,
                  int(args[4]) if len(args) > 4 else None)
elif cmd == "ports":
    out = ports(args[0], int(args[1]), int(args[2]))
elif cmd == "exchange":
    out = exchange(args[0], int(args[1]), int(args[2]), args[3])
else:
    out = stream(args[0], int(args[1]), float(args[2]))
print(json.dumps(out))
