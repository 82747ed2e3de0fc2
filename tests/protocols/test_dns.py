"""DNS answers as the netflow filter passes them: whole IP packets from port 53."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from beyla_sidecar.protocols.dns import Answer, DnsError, parse_message, parse_packet


def name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def message(question: str, answers: list[bytes], flags: int = 0x8180, qtype: int = 1) -> bytes:
    header = struct.pack("!HHHHHH", 0x1234, flags, 1, len(answers), 0, 0)
    return header + name(question) + struct.pack("!HH", qtype, 1) + b"".join(answers)


QNAME_PTR = b"\xc0\x0c"  # compression pointer to the question name (offset 12)


def test_a_records_of_the_question() -> None:
    msg = message("Backend.Test", [rr(QNAME_PTR, 1, 30, bytes([10, 0, 0, 1])), rr(QNAME_PTR, 1, 60, bytes([10, 0, 0, 2]))])
    assert parse_message(msg) == Answer("backend.test", (
        (ipaddress.IPv4Address("10.0.0.1"), 30), (ipaddress.IPv4Address("10.0.0.2"), 60)))


def test_cname_chain_names_the_addresses_after_the_question_with_the_smallest_ttl() -> None:
    v6 = ipaddress.IPv6Address("fd00::7")
    msg = message("www.shop.test", [rr(QNAME_PTR, 5, 20, name("edge.cdn.test")),
                                    rr(name("edge.cdn.test"), 5, 300, name("pop1.cdn.test")),
                                    rr(name("pop1.cdn.test"), 28, 600, v6.packed)], qtype=28)
    assert parse_message(msg) == Answer("www.shop.test", ((v6, 20),))


@pytest.mark.parametrize("flags", [0x0100, 0x8183])  # a query; an NXDOMAIN answer
def test_queries_and_errors_name_nothing(flags: int) -> None:
    assert parse_message(message("backend.test", [], flags=flags)) is None


def test_compression_loop_and_truncation_are_errors() -> None:
    loop = struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c"
    with pytest.raises(DnsError):
        parse_message(loop)
    with pytest.raises(DnsError):
        parse_message(message("backend.test", [rr(QNAME_PTR, 1, 30, bytes(4))])[:-6])


def ipv4_udp(payload: bytes) -> bytes:
    return bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 53, 10, 0, 0, 2]) + struct.pack(
        "!HHHH", 53, 40000, 8 + len(payload), 0) + payload


def ipv6_tcp(payload: bytes) -> bytes:
    header = bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", 20 + len(payload), 6, 64) + bytes(32)
    return header + struct.pack("!HHIIBBHHH", 53, 40000, 1, 1, 5 << 4, 0x18, 1000, 0, 0) + payload


def test_udp_and_tcp_packets() -> None:
    msg = message("backend.test", [rr(QNAME_PTR, 1, 30, bytes([10, 0, 0, 1]))])
    assert parse_packet(ipv4_udp(msg), 0x0800).question == "backend.test"
    assert parse_packet(ipv6_tcp(struct.pack("!H", len(msg)) + msg), 0x86DD).question == "backend.test"
    assert parse_packet(ipv6_tcp(b""), 0x86DD) is None  # a bare ACK from port 53
    with pytest.raises(DnsError):  # a message split over segments: skipped, counted by the caller
        parse_packet(ipv6_tcp(struct.pack("!H", len(msg)) + msg[:10]), 0x86DD)
