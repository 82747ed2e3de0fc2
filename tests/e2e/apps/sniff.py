"""Test tool: captures the IPv4 TCP segments to one port on an interface (AF_PACKET) for some
seconds, then prints, per segment with payload, its TCP options and payload length as JSON lines:
{"options": [[kind, "<hex of the whole option>"], ...], "payload": n}."""

from __future__ import annotations

import json
import socket
import sys
import time

ETH_P_IP = 0x0800


def options(raw: bytes) -> list[tuple[int, str]]:
    out, i = [], 0
    while i < len(raw):
        kind = raw[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        length = raw[i + 1] if i + 1 < len(raw) else 0
        if length < 2:
            break
        out.append((kind, raw[i:i + length].hex()))
        i += length
    return out


def main() -> None:
    dev, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    s.bind((dev, 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    found = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame, addr = s.recvfrom(65536)
        except socket.timeout:
            continue
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        ip = frame[14:]
        if ip[9] != socket.IPPROTO_TCP:
            continue
        ihl = (ip[0] & 15) * 4
        total = int.from_bytes(ip[2:4], "big")
        tcp = ip[ihl:total]
        if int.from_bytes(tcp[2:4], "big") != port:
            continue
        doff = (tcp[12] >> 4) * 4
        found.append({"options": options(tcp[20:doff]), "payload": len(tcp) - doff})
    for f in found:
        print(json.dumps(f))


if __name__ == "__main__":
    main()
