"""The Python decoder and the probes agree on the record layout: probes/beyla.h read by a C
compiler, and the kernel-side connection state read from the built object's BTF."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from beyla_sidecar.bpf import events
from beyla_sidecar.bpf.events import (ANNOUNCED_IN_STATE, CONN_EVENT, CONN_STATE, EXCHANGE, EXCHANGE_DATA,
                                      EXEC_EXTRA, H2_CHUNK, PROCESS_EVENTS, Decoder, H2Chunk,
                                      RESP_END_IN_STATE, End, EventType, ExchangeRecord, Role,
                                      decode_exchange)
from beyla_sidecar.bpf.loader import _LISTEN_KEY, COUNTER_NAMES

REPO = Path(__file__).resolve().parents[2]
OBJECT = REPO / "beyla_sidecar" / "bpf" / "objects" / "beyla.bpf.o"

LAYOUT_C = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include "beyla.h"
#define E(m) printf("exchange.%s %zu\n", #m, offsetof(struct exchange, m));
#define C(m) printf("conn_event.%s %zu\n", #m, offsetof(struct conn_event, m));
#define X(m) printf("exec_event.%s %zu\n", #m, offsetof(struct exec_event, m));
#define H(m) printf("h2_chunk.%s %zu\n", #m, offsetof(struct h2_chunk, m));
int main(void) {
    printf("conn_event %zu\nreq_max %d\nresp_max %d\ntp %d\ntask_chain %d\n", sizeof(struct conn_event),
           REQ_CAPTURE_MAX, RESP_CAPTURE_MAX, TRACEPARENT_CAPTURE, TASK_CHAIN);
    C(type) C(role) C(flags) C(pid) C(tid) C(ns_pid) C(ns_tid) C(ts_ns) C(sock_id) C(tuple) C(comm)
    E(type) E(flags) E(role) E(end) E(pid) E(ns_pid) E(tid) E(sock_id) E(req_start_ns) E(req_end_ns)
    E(resp_start_ns) E(resp_end_ns) E(req_bytes) E(resp_bytes) E(parent_sock) E(parent_start)
    E(req_head) E(resp_head) E(req_len) E(resp_len) E(resp_off) E(trace_id) E(span_id) E(tasks) E(traceparent)
    E(data)
    X(exe) X(path_len) X(path)
    H(type) H(flags) H(role) H(recv) H(pid) H(ns_pid) H(tid) H(sock_id) H(ts_ns) H(seq) H(moved) H(len) H(data)
    printf("h2_max %d\nEVENT_H2_CHUNK %d\nCOUNTER_H2_DROPS %d\n", H2_CHUNK_MAX, EVENT_H2_CHUNK, COUNTER_H2_DROPS);
    printf("exec_event %zu\npath_max %d\nFLAG_PENDING %d\n", sizeof(struct exec_event), EXE_PATH_MAX, FLAG_PENDING);
    printf("FLAG_TLS %d\nFLAG_TRACEPARENT %d\nFLAG_TRUNCATED %d\nEND_NEXT_REQUEST %d\nEND_CLOSE %d\n",
           FLAG_TLS, FLAG_TRACEPARENT, FLAG_TRUNCATED, END_NEXT_REQUEST, END_CLOSE);
    printf("FLAG_CONTEXT %d\nFLAG_CONTEXT_REMOTE %d\n", FLAG_CONTEXT, FLAG_CONTEXT_REMOTE);
    printf("EVENT_EXCHANGE %d\nEVENT_PROCESS_LISTEN %d\n", EVENT_EXCHANGE, EVENT_PROCESS_LISTEN);
    printf("COUNTER_EVENT_DROPS %d\nCOUNTER_READ_FAILS %d\nCOUNTER_ORPHAN_RESPONSES %d\n"
           "COUNTER_EXCHANGE_DROPS %d\n", COUNTER_EVENT_DROPS, COUNTER_READ_FAILS, COUNTER_ORPHAN_RESPONSES,
           COUNTER_EXCHANGE_DROPS);
    return 0;
}
"""


