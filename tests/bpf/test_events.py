"""The Python decoder and probes/beyla.h agree on the record layout (checked by a C compiler)."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from beyla_sidecar.bpf.events import (HEADER, HEADER_SIZE, MAX_CAPTURE, PROCESS_EVENTS, Decoder, Direction,
                                      EventType, Role)

PROBES = Path(__file__).resolve().parents[2] / "probes"

LAYOUT_C = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "beyla.h"
#define F(m) printf("%s %zu\n", #m, offsetof(struct event_header, m));
int main(void) {
    printf("size %zu\nmax %d\n", sizeof(struct event_header), MAX_CAPTURE);
    F(ts_ns) F(sock_id) F(pid) F(tid) F(ns_pid) F(ns_tid) F(bytes) F(capture_len) F(type)
    F(direction) F(role) F(flags) F(tuple) F(comm)
    return 0;
}
"""


def test_header_layout_matches_beyla_h(tmp_path: Path) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to read beyla.h's layout"
    (tmp_path / "layout.c").write_text(LAYOUT_C)
    subprocess.run([cc, f"-I{PROBES}", "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")], check=True)
    out = dict(line.split() for line in subprocess.run([str(tmp_path / "layout")], capture_output=True,
                                                         text=True, check=True).stdout.splitlines())
    assert int(out["size"]) == HEADER_SIZE == HEADER.size == 104
    assert int(out["max"]) == MAX_CAPTURE
    offsets = {k: int(v) for k, v in out.items() if k not in ("size", "max")}
    assert offsets == {"ts_ns": 0, "sock_id": 8, "pid": 16, "tid": 20, "ns_pid": 24, "ns_tid": 28, "bytes": 32,
                       "capture_len": 36, "type": 38, "direction": 39, "role": 40, "flags": 41, "tuple": 48,
                       "comm": 88}


def record(etype: int = 1, cap: int = 5, payload: bytes = b"hello", family: int = socket.AF_INET,
           direction: int = 1, role: int = 1, flags: int = 0) -> bytes:
    saddr = socket.inet_pton(socket.AF_INET, "10.1.2.3") + bytes(12)
    daddr = socket.inet_pton(socket.AF_INET, "10.9.8.7") + bytes(12)
    return HEADER.pack(123, 0xFFFF8881, 1000, 1001, 7, 8, 4096, cap, etype, direction, role, flags,
                       saddr, daddr, 8080, 43210, family, b"nginx\0\0\0\0\0\0\0\0\0\0\0") + payload


def test_decode_data_record() -> None:
    ev = Decoder().decode(record())
    assert ev is not None
    assert (ev.type, ev.direction, ev.role) == (EventType.DATA, Direction.RECV, Role.SERVER)
    assert (ev.ts_ns, ev.sock_id, ev.pid, ev.tid, ev.ns_pid, ev.ns_tid, ev.bytes) == (123, 0xFFFF8881, 1000, 1001,
                                                                                      7, 8, 4096)
    assert ev.tuple == ("10.1.2.3", 8080, "10.9.8.7", 43210) and ev.comm == "nginx" and ev.payload == b"hello"
    assert not ev.tls


def test_decode_tls_plaintext_and_process_events() -> None:
    ev = Decoder().decode(record(flags=1))
    assert ev is not None and ev.tls and ev.type is EventType.DATA
    for etype in EventType:
        ev = Decoder().decode(record(etype=etype, cap=0, payload=b""))
        assert ev is not None and ev.type is etype
    assert PROCESS_EVENTS == {e for e in EventType if e.name.startswith("PROCESS_")}


def test_decode_ipv6_and_v4_mapped() -> None:
    raw = bytearray(record(family=socket.AF_INET6))
    raw[48:64] = socket.inet_pton(socket.AF_INET6, "fd00::1")
    raw[64:80] = socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.9")
    ev = Decoder().decode(bytes(raw))
    assert ev is not None and ev.tuple.local_addr == "fd00::1" and ev.tuple.remote_addr == "10.0.0.9"


@pytest.mark.parametrize("raw", [b"", b"\0" * 50, record(etype=9), record(direction=5), record(role=7)])
def test_malformed_records_are_rejected(raw: bytes) -> None:
    assert Decoder().decode(raw) is None


def test_capture_len_beyond_the_record_is_clamped() -> None:
    ev = Decoder().decode(record(cap=500, payload=b"abc"))
    assert ev is not None and ev.payload == b"abc"


def test_header_struct_is_little_endian_and_unpadded() -> None:
    assert HEADER.format.startswith("<") and struct.calcsize(HEADER.format) == HEADER_SIZE


def test_decoder_caches_stay_bounded() -> None:
    from beyla_sidecar.bpf.events import CACHE_LIMIT

    decoder = Decoder()
    for i in range(CACHE_LIMIT * 2):
        raw = bytearray(record())
        raw[64:68] = i.to_bytes(4, "big")  # remote address: a new one each time
        ev = decoder.decode(bytes(raw))
        assert ev is not None and ev.tuple.remote_addr == socket.inet_ntop(socket.AF_INET, i.to_bytes(4, "big"))
    assert len(decoder._addrs) <= CACHE_LIMIT
