"""The HTTP probes on the real kernel: load/attach, exact events for a simulated pod (a new
PID namespace) and none for processes outside it, capture limits, clean unload."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from beyla_sidecar.bpf import features
from beyla_sidecar.bpf.events import Direction, Event, EventType, Role
from beyla_sidecar.bpf.libbpf import BpfError, BpfObject
from beyla_sidecar.bpf.loader import Probes, pid_namespace_inode
from beyla_sidecar.bpf.strategy import TRACEPOINT, UPROBE_PROGRAMS

from ..kernel import bpf_prog_ids, loaded_programs
from .conftest import Traffic, collect
from .traffic import payload

PLAN = [
    {"send": "send", "recv": "recv", "request": 100, "reply": 50},
    {"send": "write", "recv": "read", "request": 200, "reply": 60},
    {"send": "sendmsg2", "recv": "readv2", "request": 300, "reply": 70},
    {"send": "send", "recv": "recvmsg", "request": 5000, "reply": 80},
    {"send": "write", "recv": "peek_recv", "request": 120, "reply": 90},
]
REPO = Path(__file__).resolve().parents[2]


def expected_capture(step_method: str, data: bytes, capture_size: int) -> bytes:
    """What the probes capture of one syscall: the first iovec, at most capture_size."""
    first = data[: len(data) // 2] if step_method in ("sendmsg2", "readv2") else data
    return first[:capture_size]


def expected_data(plan: list[dict], capture_size: int) -> list[tuple[Role, Direction, int, bytes]]:
    out = []
    for i, step in enumerate(plan):
        req, rep = payload(f"req{i}", step["request"]), payload(f"rep{i}", step["reply"])
        out += [
            (Role.CLIENT, Direction.SEND, len(req), expected_capture(step["send"], req, capture_size)),
            (Role.SERVER, Direction.RECV, len(req), expected_capture(step["recv"], req, capture_size)),
            (Role.SERVER, Direction.SEND, len(rep), rep[:capture_size]),
            (Role.CLIENT, Direction.RECV, len(rep), rep[:capture_size]),
        ]
    return out


def of_type(events: list[Event], etype: EventType) -> list[Event]:
    return sorted((e for e in events if e.type == etype), key=lambda e: e.ts_ns)


def run_pod_traffic(probes: Probes, traffic: Callable[[list[dict], bool], Traffic],
                    plan: list[dict]) -> tuple[list[Event], dict, dict]:
    """Same plan inside a new PID namespace (allowed) and outside it, concurrently."""
    inside, outside = traffic(plan, True), traffic(plan, False)
    assert inside.ns_inode != outside.ns_inode == pid_namespace_inode()
    probes.allow_pid_namespace(inside.ns_inode)
    inside.start()
    outside.start()
    inside_result, outside_result = inside.result(), outside.result()
    total = 2 + 4 * len(plan) + 2  # opens, data, closes
    events = collect(probes, lambda evs: len(evs) >= total)
    return events, inside_result, outside_result


def test_probes_load_and_attach(probes: Probes) -> None:
    assert probes.strategy == "tracepoint"
    assert sorted(probes.program_names) == sorted(TRACEPOINT.programs)
    # the OpenSSL uprobe programs are loaded too, attached later per library (discover/)
    assert sorted(bpf_prog_ids().values()) == sorted(TRACEPOINT.programs + UPROBE_PROGRAMS)
    assert probes.counters() == {"ringbuf_drops": 0, "read_fails": 0}


def test_pod_traffic_is_exact_and_outside_traffic_is_invisible(
        probes: Probes, traffic: Callable[[list[dict], bool], Traffic]) -> None:
    events, inside, outside = run_pod_traffic(probes, traffic, PLAN)
    sport, cport = inside["server_port"], inside["client_port"]

    # Only the pod's process: pid 1 of the new namespace, some other pid on the host.
    assert {(e.ns_pid, e.pid == e.ns_pid) for e in events} == {(1, False)}
    assert len({e.pid for e in events}) == 1
    outside_ports = {outside["server_port"], outside["client_port"]}
    assert not [e for e in events if {e.tuple.local_port, e.tuple.remote_port} & outside_ports]

    opens = {e.role: e for e in of_type(events, EventType.CONN_OPEN)}
    assert len(of_type(events, EventType.CONN_OPEN)) == 2
    assert opens[Role.SERVER].tuple == ("127.0.0.1", sport, "127.0.0.1", cport)
    assert opens[Role.CLIENT].tuple == ("127.0.0.1", cport, "127.0.0.1", sport)
    assert opens[Role.CLIENT].ns_tid == 1 and opens[Role.SERVER].ns_tid != 1
    sock_of = {role: e.sock_id for role, e in opens.items()}

    closes = of_type(events, EventType.CONN_CLOSE)
    assert sorted((e.role, e.sock_id, e.tuple) for e in closes) == sorted(
        (e.role, e.sock_id, e.tuple) for e in opens.values())

    data = of_type(events, EventType.DATA)
    got = [(e.role, e.direction, e.bytes, e.payload) for e in data]
    assert sorted(got) == sorted(expected_data(PLAN, probes.capture_size))
    for e in data:
        assert e.sock_id == sock_of[e.role]
        assert e.tuple == opens[e.role].tuple
        assert len(e.payload) == min(e.bytes, probes.capture_size, len(e.payload))
    assert probes.counters() == {"ringbuf_drops": 0, "read_fails": 0}


def test_capture_size_limits_payload_not_byte_count(
        traffic: Callable[[list[dict], bool], Traffic]) -> None:
    plan = [{"send": "send", "recv": "recv", "request": 3000, "reply": 2000}]
    with Probes(capture_size=300) as probes:
        events, _, _ = run_pod_traffic(probes, traffic, plan)
    data = of_type(events, EventType.DATA)
    assert sorted((e.role, e.direction, e.bytes, len(e.payload)) for e in data) == sorted([
        (Role.CLIENT, Direction.SEND, 3000, 300), (Role.SERVER, Direction.RECV, 3000, 300),
        (Role.SERVER, Direction.SEND, 2000, 300), (Role.CLIENT, Direction.RECV, 2000, 300)])
    assert [e.payload for e in data if e.direction == Direction.SEND and e.role == Role.CLIENT] \
        == [payload("req0", 3000)[:300]]


def test_full_ring_buffer_counts_every_lost_event(
        traffic: Callable[[list[dict], bool], Traffic]) -> None:
    """Nothing is lost silently: received + counted drops == events the traffic causes."""
    plan = [{"send": "send", "recv": "recv", "request": 500, "reply": 500}] * 40
    page = os.sysconf("SC_PAGE_SIZE")
    # The same run with room for everything: the sockets' events plus the traffic
    # process's lifecycle events (listen, a lazy import's mmap, exit).
    with Probes() as probes:
        inside = traffic(plan, True)
        probes.allow_pid_namespace(inside.ns_inode)
        inside.start()
        inside.result()
        expected = len(collect(probes, lambda evs: False, wait_s=0.5))
    assert expected >= 2 + 4 * len(plan) + 2 + 1
    with Probes(ringbuf_size=page) as probes:  # room for a handful of records
        inside = traffic(plan, True)
        probes.allow_pid_namespace(inside.ns_inode)
        inside.start()
        inside.result()
        events = collect(probes, lambda evs: len(evs) + probes.counters()["ringbuf_drops"] >= expected)
        counters = probes.counters()
    assert counters["ringbuf_drops"] > 0
    assert len(events) + counters["ringbuf_drops"] == expected
    assert counters["read_fails"] == 0


def test_socket_opened_before_probes_has_unknown_role() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    ports = {listener.getsockname()[1], client.getsockname()[1]}
    with Probes() as probes, client, server, listener:
        probes.allow_pid_namespace(pid_namespace_inode())  # this process's namespace
        client.sendall(b"ping" * 10)
        assert server.recv(40, socket.MSG_WAITALL) == b"ping" * 10
        # The host namespace may carry other traffic: keep only this pair's events.
        mine = [e for e in collect(probes, lambda evs: False, wait_s=0.2)
                if {e.tuple.local_port, e.tuple.remote_port} == ports]
    assert sorted((e.type, e.role, e.direction, e.bytes, e.payload) for e in mine) == [
        (EventType.DATA, Role.UNKNOWN, Direction.SEND, 40, b"ping" * 10),
        (EventType.DATA, Role.UNKNOWN, Direction.RECV, 40, b"ping" * 10)]


def test_close_unloads_every_program() -> None:
    probes = Probes()
    ours = bpf_prog_ids()
    assert sorted(ours.values()) == sorted(TRACEPOINT.programs + UPROBE_PROGRAMS)
    assert ours.items() <= loaded_programs().items()
    probes.close()
    probes.close()  # idempotent
    assert bpf_prog_ids() == {}
    assert not ours.keys() & loaded_programs().keys()
    with pytest.raises(BpfError, match="closed"):
        probes.poll(0, lambda record: None)


SIGTERM_CHILD = textwrap.dedent("""
    import json, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from beyla_sidecar.bpf.loader import Probes
    from tests.kernel import bpf_prog_ids
    probes = Probes()
    stop = []
    def on_term(signum, frame):
        probes.close()  # runs while poll() is in progress: deferred until it returns
        stop.append(signum)
    signal.signal(signal.SIGTERM, on_term)
    print(json.dumps(bpf_prog_ids()), flush=True)
    while not stop:
        probes.poll(1000, lambda record: None)
    print(json.dumps(bpf_prog_ids()), flush=True)
