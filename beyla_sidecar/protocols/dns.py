"""DNS answers (RFC 1035) as the pod's processes receive them: which addresses each name they
asked for resolved to. Not an exchange protocol (nothing registers it in protocols/__init__):
the network metrics (beyla_sidecar/network.py) feed it the packets the netflow filter passes.

Only what naming needs is parsed: the question, and the A, AAAA and CNAME records of the
answer section. A name asked for resolves through its CNAME chain to addresses; every address
is then named after the question (`dst.name` is the name the pod itself used).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TYPE_A = 1
TYPE_CNAME = 5
TYPE_AAAA = 28
CLASS_IN = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
MAX_POINTERS = 32  # compression pointers followed per name (a loop otherwise never ends)
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DnsError(ValueError):
    """Not a DNS answer we can read."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One DNS response: the name asked for and the addresses it resolved to, with TTLs
    (the smallest TTL along its CNAME chain)."""

    question: str
    addresses: tuple[tuple[Address, int], ...]


def _name(msg: bytes, off: int) -> tuple[str, int]:
    """The (possibly compressed) name at `off`, lower-cased, and the offset after it."""
    labels: list[str] = []
    end = -1
    for _ in range(MAX_POINTERS):
        if off >= len(msg):
            raise DnsError("name runs past the message")
        length = msg[off]
        if length & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DnsError("truncated compression pointer")
            if end < 0:
                end = off + 2
            off = (length & 0x3F) << 8 | msg[off + 1]
            continue
        if length == 0:
            return ".".join(labels).lower(), (end if end >= 0 else off + 1)
        labels.append(msg[off + 1:off + 1 + length].decode("ascii", "replace"))
        off += 1 + length
    raise DnsError("compression pointer loop")


def parse_message(msg: bytes) -> Answer | None:
    """A DNS response message; None for a query, an error answer or one without addresses."""
    if len(msg) < _HEADER.size:
        raise DnsError("shorter than a DNS header")
    _id, flags, qdcount, ancount, _ns, _ar = _HEADER.unpack_from(msg)
    if not flags & 0x8000 or flags & 0x000F or qdcount != 1:  # not a response, rcode != 0, odd question count
        return None
    question, off = _name(msg, _HEADER.size)
    off += 4  # qtype, qclass
    cnames: dict[str, tuple[str, int]] = {}
    found: dict[str, list[tuple[Address, int]]] = {}
    for _ in range(ancount):
        owner, off = _name(msg, off)
        if off + _RR.size > len(msg):
            raise DnsError("truncated resource record")
        rtype, rclass, ttl, rdlen = _RR.unpack_from(msg, off)
        off += _RR.size
        rdata = msg[off:off + rdlen]
        if rclass == CLASS_IN and rtype == TYPE_A and rdlen == 4:
            found.setdefault(owner, []).append((ipaddress.IPv4Address(rdata), ttl))
        elif rclass == CLASS_IN and rtype == TYPE_AAAA and rdlen == 16:
            found.setdefault(owner, []).append((ipaddress.IPv6Address(rdata), ttl))
        elif rtype == TYPE_CNAME:
            cnames[owner] = (_name(msg, off)[0], ttl)
        off += rdlen
    addresses = _resolve(question, cnames, found)
    return Answer(question, tuple(addresses)) if addresses else None


def _resolve(question: str, cnames: dict[str, tuple[str, int]],
             found: dict[str, list[tuple[Address, int]]]) -> list[tuple[Address, int]]:
    """Follow the CNAME chain from the question to its addresses; TTL: the chain's smallest."""
    name, ttl = question, 1 << 31
    for _ in range(len(cnames) + 1):
        if name in found:
            return [(addr, min(ttl, t)) for addr, t in found[name]]
        if name not in cnames:
            break
        name, hop_ttl = cnames[name]
        ttl = min(ttl, hop_ttl)
    return []


def l4_payload(ip_packet: bytes, ethertype: int) -> tuple[int, bytes]:
    """(IP protocol, transport payload) of an IPv4 (0x0800) or IPv6 (0x86DD) packet."""
    if ethertype == 0x0800 and len(ip_packet) >= 20:
        proto, off = ip_packet[9], (ip_packet[0] & 0x0F) * 4
    elif ethertype == 0x86DD and len(ip_packet) >= 40:
        proto, off = ip_packet[6], 40
    else:
        raise DnsError("not an IP packet")
    if proto == IPPROTO_UDP:
        return proto, ip_packet[off + 8:]
    if proto == IPPROTO_TCP and len(ip_packet) >= off + 13:
        return proto, ip_packet[off + (ip_packet[off + 12] >> 4) * 4:]
    raise DnsError(f"IP protocol {proto} is neither UDP nor TCP")


def parse_packet(ip_packet: bytes, ethertype: int) -> Answer | None:
    """A DNS answer from a whole IP packet (UDP, or TCP whose segment holds whole messages:
    the 2-byte length prefix then the message; a message split over segments is skipped)."""
    proto, payload = l4_payload(ip_packet, ethertype)
    if proto == IPPROTO_UDP:
        return parse_message(payload)
    if not payload:
        return None  # a bare ACK or FIN from port 53
    if len(payload) < 2:
        raise DnsError("TCP segment shorter than the DNS length prefix")
    length = struct.unpack_from("!H", payload)[0]
    if len(payload) < 2 + length:
        raise DnsError("DNS message split over TCP segments")
    return parse_message(payload[2:2 + length])
