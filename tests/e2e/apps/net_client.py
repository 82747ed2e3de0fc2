"""The pod's client for the network tests; prints one JSON object of exact payload byte counts.

    python net_client.py http NAME PORT PATH      resolve NAME (resolv.conf), GET PATH over one connection
    python net_client.py udp NAME PORT SIZE COUNT [inet|inet6]   COUNT datagrams of SIZE bytes, echoed back
    python net_client.py ports ADDRESS FIRST COUNT               one datagram to each of COUNT ports
"""

import json
import socket
import sys


def resolve(name: str, port: int, family: int) -> str:
    return socket.getaddrinfo(name, port, family, socket.SOCK_STREAM)[0][4][0]


def http(name: str, port: int, path: str) -> dict:
    address = resolve(name, port, socket.AF_INET)
    request = f"GET {path} HTTP/1.0\r\nHost: {name}\r\n\r\n".encode()
    received = 0
    with socket.create_connection((address, port)) as s:
        s.sendall(request)
        while chunk := s.recv(65536):
            received += len(chunk)
    return {"address": address, "sent": len(request), "received": received}


def udp(name: str, port: int, size: int, count: int, family: str) -> dict:
    fam = socket.AF_INET6 if family == "inet6" else socket.AF_INET
    address = resolve(name, port, fam)
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(count):
            s.sendto(b"x" * size, (address, port))
            s.recvfrom(65535)
    return {"address": address, "sent": size * count, "received": size * count}


def ports(address: str, first: int, count: int) -> dict:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in range(first, first + count):
            s.sendto(b"p", (address, port))
    return {"address": address, "sent": count}


cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "http":
    out = http(args[0], int(args[1]), args[2])
elif cmd == "udp":
    out = udp(args[0], int(args[1]), int(args[2]), int(args[3]), args[4] if len(args) > 4 else "inet")
else:
    out = ports(args[0], int(args[1]), int(args[2]))
print(json.dumps(out))