""")


def test_sigterm_during_poll_leaves_nothing_loaded() -> None:
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(REPO)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    held = {int(k): v for k, v in json.loads(child.stdout.readline()).items()}
    assert sorted(held.values()) == sorted(TRACEPOINT.programs + UPROBE_PROGRAMS)
    child.send_signal(signal.SIGTERM)
    after_close = json.loads(child.stdout.readline())
    assert child.wait(timeout=10) == 0
    assert after_close == {}
    assert not held.keys() & loaded_programs().keys()


def test_unprivileged_user_gets_the_fix() -> None:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
         "from beyla_sidecar.bpf.loader import Probes; Probes()"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "ProbeSetupError" in proc.stderr
    assert features.FIX_PRIVILEGE in proc.stderr


def test_features_of_this_kernel() -> None:
    found = features.probe_features()
    assert found.btf and found.bpf_allowed and found.ringbuf and found.syscall_tracepoints
    assert found.tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    assert found.missing_btf_tracepoints == ()
    assert found.uprobes
    assert found.fentry == (found.fentry_error is None)
    assert found.strategy == "tracepoint"
    assert found.problems == ()
    assert found.ok
    assert "attach strategy      tracepoint" in found.render().splitlines()


def test_bad_arguments_are_rejected_before_loading(probes: Probes) -> None:
    with pytest.raises(ValueError, match="capture_size"):
        Probes(capture_size=4096)
    with pytest.raises(ValueError, match="power of two"):
        Probes(ringbuf_size=100_000)
    with pytest.raises(ValueError, match="unknown attach strategy"):
        Probes(strategy="kprobe-typo")
    with pytest.raises(ValueError, match="32-bit"):
        probes.allow_pid_namespace(0)
    with pytest.raises(ValueError, match="32-bit"):
        probes.allow_pid_namespace(1 << 32)


def test_verifier_rejection_carries_the_log(tmp_path: Path) -> None:
    clang = next(filter(None, map(shutil.which, ("clang-19", "clang-18", "clang-17", "clang-16"))))
    src = tmp_path / "bad.bpf.c"
    src.write_text(textwrap.dedent("""
        #include <linux/bpf.h>
        #include <bpf/bpf_helpers.h>
        struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
                 __type(key, __u32); __type(value, __u64); } m SEC(".maps");
        SEC("tp/syscalls/sys_enter_getpid")
        int out_of_bounds(void *ctx)
        {
            __u32 k = 0;
            __u64 *v = bpf_map_lookup_elem(&m, &k);
            return v ? (int)v[1] : 0;  /* reads past the 8-byte value */
        }
        char LICENSE[] SEC("license") = "GPL";
    """))
    obj_path = tmp_path / "bad.bpf.o"
    subprocess.run([clang, "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    "-c", str(src), "-o", str(obj_path)], check=True)
    obj = BpfObject(obj_path)
    try:
        with pytest.raises(BpfError) as err:
            obj.load()
    finally:
        obj.close()
    assert err.value.errno == 13  # EACCES: the verifier said no
    assert "invalid access to map value" in err.value.log
    assert "invalid access to map value" in str(err.value)
