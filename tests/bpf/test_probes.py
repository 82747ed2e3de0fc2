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
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beyla_sidecar.bpf import features
from beyla_sidecar.bpf.events import EXCHANGE_DATA, End, Event, EventType, ExchangeRecord, Role
from beyla_sidecar.bpf.libbpf import BpfError, BpfObject
from beyla_sidecar.bpf.loader import Probes, pid_namespace_inode
from beyla_sidecar.bpf.strategy import TRACEPOINT, UPROBE_PROGRAMS

from ..kernel import bpf_prog_ids, loaded_programs, still_loaded
from .conftest import Traffic, collect
from .traffic import payload

pytestmark = pytest.mark.bpf  # loads the probes; runs pods and setpriv

PLAN = [
    {"send": "send", "recv": "recv", "request": 100, "reply": 50},
    {"send": "write", "recv": "read", "request": 200, "reply": 60},
    {"send": "sendmsg2", "recv": "readv2", "request": 300, "reply": 70},
    {"send": "send", "recv": "recvmsg", "request": 5000, "reply": 80},
    {"send": "write", "recv": "peek_recv", "request": 120, "reply": 90},
]
REPO = Path(__file__).resolve().parents[2]


def first_iovec(method: str, data: bytes) -> bytes:
    """What the probes see of one syscall's buffer: the first iovec."""
    return data[: len(data) // 2] if method in ("sendmsg2", "readv2") else data


def expected_exchanges(plan: list[dict], req_capture: int, resp_capture: int) -> list[tuple]:
    """(role, end, request bytes, response bytes, request prefix, response prefix) of each
    exchange: one per step and side; the last ends with the close."""
    out = []
    for i, step in enumerate(plan):
        req, rep = payload(f"req{i}", step["request"]), payload(f"rep{i}", step["reply"])
        end = End.CLOSE if i == len(plan) - 1 else End.NEXT_REQUEST
        out += [
            (Role.CLIENT, end, len(req), len(rep), first_iovec(step["send"], req)[:req_capture], rep[:resp_capture]),
            (Role.SERVER, end, len(req), len(rep), first_iovec(step["recv"], req)[:req_capture], rep[:resp_capture]),
        ]
    return out


def of_type(events: list, etype: EventType) -> list[Event]:
    return sorted((e for e in events if isinstance(e, Event) and e.type == etype), key=lambda e: e.ts_ns)


def exchanges(events: list) -> list[ExchangeRecord]:
    return sorted((e for e in events if isinstance(e, ExchangeRecord)), key=lambda e: e.req_start_ns)


def run_pod_traffic(probes: Probes, traffic: Callable[[list[dict], bool], Traffic],
                    plan: list[dict], sizes: list[int] | None = None) -> tuple[list, dict, dict]:
    """Same plan inside a new PID namespace (allowed) and outside it, concurrently (`sizes`: as
    collect's)."""
    inside, outside = traffic(plan, True), traffic(plan, False)
    assert inside.ns_inode != outside.ns_inode == pid_namespace_inode()
    probes.allow_pid_namespace(inside.ns_inode)
    inside.start()
    outside.start()
    inside_result, outside_result = inside.result(), outside.result()
    total = 2 + 2 * len(plan) + 2  # opens, exchanges, closes
    events = collect(probes, lambda evs: sum(e.type != EventType.PROCESS_LISTEN for e in evs
                                             if isinstance(e, Event)) + len(exchanges(evs)) >= total,
                     sizes=sizes)
    return events, inside_result, outside_result


def test_probes_load_and_attach(probes: Probes) -> None:
    assert probes.strategy == "tracepoint"
    assert sorted(probes.program_names) == sorted(TRACEPOINT.programs)
    # the OpenSSL uprobe programs are loaded too, attached later per library (discover/)
    assert sorted(bpf_prog_ids().values()) == sorted(TRACEPOINT.programs + UPROBE_PROGRAMS)
    assert probes.counters() == {"event_drops": 0, "read_fails": 0, "orphan_responses": 0, "exchange_drops": 0,
                                "h2_chunk_drops": 0}


def test_pod_traffic_is_one_exact_record_per_exchange_and_outside_traffic_is_invisible(
        probes: Probes, traffic: Callable[[list[dict], bool], Traffic]) -> None:
    events, inside, outside = run_pod_traffic(probes, traffic, PLAN)
    sport, cport = inside["server_port"], inside["client_port"]

    # Only the pod's process: pid 1 of the new namespace, some other pid on the host.
    assert {(e.ns_pid, e.pid == e.ns_pid) for e in events} == {(1, False)}
    assert len({e.pid for e in events}) == 1

    opens = {e.role: e for e in of_type(events, EventType.CONN_OPEN)}
    assert len(of_type(events, EventType.CONN_OPEN)) == 2
    assert opens[Role.SERVER].tuple == ("127.0.0.1", sport, "127.0.0.1", cport)
    assert opens[Role.CLIENT].tuple == ("127.0.0.1", cport, "127.0.0.1", sport)
    assert opens[Role.CLIENT].ns_tid == 1 and opens[Role.SERVER].ns_tid != 1
    sock_of = {role: e.sock_id for role, e in opens.items()}
    assert sorted((e.role, e.sock_id) for e in of_type(events, EventType.CONN_CLOSE)) == sorted(
        (role, sock) for role, sock in sock_of.items())
    assert [e.tuple.local_port for e in of_type(events, EventType.PROCESS_LISTEN)] == [0]  # a process event

    got = exchanges(events)
    assert sorted((r.role, r.end, r.req_bytes, r.resp_bytes, r.request, r.response) for r in got) == sorted(
        expected_exchanges(PLAN, probes.req_capture, probes.resp_capture))
    for r in got:
        assert r.sock_id == sock_of[r.role] and r.parent is None and not r.tls
        assert r.req_start_ns <= r.req_end_ns <= r.resp_start_ns <= r.resp_end_ns
        assert (r.req_head, r.resp_head) == (0, 0)  # binary payloads: no head end
    assert probes.counters() == {"event_drops": 0, "read_fails": 0, "orphan_responses": 0, "exchange_drops": 0,
                                "h2_chunk_drops": 0}


def test_capture_sizes_limit_prefixes_not_byte_counts(
        traffic: Callable[[list[dict], bool], Traffic]) -> None:
    plan = [{"send": "send", "recv": "recv", "request": 3000, "reply": 2000}]
    with Probes(req_capture=300, resp_capture=100) as probes:
        events, _, _ = run_pod_traffic(probes, traffic, plan)
    assert sorted((r.role, r.req_bytes, r.resp_bytes, len(r.request), len(r.response))
                  for r in exchanges(events)) == [(Role.SERVER, 3000, 2000, 300, 100), (Role.CLIENT, 3000, 2000, 300, 100)]
    assert {r.request for r in exchanges(events)} == {payload("req0", 3000)[:300]}


def test_an_exchange_record_ends_with_its_response_prefix(
        probes: Probes, traffic: Callable[[list[dict], bool], Traffic]) -> None:
    """The response prefix follows the request's in the record: no unused capture room is sent."""
    sizes: list[int] = []
    events, _, _ = run_pod_traffic(probes, traffic, PLAN[:2], sizes)
    got = [(len(e.request), len(e.response), size)
           for e, size in zip(events, sizes) if isinstance(e, ExchangeRecord)]
    assert sorted(got) == sorted([(100, 50, EXCHANGE_DATA + 150)] * 2 + [(200, 60, EXCHANGE_DATA + 260)] * 2)


def lost(counters: dict[str, int]) -> int:
    return counters["event_drops"] + counters["exchange_drops"]


def test_full_ring_buffer_counts_every_lost_record(
        traffic: Callable[[list[dict], bool], Traffic]) -> None:
    """Nothing is lost silently: received + counted drops == records the traffic causes."""
    plan = [{"send": "send", "recv": "recv", "request": 500, "reply": 500}] * 40
    page = os.sysconf("SC_PAGE_SIZE")
    # The same run with room for everything: the sockets' records plus the traffic
    # process's lifecycle events (listen, exit).
    with Probes() as probes:
        inside = traffic(plan, True)
        probes.allow_pid_namespace(inside.ns_inode)
        inside.start()
        inside.result()
        expected = len(collect(probes, lambda evs: False, wait_s=0.5))
    assert expected >= 2 + 2 * len(plan) + 2 + 1
    with Probes(ringbuf_size=page) as probes:  # room for a handful of records
        inside = traffic(plan, True)
        probes.allow_pid_namespace(inside.ns_inode)
        inside.start()
        inside.result()
        events = collect(probes, lambda evs: len(evs) + lost(probes.counters()) >= expected)
        counters = probes.counters()
    assert counters["exchange_drops"] > 0
    assert len(events) + lost(counters) == expected  # each record lost counts once, by its kind
    assert counters["read_fails"] == 0


def test_socket_opened_before_probes_keeps_its_role_from_the_listening_port() -> None:
    """Even a server thread already blocked in recv() when the probes attach: the receive's
    buffer comes from the syscall's registers, so nothing of the exchange is lost."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    ports = {listener.getsockname()[1], client.getsockname()[1]}
    received: list[bytes] = []
    blocked = threading.Thread(target=lambda: received.append(server.recv(40, socket.MSG_WAITALL)))
    blocked.start()
    with Probes() as probes, client, server, listener:
        probes.allow_pid_namespace(pid_namespace_inode())  # this process's namespace
        netns = os.stat("/proc/self/ns/net").st_ino
        probes.add_listen_ports(netns, [listener.getsockname()[1]])
        client.sendall(b"ping" * 10)
        blocked.join(5)
        server.sendall(b"pong" * 5)
        assert client.recv(20, socket.MSG_WAITALL) == b"pong" * 5
        server.close()
        client.close()
        # The host namespace may carry other traffic: keep only this pair's records.
        found = collect(probes, lambda evs: False, wait_s=0.3)
    assert received == [b"ping" * 10]
    opens = {e.sock_id: e.role for e in of_type(found, EventType.CONN_OPEN)
             if {e.tuple.local_port, e.tuple.remote_port} == ports}
    assert sorted(opens.values()) == [Role.SERVER, Role.CLIENT]
    mine = [r for r in exchanges(found) if r.sock_id in opens]
    assert sorted((r.role, r.req_bytes, r.resp_bytes, r.request, r.response) for r in mine) == [
        (Role.SERVER, 40, 20, b"ping" * 10, b"pong" * 5), (Role.CLIENT, 40, 20, b"ping" * 10, b"pong" * 5)]


# A keep-alive pair in a new PID namespace: one exchange per line read, closed at EOF.
KEEPALIVE_PAIR = textwrap.dedent("""
    import json, os, socket, sys
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    print(json.dumps([os.stat("/proc/self/ns/pid").st_ino, listener.getsockname()[1]]), flush=True)
    for _ in sys.stdin:
        client.sendall(b"ping")
        assert server.recv(4, socket.MSG_WAITALL) == b"ping"
        server.sendall(b"pong")
        assert client.recv(4, socket.MSG_WAITALL) == b"pong"
        print("ok", flush=True)
""")


@pytest.fixture
def keepalive_exchange(probes: Probes) -> Iterator[Callable[[], None]]:
    """One exchange of KEEPALIVE_PAIR per call, the pair's namespace allowed in `probes`."""
    pair = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", KEEPALIVE_PAIR],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert pair.stdin is not None and pair.stdout is not None
    stdin, stdout = pair.stdin, pair.stdout
    pid_namespace, port = json.loads(stdout.readline())
    probes.allow_pid_namespace(pid_namespace)
    probes.add_listen_ports(os.stat("/proc/self/ns/net").st_ino, [port])  # opened before the probes

    def exchange() -> None:
        stdin.write("x\n")
        stdin.flush()
        assert stdout.readline() == "ok\n"

    yield exchange
    stdin.close()
    assert pair.wait(10) == 0


def test_responses_begun_says_when_a_walk_of_conns_can_find_more(
        probes: Probes, keepalive_exchange: Callable[[], None]) -> None:
    assert probes.idle_exchanges(0, time.monotonic_ns()) == ([], None)
    assert not probes.responses_begun()
    before = time.monotonic_ns()
    keepalive_exchange()
    after = time.monotonic_ns()
    assert probes.responses_begun()
    # both ends are answering (the server sent, the client received): not quiet for 10 s
    scan = probes.idle_exchanges(10_000_000_000, time.monotonic_ns())
    assert scan.records == [] and before + 10_000_000_000 < scan.quiet_at_ns < after + 10_000_000_000
    assert not probes.responses_begun()  # cleared by the walk
    scan = probes.idle_exchanges(0, time.monotonic_ns())
    assert scan.quiet_at_ns is None
    assert sorted((r.role, r.request, r.response, r.end) for r in scan.records) == [
        (Role.SERVER, b"ping", b"pong", End.SWEEP), (Role.CLIENT, b"ping", b"pong", End.SWEEP)]
    assert not probes.responses_begun()  # nothing began since: a sweep can skip the walk
    keepalive_exchange()
    assert probes.responses_begun()


def test_an_idle_wait_ends_when_a_response_begins(probes: Probes, keepalive_exchange: Callable[[], None]) -> None:
    def timed_poll(**idle: int) -> float:
        later = threading.Timer(0.3, keepalive_exchange)
        later.start()
        start = time.monotonic()
        probes.poll(1500, lambda record: None, **idle)
        elapsed = time.monotonic() - start
        later.join(5)
        probes.idle_exchanges(0, time.monotonic_ns())  # clears responses_begun
        return elapsed

    # its records alone wake nobody (the ring is far from a quarter full): the whole timeout
    assert timed_poll() >= 1.5
    # the same exchange's response ends a longer idle wait at once
    assert 0.3 <= timed_poll(idle_ms=10_000) < 1.0
    # a response begun before the wait: the plain timeout applies (here 0.2 s, not 10 s)
    keepalive_exchange()
    start = time.monotonic()
    probes.poll(200, lambda record: None, idle_ms=10_000)
    assert time.monotonic() - start < 1.0


def test_close_unloads_every_program() -> None:
    probes = Probes()
    ours = bpf_prog_ids()
    assert sorted(ours.values()) == sorted(TRACEPOINT.programs + UPROBE_PROGRAMS)
    assert ours.items() <= loaded_programs().items()
    probes.close()
    probes.close()  # idempotent
    assert bpf_prog_ids() == {}
    assert not still_loaded(ours)
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
    assert not still_loaded(held)


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
    assert found.btf and found.bpf_allowed and found.ringbuf
    assert found.tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
    assert found.missing_btf_tracepoints == ()
    assert found.uprobes
    assert found.fentry == (found.fentry_error is None)
    assert found.strategy == "tracepoint"
    assert found.problems == ()
    assert found.ok
    assert "attach strategy      tracepoint" in found.render().splitlines()


def test_bad_arguments_are_rejected_before_loading(probes: Probes) -> None:
    with pytest.raises(ValueError, match="req_capture"):
        Probes(req_capture=4096)
    with pytest.raises(ValueError, match="resp_capture"):
        Probes(resp_capture=257)
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