def beyla_h_layout(tmp_path: Path) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to read beyla.h's layout"
    (tmp_path / "layout.c").write_text(LAYOUT_C)
    subprocess.run([cc, f"-I{REPO / 'probes'}", "-o", str(tmp_path / "layout"), str(tmp_path / "layout.c")],
                   check=True)
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def btf_struct(name: str) -> tuple[int, dict[str, int]]:
    """Size and member byte offsets of a struct in the built object's BTF."""
    dump = json.loads(subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(OBJECT)],
                                     capture_output=True, text=True, check=True).stdout)
    found = [t for t in dump["types"] if t.get("kind") == "STRUCT" and t.get("name") == name]
    assert len(found) == 1, name
    return found[0]["size"], {m["name"]: m["bits_offset"] // 8 for m in found[0]["members"]}


def test_record_layouts_match_beyla_h(tmp_path: Path) -> None:
    out = beyla_h_layout(tmp_path)
    assert out["conn_event"] == CONN_EVENT.size == 96
    assert [out[f"conn_event.{m}"] for m in ("type", "role", "flags", "pid", "tid", "ns_pid", "ns_tid", "ts_ns",
                                             "sock_id", "tuple", "comm")] == [0, 1, 2, 4, 8, 12, 16, 24, 32, 40, 80]
    assert (out["exchange.trace_id"], out["exchange.span_id"], out["exchange.tasks"]) == (104, 120, 128)
    assert out["exchange.traceparent"] == EXCHANGE.size == 128 + 8 * out["task_chain"] == 160
    assert out["exchange.data"] == EXCHANGE_DATA == 160 + out["tp"] == 160 + events.TRACEPARENT_CAPTURE
    assert [out[f"exchange.{m}"] for m in ("sock_id", "req_start_ns", "resp_bytes", "parent_sock", "req_head",
                                           "req_len", "resp_off")] == [16, 24, 64, 72, 88, 96, 100]
    assert (out["req_max"], out["resp_max"]) == (events.REQ_CAPTURE_MAX, events.RESP_CAPTURE_MAX)
    assert (out["FLAG_TLS"], out["FLAG_TRACEPARENT"], out["FLAG_TRUNCATED"]) == (
        events.FLAG_TLS, events.FLAG_TRACEPARENT, events.FLAG_TRUNCATED)
    assert (out["END_NEXT_REQUEST"], out["END_CLOSE"]) == (End.NEXT_REQUEST, End.CLOSE)
    assert (out["FLAG_CONTEXT"], out["FLAG_CONTEXT_REMOTE"]) == (events.FLAG_CONTEXT, events.FLAG_CONTEXT_REMOTE)
    assert (out["EVENT_EXCHANGE"], out["EVENT_PROCESS_LISTEN"]) == (EventType.EXCHANGE, EventType.PROCESS_LISTEN)
    assert [out["COUNTER_EVENT_DROPS"], out["COUNTER_READ_FAILS"], out["COUNTER_ORPHAN_RESPONSES"],
            out["COUNTER_EXCHANGE_DROPS"]] == [
        COUNTER_NAMES.index(name) for name in ("event_drops", "read_fails", "orphan_responses", "exchange_drops")]
    assert (out["exec_event.exe"], out["exec_event.path_len"], out["exec_event.path"]) == (
        CONN_EVENT.size, CONN_EVENT.size + 16, CONN_EVENT.size + EXEC_EXTRA.size)
    assert out["exec_event"] == CONN_EVENT.size + EXEC_EXTRA.size + events.EXE_PATH_MAX == 96 + 24 + 256
    assert (out["path_max"], out["FLAG_PENDING"]) == (events.EXE_PATH_MAX, events.FLAG_PENDING)
    assert [out[f"h2_chunk.{m}"] for m in ("type", "flags", "role", "recv", "pid", "ns_pid", "tid", "sock_id",
                                           "ts_ns", "seq", "moved", "len")] == [0, 1, 2, 3, 4, 8, 12, 16, 24, 32, 36, 40]
    assert out["h2_chunk.data"] == H2_CHUNK.size == 48
    assert (out["h2_max"], out["EVENT_H2_CHUNK"]) == (events.H2_CHUNK_MAX, EventType.H2_CHUNK)
    assert out["COUNTER_H2_DROPS"] == COUNTER_NAMES.index("h2_chunk_drops")


@pytest.mark.bpf
def test_kernel_state_layouts_match_the_object_btf() -> None:
    size, members = btf_struct("exchange")
    assert members["traceparent"] == EXCHANGE.size and members["data"] == EXCHANGE_DATA
    assert (members["trace_id"], members["span_id"], members["tasks"]) == (104, 120, 128)
    assert size == EXCHANGE_DATA + events.REQ_CAPTURE_MAX + events.RESP_CAPTURE_MAX
    size, members = btf_struct("conn_state")
    assert members["rec"] == CONN_STATE.size == 24 and members["phase"] == 0 and members["tp_len"] == 16
    assert members["announced"] == ANNOUNCED_IN_STATE
    assert RESP_END_IN_STATE.size == CONN_STATE.size + btf_struct("exchange")[1]["resp_end_ns"] + 8
    size, members = btf_struct("listen_key")
    assert size == _LISTEN_KEY.size and members == {"netns": 0, "port": 4, "_pad": 6}


def exchange_record(request: bytes = b"GET / HTTP/1.1\r\n\r\n", response: bytes = b"HTTP/1.1 200 OK\r\n\r\n",
                    flags: int = 0, end: int = 1, role: int = 1, resp_off: int = 256,
                    traceparent: bytes = b"", ids: tuple[bytes, bytes] = (b"", b""),
                    tasks: tuple[int, int, int, int] = (0, 0, 0, 0)) -> bytes:
    head = EXCHANGE.pack(EventType.EXCHANGE, flags, role, end, 1000, 7, 1001, 0xFFFF8881, 10, 20, 30, 40,
                         5000, 6000, 0xAB, 5, 18, 19, len(request), len(response), resp_off, *ids, *tasks)
    data = bytearray(resp_off + 64)
    data[:len(request)] = request
    data[resp_off:resp_off + len(response)] = response
    return head + traceparent.ljust(events.TRACEPARENT_CAPTURE, b"\0") + bytes(data)


def test_decode_exchange_record() -> None:
    rec = Decoder().decode(exchange_record(flags=events.FLAG_TLS | events.FLAG_TRACEPARENT,
                                           traceparent=b"traceparent: 00-abc"))
    assert isinstance(rec, ExchangeRecord)
    assert rec == ExchangeRecord(0xFFFF8881, 1000, 7, 1001, Role.SERVER, End.NEXT_REQUEST, 3, 10, 20, 30, 40,
                                 5000, 6000, (0xAB, 5), 18, 19, b"GET / HTTP/1.1\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\n\r\n", b"traceparent: 00-abc".ljust(events.TRACEPARENT_CAPTURE, b"\0"))
    assert rec.tls and rec.key == (0xFFFF8881, 10) and (rec.trace_id, rec.span_id) == (0, 0)
    assert rec.tasks == ()
    assert decode_exchange(exchange_record(), End.SWEEP).end is End.SWEEP  # type: ignore[union-attr]


def test_decode_kernel_context() -> None:
    ids = (bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331"))
    rec = decode_exchange(exchange_record(flags=events.FLAG_CONTEXT, ids=ids))
    assert rec is not None and (rec.trace_id, rec.span_id) == (0x0af7651916cd43dd8448eb211c80319c, 0xb7ad6b7169203331)
    ignored = decode_exchange(exchange_record(ids=ids))  # no FLAG_CONTEXT: stale bytes, not ids
    assert ignored is not None and (ignored.trace_id, ignored.span_id) == (0, 0)


def test_decode_task_chain() -> None:
    """The Tasks up to the first unknown one, innermost first."""
    chain = decode_exchange(exchange_record(role=2, tasks=(0x7f10, 0x7f20, 0x7f30, 0)))
    assert chain is not None and chain.tasks == (0x7f10, 0x7f20, 0x7f30)
    cut = decode_exchange(exchange_record(role=2, tasks=(0x7f10, 0, 0x7f30, 0x7f40)))
    assert cut is not None and cut.tasks == (0x7f10,)
    full = decode_exchange(exchange_record(role=2, tasks=(1, 2, 3, 4)))
    assert full is not None and full.tasks == (1, 2, 3, 4)
    none = decode_exchange(exchange_record(role=2, tasks=(0, 2, 3, 4)))
    assert none is not None and none.tasks == ()


def test_malformed_exchange_records_are_rejected() -> None:
    good = exchange_record()
    assert decode_exchange(good[:EXCHANGE_DATA - 1]) is None  # truncated header
    assert decode_exchange(good[:EXCHANGE_DATA + 100]) is None  # response prefix beyond the record
    assert decode_exchange(exchange_record(end=9)) is None
    assert decode_exchange(exchange_record(role=5)) is None
    assert decode_exchange(exchange_record(request=b"x" * 300)) is None  # request prefix past resp_off
    assert Decoder().decode(b"") is None


def conn_record(etype: int, family: int = socket.AF_INET, flags: int = 0) -> bytes:
    saddr = socket.inet_pton(socket.AF_INET, "10.1.2.3") + bytes(12)
    daddr = socket.inet_pton(socket.AF_INET, "10.9.8.7") + bytes(12)
    return CONN_EVENT.pack(etype, 1, flags, 1000, 1001, 7, 8, 123, 0xFFFF8881, saddr, daddr, 8080, 43210,
                           family, b"nginx".ljust(16, b"\0"))


def h2_record(data: bytes, moved: int, flags: int = 0, role: int = 1, recv: int = 1, length: int | None = None) -> bytes:
    head = H2_CHUNK.pack(EventType.H2_CHUNK, flags, role, recv, 1000, 7, 1001, 0xFFFF8881, 55, 3, moved,
                         len(data) if length is None else length)
    return head + data


def test_decode_h2_chunk() -> None:
    chunk = Decoder().decode(h2_record(b"\0\0\4\1\5\0\0\0\1abcd", 16017, flags=events.FLAG_TLS))
    assert chunk == H2Chunk(0xFFFF8881, 1000, 7, 1001, Role.SERVER, True, events.FLAG_TLS, 3, 55, 16017,
                            b"\0\0\4\1\5\0\0\0\1abcd")
    assert chunk.tls


def test_malformed_h2_chunks_are_rejected() -> None:
    decode = Decoder().decode
    assert decode(h2_record(b"abc", 3)[:H2_CHUNK.size - 1]) is None  # short header
    assert decode(h2_record(b"abc", 3, length=4)) is None  # data shorter than its length
    assert decode(h2_record(b"abc", 2)) is None  # more kept bytes than covered
    assert decode(h2_record(b"abc", 3, role=3)) is None
    assert decode(h2_record(b"abc", 3, recv=2)) is None
    assert decode(h2_record(b"x" * (events.H2_CHUNK_MAX + 1), 5000)) is None


def test_decode_connection_and_process_events() -> None:
    decoder = Decoder()
    ev = decoder.decode(conn_record(EventType.CONN_OPEN, flags=events.FLAG_TLS))
    assert ev is not None and not isinstance(ev, ExchangeRecord)
    assert (ev.type, ev.role, ev.ts_ns, ev.sock_id, ev.pid, ev.tid, ev.ns_pid, ev.ns_tid, ev.comm, ev.tls) == (
        EventType.CONN_OPEN, Role.SERVER, 123, 0xFFFF8881, 1000, 1001, 7, 8, "nginx", True)
    assert ev.tuple == ("10.1.2.3", 8080, "10.9.8.7", 43210)
    for etype in PROCESS_EVENTS:
        decoded = decoder.decode(conn_record(etype))
        assert decoded is not None and decoded.type == etype  # type: ignore[union-attr]
    assert decoder.decode(conn_record(9)) is None
    assert decoder.decode(conn_record(EventType.CONN_OPEN)[:50]) is None
    v6 = decoder.decode(conn_record(EventType.CONN_CLOSE, family=socket.AF_INET6))
    assert v6 is not None and v6.tuple.local_addr == "a01:203::"  # type: ignore[union-attr]


def test_decode_exec_event_with_executable() -> None:
    path = b"/usr/bin/curl"
    extra = EXEC_EXTRA.pack(1234, (8 << 20) | 1, 77, len(path)) + path
    ev = Decoder().decode(conn_record(EventType.PROCESS_EXEC, flags=events.FLAG_PENDING) + extra)
    assert ev is not None and not isinstance(ev, ExchangeRecord)
    assert (ev.type, ev.pending, ev.exe, ev.path) == (EventType.PROCESS_EXEC, True, (1234, (8 << 20) | 1, 77),
                                                       "/usr/bin/curl")
    plain = Decoder().decode(conn_record(EventType.PROCESS_EXEC))  # no selection at exec: no executable
    assert plain is not None and (plain.pending, plain.exe, plain.path) == (False, None, "")  # type: ignore[union-attr]
    bad = EXEC_EXTRA.pack(1234, 1, 0, 300) + path  # a path longer than the record
    assert Decoder().decode(conn_record(EventType.PROCESS_EXEC) + bad) is None
