"""Trace context propagation in the kernel (BEYLA_BPF_CONTEXT_PROPAGATION), end to end: two pods,
each with its own PID and network namespace, its own cgroup v2 with a child per container, and
its own sidecar; a veth between them. No application propagates anything.

Pod A runs a frontend (apps/server.py) whose /call route calls pod B; the requests come from
outside pod A (its network namespace, not its cgroup), as through an ingress. Pod B runs the
same server, or an uninstrumented recorder (apps/recorder.py) that keeps the exact bytes it got.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..privileges import DOCUMENTED, setpriv
from .netpod import CGROUP2, CgroupPod, link_pods
from .pod import APPS, ROOT, Sidecar

pytestmark = pytest.mark.bpf

A_ADDR, B_ADDR = "10.232.0.1", "10.232.0.2"
FRONT, BACK = 8081, 8080
N = 20
INJECTED = re.compile(rb"traceparent: 00-([0-9a-f]{32})-([0-9a-f]{16})-01\r\n")


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[tuple[CgroupPod, CgroupPod]]:
    tag = os.getpid() % 100000
    made: list[CgroupPod] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            made.append(CgroupPod(tmp_path / name, f"bsprop{name}{tag}"))
        link_pods(made[0], A_ADDR, made[1], B_ADDR)
        yield made[0], made[1]
    finally:
        for pod in made:
            pod.close()


def sidecar(pod: CgroupPod, mode: str, caps: tuple[str, ...] | None = None) -> Sidecar:
    """The pod's sidecar in its own container cgroup (with exactly `caps`, if given)."""
    wrapper = (*pod.container("sidecar"), *(setpriv(caps) if caps is not None else ()))
    return Sidecar(pod, {"BEYLA_BPF_CONTEXT_PROPAGATION": mode, "BEYLA_CGROUP2_MOUNT": str(CGROUP2)},
                   wrapper=wrapper)


def wait_listening(pod: CgroupPod, host: str, port: int) -> None:
    probe = ("import socket,sys,time\nfor _ in range(200):\n    try:\n"
             f"        socket.create_connection(('{host}', {port}), 1).close(); sys.exit(0)\n"
             "    except OSError: time.sleep(0.05)\nsys.exit(1)")
    pod.net([sys.executable, "-c", probe])


def start_server(pod: CgroupPod, port: int, host: str, service: str) -> None:
    pod.spawn([sys.executable, str(APPS / "server.py"), str(port), host],
              env={"OTEL_SERVICE_NAME": service, "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
    wait_listening(pod, host, port)


def start_recorder(pod: CgroupPod, mode: str, port: int) -> Path:
    out = pod.tmp / f"recorded-{mode}.jsonl"
    out.touch()
    pod.spawn([sys.executable, str(APPS / "recorder.py"), mode, B_ADDR, str(port), str(out)],
              stdout=subprocess.DEVNULL)
    wait_listening(pod, B_ADDR, port)
    return out


def recorded(path: Path, count: int) -> list[bytes]:
    deadline = time.monotonic() + 10
    while len(lines := path.read_text().splitlines()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [bytes.fromhex(json.loads(line)["raw"]) for line in lines]


def ingress(pod: CgroupPod, paths: list[str]) -> list[bytes]:
    """GET each path of the frontend from pod A's network namespace, outside the pod's cgroup."""
    out = []
    for path in paths:
        out.append(pod.net(["curl", "-sS", f"http://127.0.0.1:{FRONT}{path}"]).stdout)
    return out


def send(pod: CgroupPod, port: int, payloads: list[bytes | str], http: bool) -> list[bytes]:
    """apps/sender.py in pod A's app container; a str payload is the continuation of the previous
    request (its body, in its own write)."""
    args = [p.hex() if isinstance(p, bytes) else "+" + p.encode().hex() for p in payloads]
    out = pod.run([sys.executable, str(APPS / "sender.py"), *(["--http"] if http else []), B_ADDR, str(port),
                   *args]).stdout
    return [bytes.fromhex(a) for a in json.loads(out)]


def log_counters(s: Sidecar) -> dict[str, int]:
    """The propagation counters the sidecar logs (JSON) at its stop."""
    for line in s.err.read_text().splitlines():
        if line.startswith("{") and '"context_injected"' in line:
            entry = json.loads(line)
            return {k.removeprefix("context_"): v for k, v in entry.items() if k.startswith("context_")}
    raise AssertionError(f"no propagation counters logged:\n{s.err.read_text()}")


@pytest.mark.parametrize("mode", ["headers", "tcp", "all"])
def test_one_trace_across_pods(pods: tuple[CgroupPod, CgroupPod], mode: str) -> None:
    """With `tcp` the context goes in OBI's TCP option, checked byte for byte on the wire in pod
    B's network namespace: kind 25, length 26, A's client span's trace id and span id."""
    a, b = pods
    start_server(b, BACK, "0.0.0.0", "backend")
    start_server(a, FRONT, "127.0.0.1", "frontend")
    side_a, side_b = sidecar(a, mode), sidecar(b, mode)
    sniffer = subprocess.Popen(["nsenter", "--target", str(b.init_pid), "--net", "--", sys.executable,
                                str(APPS / "sniff.py"), "eth0", str(BACK), "6"], stdout=subprocess.PIPE)
    assert sniffer.stdout is not None and sniffer.stdout.readline() == b"ready\n"

    answers = ingress(a, [f"/call/{B_ADDR}:{BACK}/hello/{i}" for i in range(N)])
    assert answers == [b"hello\n"] * N

    spans_a = side_a.wait_spans(2 * N)
    spans_b = side_b.wait_spans(N)
    servers_a = [s for s in spans_a if s["kind"] == "SERVER"]
    clients_a = [s for s in spans_a if s["kind"] == "CLIENT"]
    servers_b = [s for s in spans_b if s["kind"] == "SERVER"]
    assert (len(servers_a), len(clients_a), len(servers_b), len(spans_a), len(spans_b)) == (N, N, N, 2 * N, N)
    by_span_a = {s["span_id"]: s for s in servers_a}
    clients = {s["span_id"]: s for s in clients_a}
    for client in clients_a:  # A's client span is the child of A's server span
        parent = by_span_a[client["parent_span_id"]]
        assert parent["trace_id"] == client["trace_id"] and parent["parent_span_id"] == ""
    for server in servers_b:  # B's server span: A's trace, A's client span as parent
        caller = clients[server["parent_span_id"]]
        assert caller["trace_id"] == server["trace_id"]
    assert {s["parent_span_id"] for s in servers_b} == set(clients)  # N of N, each once
    assert side_a.stop() == 0 and side_b.stop() == 0
    counted_a, counted_b = log_counters(side_a), log_counters(side_b)
    headers, tcp = mode in ("headers", "all"), mode in ("tcp", "all")
    assert (counted_a["injected"], counted_a["failed"], counted_a["doubt"]) == (N if headers else 0, 0, 0)
    assert counted_b["injected"] == counted_b["option_written"] == 0  # B only answers
    segments = [json.loads(line) for line in sniffer.communicate(timeout=30)[0].splitlines()]
    requests = [s for s in segments if s["payload"]]
    assert len(requests) == N  # one segment per request
    options = [[o for kind, o in s["options"] if kind == 25] for s in requests]
    if not tcp:
        assert options == [[]] * N
        return
    wire = {bytes.fromhex(o[0]) for o in options}
    expected = {bytes([25, 26]) + bytes.fromhex(c["trace_id"]) + bytes.fromhex(c["span_id"]) for c in clients_a}
    assert wire == expected  # OBI's layout, exactly the ids of A's client spans
    assert counted_a["option_written"] >= N and counted_b["option_read"] >= N


def test_tcp_option_over_https(pods: tuple[CgroupPod, CgroupPod], tmp_path: Path) -> None:
    """`tcp` carries the context where no header can go: the frontend calls pod B over HTTPS."""
    a, b = pods
    pem = tmp_path / "both.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=b",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem"], check=True, capture_output=True)
    pem.write_bytes((tmp_path / "key.pem").read_bytes() + (tmp_path / "cert.pem").read_bytes())
    b.spawn([sys.executable, str(APPS / "tls_server.py"), str(pem), str(BACK)],
            env={"BIND": B_ADDR, "OTEL_SERVICE_NAME": "backend", "PATH": "/usr/bin:/bin"}, stdout=subprocess.DEVNULL)
    wait_listening(b, B_ADDR, BACK)
    start_server(a, FRONT, "127.0.0.1", "frontend")
    side_a, side_b = sidecar(a, "tcp"), sidecar(b, "tcp")
    assert ingress(a, [f"/calls/{B_ADDR}:{BACK}/hello/{i}" for i in range(N)]) == [b"hello\n"] * N
    spans_a, spans_b = side_a.wait_spans(2 * N), side_b.wait_spans(N)
    clients = {s["span_id"]: s for s in spans_a if s["kind"] == "CLIENT"}
    servers_b = [s for s in spans_b if s["kind"] == "SERVER"]
    assert len(spans_a) == 2 * N and len(clients) == N and len(servers_b) == len(spans_b) == N
    for server in servers_b:
        assert clients[server["parent_span_id"]]["trace_id"] == server["trace_id"]
    assert {s["parent_span_id"] for s in servers_b} == set(clients)


def test_needs_net_admin_and_says_so(pods: tuple[CgroupPod, CgroupPod]) -> None:
    """The documented capabilities plus NET_ADMIN are enough; without NET_ADMIN `run` stops with
    one error naming the fix."""
    a, b = pods
    out = start_recorder(b, "http", BACK)
    start_server(a, FRONT, "127.0.0.1", "frontend")
    with pytest.raises(RuntimeError) as refused:
        sidecar(a, "headers", DOCUMENTED)
    errors = [line for line in str(refused.value).splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "add NET_ADMIN to the sidecar's capabilities" in errors[0]
    check = [sys.executable, "-m", "beyla_sidecar.cli", "check"]
    env = {"BEYLA_BPF_CONTEXT_PROPAGATION": "headers", "BEYLA_CGROUP2_MOUNT": str(CGROUP2), "PATH": "/usr/bin:/bin"}
    said = subprocess.run(a._nsenter([*a.container("sidecar"), *setpriv(DOCUMENTED), "env", *(f"{k}={v}" for k, v in
                                      env.items()), *check]), capture_output=True, text=True, cwd=ROOT).stdout
    assert "context propagation  no\nproblem: context propagation needs CAP_NET_ADMIN" in said
    side_a = sidecar(a, "headers", (*DOCUMENTED, "NET_ADMIN"))
    ingress(a, [f"/call/{B_ADDR}:{BACK}/x/{i}" for i in range(3)])
    assert all(INJECTED.search(r) for r in recorded(out, 3))
    assert side_a.stop() == 0 and log_counters(side_a)["injected"] == 3


def test_incoming_traceparent_is_continued(pods: tuple[CgroupPod, CgroupPod]) -> None:
    """A caller's traceparent (here a client inside pod A, whose request the kernel gave one)
    is the trace the frontend's call continues."""
    a, b = pods
    start_server(b, BACK, "0.0.0.0", "backend")
    start_server(a, FRONT, "127.0.0.1", "frontend")
    side_a, side_b = sidecar(a, "headers"), sidecar(b, "headers")
    for i in range(5):
        assert a.run(["curl", "-sS", f"http://127.0.0.1:{FRONT}/call/{B_ADDR}:{BACK}/hello/{i}"]).stdout == b"hello\n"
    spans_a, spans_b = side_a.wait_spans(15), side_b.wait_spans(5)
    assert len(spans_a) == 15 and len(spans_b) == 5
    curl_spans = [s for s in spans_a if s["kind"] == "CLIENT" and s["attributes"].get("server.port") == FRONT]
    assert len(curl_spans) == 5
    for root in curl_spans:  # curl -> frontend -> frontend's call -> backend: one trace
        trace = [s for s in spans_a + spans_b if s["trace_id"] == root["trace_id"]]
        assert len(trace) == 4
        chain = {s["parent_span_id"]: s for s in trace}
        span, depth = root, 1
        while span["span_id"] in chain:
            span, depth = chain[span["span_id"]], depth + 1
        assert depth == 4 and span["kind"] == "SERVER" and span["resource"] != root["resource"]


def test_disabled_changes_nothing(pods: tuple[CgroupPod, CgroupPod]) -> None:
    a, b = pods
    out = start_recorder(b, "http", BACK)
    start_server(a, FRONT, "127.0.0.1", "frontend")
    side_a = sidecar(a, "disabled")
    ingress(a, [f"/call/{B_ADDR}:{BACK}/x/{i}" for i in range(5)])
    got = recorded(out, 5)
    assert len(got) == 5 and not any(b"traceparent" in r for r in got)
    assert all(s["parent_span_id"] == "" for s in side_a.wait_spans(10) if s["kind"] == "SERVER")
    assert "context propagation" not in side_a.err.read_text()


def test_uninstrumented_peer_gets_identical_bytes(pods: tuple[CgroupPod, CgroupPod]) -> None:
    """Only the header line is added, after the request line, and only to requests; bodies, a
    request that has its own traceparent, and a body that looks like a request stay as sent."""
    a, b = pods
    out = start_recorder(b, "http", BACK)
    side_a = sidecar(a, "headers")
    rnd = os.urandom(40_000)
    own = f"GET /own HTTP/1.1\r\nHost: b\r\nTraceParent: 00-{'ab' * 16}-{'cd' * 8}-01\r\n\r\n".encode()
    requests: list[bytes | str] = [
        b"GET /plain HTTP/1.1\r\nHost: b\r\n\r\n",
        b"POST /binary HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n" % len(rnd) + rnd,
        own,
        b"POST /split HTTP/1.1\r\nHost: b\r\nContent-Length: 26\r\n\r\n",
        "GET /evil HTTP/1.1\r\n\r\nxxxx",  # the body, in its own write: looks like a request
        b"GET /v10 HTTP/1.0\r\nHost: b\r\n\r\n",
    ]
    answers = send(a, BACK, requests, http=True)
    sent = [requests[0], requests[1], own, requests[3] + b"GET /evil HTTP/1.1\r\n\r\nxxxx", requests[5]]
    got = recorded(out, len(sent))
    assert len(got) == len(sent) and len(answers) == len(sent)
    for raw, original, answer in zip(got, sent, answers):
        assert answer == hashlib.sha256(original.partition(b"\r\n\r\n")[2]).hexdigest().encode()
        found = INJECTED.findall(raw)
        if original is own:
            assert raw == own  # its own traceparent: left alone
            continue
        assert len(found) == 1, raw[:200]
        line_end = original.index(b"\r\n") + 2
        assert raw == original[:line_end] + INJECTED.search(raw)[0] + original[line_end:]  # type: ignore[index]
    assert side_a.stop() == 0
    counted = log_counters(side_a)
    assert (counted["injected"], counted["has_traceparent"], counted["failed"]) == (4, 1, 0)


STEP_CLIENT = """
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
for line in sys.stdin:  # one request per line: the test says when
    conn.request("GET", line.strip())
    conn.getresponse().read()
    print("done", flush=True)
"""


def test_a_connection_outliving_the_sidecar_is_left_alone_once_it_stops(pods: tuple[CgroupPod, CgroupPod]) -> None:
    """A stopping sidecar takes the pod's sockets out of its sockhash itself: the sockhash's own
    teardown, after its last fd closes, runs later from a kernel work queue, and until then the
    sockets' sends still went through sk_msg."""
    a, b = pods
    out = start_recorder(b, "http", BACK)
    side_a = sidecar(a, "headers")
    client = a.spawn([sys.executable, "-c", STEP_CLIENT, B_ADDR, str(BACK)], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None

    def request(path: str) -> None:
        client.stdin.write(path.encode() + b"\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"done\n"

    request("/under-the-sidecar")
    assert side_a.stop() == 0
    request("/after-it")
    client.stdin.close()
    assert client.wait(10) == 0
    got = recorded(out, 2)
    assert [raw.split(b"\r\n")[0] for raw in got] == [b"GET /under-the-sidecar HTTP/1.1", b"GET /after-it HTTP/1.1"]
    assert [len(INJECTED.findall(raw)) for raw in got] == [1, 0]


@pytest.mark.parametrize("mode", ["headers", "all"])
def test_non_http_traffic_is_never_touched(pods: tuple[CgroupPod, CgroupPod], mode: str) -> None:
    """Other protocols reach an uninstrumented peer byte for byte; with `all` their packets also
    carry the TCP option, which the peer's kernel ignores."""
    a, b = pods
    out = start_recorder(b, "echo", BACK)
    side_a = sidecar(a, mode)
    payloads = [
        b"*1\r\n$4\r\nPING\r\n",  # Redis
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",  # HTTP/2 preface
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(500),  # a TLS ClientHello's start
        b"GET /no-crlf HTTP/1.1",  # no complete request line
        b"get /lower HTTP/1.1\r\n\r\n",  # not a method
        b"GET /two  spaces HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2\r\n\r\n",
        os.urandom(50_000),
    ]
    for payload in payloads:
        assert send(a, BACK, [payload], http=False) == [payload]
    got = recorded(out, len(payloads))
    assert got == payloads  # byte-identical at the peer
    assert side_a.stop() == 0
    counted = log_counters(side_a)
    assert (counted["injected"], counted["failed"]) == (0, 0)
    assert counted["not_http"] + counted["doubt"] == len(payloads)
    assert (counted["option_written"] >= len(payloads)) == (mode == "all")


NGINX_CONF = """
daemon off;
worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    log_format tp "$request $http_traceparent";
    access_log {access};
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream back {{ server {back}; keepalive 32; }}
    server {{
        listen {listen};
        root {tmp}/www;
        {locations}
    }}
}}
"""
PROXY = "location / { proxy_pass http://back; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
BODY = bytes(range(256)) * 8  # 2 KiB, every byte value
WRK_CHECK = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0; expected = %d end
function response(status, headers, body)
  if status ~= 200 or #body ~= expected then bad = bad + 1 end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("BAD %%d REQUESTS %%d ERRORS %%d\\n", total, summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status
    + summary.errors.timeout))
end
"""


def start_nginx(pod: CgroupPod, listen: str, locations: str, access: str = "off") -> Path:
    tmp = pod.tmp / "nginx"
    (tmp / "www").mkdir(parents=True)
    (tmp / "www" / "data").write_bytes(BODY)
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, listen=listen, back=f"{B_ADDR}:{BACK}", locations=locations,
                                      access=f"{tmp / 'access.log'} tp" if access == "on" else "off"))
    pod.spawn(["nginx", "-c", str(conf)], stderr=subprocess.DEVNULL)
    host, _, port = listen.rpartition(":")
    wait_listening(pod, host, int(port))
    return tmp / "access.log"


def wrk(pod: CgroupPod, tmp: Path, seconds: int, connections: int = 16) -> tuple[float, int, int, int]:
    """(requests/s, bad responses, requests, errors) of wrk against pod A's proxy, from outside the pod."""
    script = tmp / "check.lua"
    script.write_text(WRK_CHECK % len(BODY))
    out = pod.net(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "2s", "-s", str(script),
                   f"http://127.0.0.1:{FRONT}/data"]).stdout.decode()
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    bad, requests, errors = map(int, re.search(r"BAD (\d+) REQUESTS (\d+) ERRORS (\d+)", out).groups())  # type: ignore[union-attr]
    return rate, bad, requests, errors


@pytest.mark.parametrize("mode", ["disabled", "headers"])
def test_nginx_reverse_proxy_under_load(pods: tuple[CgroupPod, CgroupPod], tmp_path: Path, mode: str) -> None:
    """nginx in pod A proxies (keep-alive upstream connections) to nginx in pod B, under wrk: no
    stall, every response whole and right, and with `headers` every upstream request carries
    exactly one well-formed traceparent (pod B's access log)."""
    a, b = pods
    access = start_nginx(b, f"{B_ADDR}:{BACK}", "", access="on")
    start_nginx(a, f"127.0.0.1:{FRONT}", PROXY)
    side_a = sidecar(a, mode)
    rate, bad, requests, errors = wrk(a, tmp_path, 5)
    print(f"\n{mode}: {rate:.0f} requests/s through the proxy, {requests} requests")
    assert (bad, errors) == (0, 0) and requests > 1000
    assert side_a.stop() == 0
    lines = access.read_text().splitlines()
    assert len(lines) >= requests
    # the upstream connections outlive the sidecar: its sockhash goes, the sockets work on
    _rate, bad, after, errors = wrk(a, tmp_path, 1)
    assert (bad, errors) == (0, 0) and after > 100
    time.sleep(0.5)  # nginx logs a request after its answer
    later = access.read_text().splitlines()[len(lines):]
    assert len(later) >= after and set(later) == {"GET /data HTTP/1.1 -"}
    with_tp = [line for line in lines if re.fullmatch(r"GET /data HTTP/1\.1 00-[0-9a-f]{32}-[0-9a-f]{16}-01", line)]
    if mode == "headers":
        assert len(with_tp) == len(lines)
        counted = log_counters(side_a)
        assert counted["injected"] == len(lines) and counted["failed"] == 0
    else:
        assert with_tp == [] and all(line == "GET /data HTTP/1.1 -" for line in lines)


def test_nginx_proxies_large_bodies_from_temp_files(pods: tuple[CgroupPod, CgroupPod], tmp_path: Path) -> None:
    """Request bodies nginx buffers to a temporary file go upstream with sendfile: the head gets
    the header, the bodies arrive byte for byte, nothing stalls."""
    a, b = pods
    out = start_recorder(b, "http", BACK)
    start_nginx(a, f"127.0.0.1:{FRONT}", PROXY.replace("location / {", "location / { client_max_body_size 8m;"))
    side_a = sidecar(a, "headers")
    bodies = [os.urandom(n) for n in (100, 20_000, 300_000, 2_000_000)]
    for i, body in enumerate(bodies):
        (tmp_path / f"body{i}").write_bytes(body)
        answer = a.net(["curl", "-sS", "--max-time", "10", "--data-binary", f"@{tmp_path / f'body{i}'}",
                        f"http://127.0.0.1:{FRONT}/post/{i}"]).stdout
        assert answer == hashlib.sha256(body).hexdigest().encode()
    got = recorded(out, len(bodies))
    for raw, body in zip(got, bodies):
        assert len(INJECTED.findall(raw)) == 1 and raw.endswith(b"\r\n\r\n" + body)
    assert side_a.stop() == 0 and log_counters(side_a)["injected"] == len(bodies)
