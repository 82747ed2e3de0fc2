"""The data path's guarantees end to end (issue 9): one record per exchange, exact sizes and
end times of responses larger than the capture, idle exchanges out within a second, heads of
any size, connections older than the sidecar, unrecognised traffic counted, sampling with
exact metrics. Real servers and clients in a pod, real probes, real exporters."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
from typing import NamedTuple

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from .inprocess import InProcessSidecar, wait_for
from .nginx import start_nginx
from .otlp_receiver import Receiver
from .pod import APPS, Pod, free_port, wait_port
from .test_http import start_python_server
from .test_metrics import sample, scrape

pytestmark = pytest.mark.bpf


class Result(NamedTuple):
    port: int  # the client's local port
    body: int  # body bytes received
    start_ns: int  # wall clock before the first request was sent
    end_ns: int  # wall clock after the last body was read


class Session:
    """apps/session_client.py in the pod: one keep-alive connection, used when the test says."""

    def __init__(self, pod: Pod, port: int) -> None:
        self.proc = pod.spawn([sys.executable, str(APPS / "session_client.py"), str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def get(self, path: str, count: int = 1) -> Result:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"GET {path} {count}\n".encode())
        self.proc.stdin.flush()
        return Result(*map(int, self.proc.stdout.readline().split()))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0


def otlp_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    """Spans to `receiver` every 100 ms, with room for every span of a test."""
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BSP_MAX_QUEUE_SIZE": "8192", **extra}


def server_port(span: Span) -> int | None:
    return next((a.value.int_value for a in span.attributes if a.key == "server.port"), None)


def names(received: list[tuple[dict, Span]], kind: int, port: int) -> collections.Counter:
    """Span names of one kind, for one server port, received over OTLP."""
    return collections.Counter(s.name for _, s in received if s.kind == kind and server_port(s) == port)


# Ring records besides exchanges for one keep-alive client run: CONN_OPEN and CONN_CLOSE at
# both ends, the client's exec and exit (and a fork: Python may spawn a helper).
CONNECTION_EVENTS = 4
PROCESS_EVENTS_MAX = 2 + 2


def test_one_record_per_exchange(pod: Pod, in_process) -> None:
    app = free_port()
    start_python_server(pod, app, inside=True, service="records-app")
    with Receiver() as receiver:
        sidecar = InProcessSidecar(pod, **otlp_env(receiver))
        in_process.append(sidecar)
        p = sidecar.pipeline

        def run_client(gets: int) -> tuple[int, int]:
            """(ring records, exchanges) while the client makes `gets` GETs and a POST."""
            records, exchanges = p.stats.records, p.tracker.stats.exchanges
            pod.run([sys.executable, str(APPS / "keepalive_client.py"), str(app), str(gets)])
            assert wait_for(lambda: p.tracker.stats.exchanges - exchanges >= 2 * (gets + 1), timeout=15)
            time.sleep(1.0)  # the client's exit and its sockets' close; extras would show
            return p.stats.records - records, p.tracker.stats.exchanges - exchanges

        base_ring, base_exchanges = run_client(0)  # what a client run costs besides its exchanges
        ring, exchanges = run_client(1000)
        assert wait_for(lambda: len(receiver.spans()) >= 2 * 1002, timeout=10)
        sidecar.stop()
        received = receiver.spans()
    print(f"1001 keep-alive exchanges seen at both ends: {exchanges} exchanges, {ring} ring records "
          f"({ring - exchanges} connection and process events)")
    assert (base_exchanges, exchanges) == (2, 2 * 1001)
    assert len(received) == 2 * 1002
    expected = {"GET /hello": 1000, "POST /echo": 2}
    assert names(received, Span.SPAN_KIND_SERVER, app) == names(received, Span.SPAN_KIND_CLIENT, app) == expected
    assert p.tracker.stats.records == p.tracker.stats.exchanges  # one exchange record per exchange
    assert p.tracker.stats.duplicates == 0  # none went idle: each came once, from the kernel
    # 1000 more exchanges at each end cost exactly 2000 more records; the rest does not grow
    assert ring - exchanges == base_ring - base_exchanges <= CONNECTION_EVENTS + PROCESS_EVENTS_MAX


BIG_FILE = bytes(range(256)) * 1200  # 300 KB: nginx sends it with sendfile (no user buffer at all)
# The client's wall clock against span times (kernel monotonic time + the sidecar's offset,
# re-read every 5 s): they differ by the clock's slew between two syncs (NTP: <= 0.5 ms/s).
CLOCK_TOLERANCE_NS = 5_000_000


def check_big_response(spans: list[dict], path: str, size: int, call: Result) -> dict:
    """The server span of `call`: exact body size, and times within the client's call."""
    assert call.body == size
    [server] = [s for s in spans if s["kind"] == "SERVER" and s["attributes"]["client.port"] == call.port]
    a = server["attributes"]
    assert (server["name"], a["http.response.status_code"], a.get("http.response.body.size")) == \
        (f"GET {path}", 200, size), f"{path}: not the exact response"
    assert "http.request.body.size" not in a
    start, end = server["start_time_unix_nano"], server["end_time_unix_nano"]
    print(f"{path}: span {(end - start) / 1e6:.1f} ms, ends {(call.end_ns - end) / 1e6:.1f} ms before the "
          f"client read its last byte (client call {(call.end_ns - call.start_ns) / 1e6:.1f} ms)")
    # the request left after the client's start; the last byte was sent before the client read it
    assert call.start_ns - CLOCK_TOLERANCE_NS <= start <= end <= call.end_ns + CLOCK_TOLERANCE_NS
    return server


def test_response_larger_than_the_capture_keeps_size_and_end(pod: Pod, start_sidecar) -> None:
    app, web = free_port(), free_port()
    start_python_server(pod, app, inside=True, service="big-app")
    start_nginx(pod, web, {"big.bin": BIG_FILE})
    sidecar = start_sidecar()
    calls = {}
    for port, path in ((app, "/big"), (web, "/big.bin")):
        session = Session(pod, port)
        calls[path] = session.get(path)
        session.close()
    spans = sidecar.wait_spans(4)
    assert len(spans) == 4
    check_big_response(spans, "/big", 100_000, calls["/big"])
    check_big_response(spans, "/big.bin", len(BIG_FILE), calls["/big.bin"])


def test_response_paused_mid_body_keeps_size_and_end(pod: Pod, start_sidecar) -> None:
    """nginx sends at most 150 KB a second here: 150 KB, a pause of ~1 s, the rest. The span ends
    with the last send, not when the pause made the exchange look idle."""
    web = free_port()
    start_nginx(pod, web, {"slow/big.bin": BIG_FILE}, locations="location /slow/ { limit_rate 150k; }")
    sidecar = start_sidecar()
    session = Session(pod, web)
    call = session.get("/slow/big.bin")
    session.close()
    spans = sidecar.wait_spans(2)
    assert len(spans) == 2
    server = check_big_response(spans, "/slow/big.bin", len(BIG_FILE), call)
    assert server["end_time_unix_nano"] - server["start_time_unix_nano"] >= 500_000_000


# Reads one request, then closes without a word after HOLD_SECONDS (connections that send
# nothing, such as wait_port's, are closed at once).
SILENT_SERVER = """
import socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
while True:
    conn, _ = srv.accept()
    if conn.recv(4096):
        time.sleep(float(sys.argv[2]))
        conn.close()
        break
    conn.close()
"""
HOLD_SECONDS = 0.6


def test_unanswered_request_lasts_until_the_close(pod: Pod, start_sidecar) -> None:
    port = free_port()
    server = pod.spawn([sys.executable, "-c", SILENT_SERVER, str(port), str(HOLD_SECONDS)])
    wait_port(port)
    sidecar = start_sidecar()
    curl = pod.spawn(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/wait"])
    assert curl.wait(10) == 52  # curl: empty reply from server
    assert server.wait(10) == 0
    spans = sidecar.wait_spans(2)
    assert sorted(s["kind"] for s in spans) == ["CLIENT", "SERVER"]
    for span in spans:
        assert span["status"] == "ERROR" and span["attributes"]["error.type"] == "incomplete"
        assert "http.response.status_code" not in span["attributes"]
        duration = (span["end_time_unix_nano"] - span["start_time_unix_nano"]) / 1e9
        assert HOLD_SECONDS <= duration < HOLD_SECONDS + 0.5, span["kind"]


def test_idle_keepalive_exchange_out_within_a_second(pod: Pod, in_process) -> None:
    app = free_port()
    start_python_server(pod, app, inside=True, service="idle-app")
    with Receiver() as receiver:
        sidecar = InProcessSidecar(pod, **otlp_env(receiver))
        in_process.append(sidecar)
        stats = sidecar.pipeline.tracker.stats
        session = Session(pod, app)
        first = session.get("/hello")  # then the connection stays open, idle
        while stats.exchanges < 2 and time.time_ns() - first.end_ns < 3_000_000_000:
            time.sleep(0.002)
        latency = (time.time_ns() - first.end_ns) / 1e9
        print(f"idle keep-alive exchange ended {latency * 1000:.0f} ms after the client read the response")
        assert stats.exchanges == 2 and latency < 1.0  # its server and its client exchange
        assert wait_for(lambda: len(receiver.spans()) >= 2, timeout=2)
        time.sleep(0.3)  # extras would show
        assert names(receiver.spans(), Span.SPAN_KIND_SERVER, app) == {"GET /hello": 1}
        assert names(receiver.spans(), Span.SPAN_KIND_CLIENT, app) == {"GET /hello": 1}
        # ends the first exchange in the kernel: not sent again, so no record tells user space
        # that this one began (only the kernel's responses_begun flag does)
        second = session.get("/hello?n=2")
        assert wait_for(lambda: stats.exchanges == 4, timeout=3)  # the second one, idle too
        assert (time.time_ns() - second.end_ns) / 1e9 < 1.0
        session.close()
        assert wait_for(lambda: len(sidecar.pipeline.tracker) == 0, timeout=3)  # both ends closed
        # the kernel knew both were reported (swept): neither went out again, at either end
        assert (stats.records, stats.duplicates) == (4, 0)
        assert wait_for(lambda: len(receiver.spans()) >= 4, timeout=3)
        time.sleep(0.5)
        received = receiver.spans()
    assert second.port == first.port  # one connection
    assert len(received) == 4 and stats.exchanges == 4
    assert names(received, Span.SPAN_KIND_SERVER, app) == names(received, Span.SPAN_KIND_CLIENT, app) == {
        "GET /hello": 2}


PAD_HEADERS = [f"X-Pad-{i:02d}: {chr(97 + i) * 1010}" for i in range(16)]  # 16 x 1 KiB lines
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
AUTHORIZATION = ("Bearer " + "eyJhbGciOiJSUzI1NiJ9." * 21)[:450 - len("Authorization: ")]  # a JWT's size
COOKIE = ("session=" + "Zm9vYmFyYmF6cXV4" * 74)[:1200 - len("Cookie: ")]
INDEX = b"<p>large heads</p>\n" * 30


def test_large_heads_give_exact_spans(pod: Pod, start_sidecar) -> None:
    app, web = free_port(), free_port()
    start_python_server(pod, app, inside=True, service="heads-app")
    start_nginx(pod, web, {"index.html": INDEX})
    sidecar = start_sidecar()
    traced = [*PAD_HEADERS, f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01"]  # last, ~16.4 KiB in
    secrets = [f"Authorization: {AUTHORIZATION}", f"Cookie: {COOKIE}"]
    assert [len(h) for h in secrets] == [450, 1200]
    body = "b" * 300

    def curl(url: str, headers: list[str], data: str | None = None) -> bytes:
        argv = ["curl", "-sS", "--fail", "-o", "-", url, *[x for h in headers for x in ("-H", h)]]
        return pod.run(argv + (["--data-binary", data] if data else [])).stdout

    for headers in (traced, secrets):
        assert curl(f"http://127.0.0.1:{app}/echo", headers, body) == body.encode()
        assert curl(f"http://127.0.0.1:{web}/index.html", headers) == INDEX
    spans = sidecar.wait_spans(8)
    assert len(spans) == 8

    def fields(s: dict) -> tuple:
        a = s["attributes"]
        return (s["kind"], a["server.port"], s["name"], a["http.response.status_code"],
                a.get("http.request.body.size"), a.get("http.response.body.size"))

    expected = [(kind, app, "POST /echo", 201, 300, 300) for kind in ("SERVER", "CLIENT")] + \
               [(kind, web, "GET /index.html", 200, None, len(INDEX)) for kind in ("SERVER", "CLIENT")]
    assert sorted(map(fields, spans)) == sorted(expected * 2)
    exported = sidecar.out.read_text()
    for secret in (AUTHORIZATION, COOKIE):  # neither whole nor any 16-byte piece of it
        assert not any(secret[i:i + 16] in exported for i in range(len(secret) - 15))
    assert "X-Pad" not in exported

    # the server spans of the requests that carried the traceparent continue its trace
    continued = {(s["attributes"]["server.port"], s["parent_span_id"])
                 for s in spans if s["kind"] == "SERVER" and s["trace_id"] == TRACE_ID}
    assert continued == {(app, PARENT_ID), (web, PARENT_ID)}, \
        "traceparent at the end of a 16 KiB head lost (nginx reads it in parts, and the traceparent line " \
        "straddles two of them: see test_traceparent_across_a_read_boundary)"


def boundary_request(at: int, trace_id: str) -> bytes:
    """A request whose traceparent line starts at byte `at` (one padding header before it)."""
    start = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Pad: "
    line = f"traceparent: 00-{trace_id}-{PARENT_ID}-01\r\n".encode()
    request = start + b"p" * (at - len(start) - 2) + b"\r\n" + line + b"X-After: 1\r\n" * 8 + b"\r\n"
    assert request.index(b"traceparent") == at
    return request


# The Python server reads a head 8192 bytes at a time (its socket file's buffer). The
# traceparent line: inside the first read, across the boundary, starting the second read,
# inside the second.
BOUNDARY_OFFSETS = (4000, 8192 - 30, 8192, 8192 + 300)


def test_traceparent_across_a_read_boundary(pod: Pod, start_sidecar) -> None:
    app = free_port()
    start_python_server(pod, app, inside=True, service="boundary-app")
    sidecar = start_sidecar()
    trace_ids = {at: f"{at:032x}" for at in BOUNDARY_OFFSETS}
    for at, trace_id in trace_ids.items():
        out = pod.run([sys.executable, str(APPS / "raw_client.py"), str(app)], input=boundary_request(at, trace_id))
        assert out.stdout == b"HTTP/1.1 200 OK\n"
    spans = sidecar.wait_spans(2 * len(BOUNDARY_OFFSETS))
    assert len(spans) == 2 * len(BOUNDARY_OFFSETS)
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert [s["name"] for s in servers] == ["GET /hello"] * len(BOUNDARY_OFFSETS)
    continued = {at: any((s["trace_id"], s["parent_span_id"]) == (trace_id, PARENT_ID) for s in servers)
                 for at, trace_id in trace_ids.items()}
    assert continued == dict.fromkeys(BOUNDARY_OFFSETS, True), "traceparent lost where its line meets a read boundary"


def test_connection_older_than_the_sidecar(pod: Pod, start_sidecar) -> None:
    app = free_port()
    start_python_server(pod, app, inside=True, service="old-conn-app")
    session = Session(pod, app)
    before = session.get("/hello")  # the server's thread for this connection now waits in a read
    sidecar = start_sidecar()
    after = session.get("/hello?n=[1-10]", 10)
    session.close()
    assert before.port == after.port and after.body == 10 * len(b"hello\n")
    spans = sidecar.wait_spans(20)
    servers = [s for s in spans if s["kind"] == "SERVER" and s["attributes"]["client.port"] == after.port]
    clients = [s for s in spans if s["kind"] == "CLIENT" and s["attributes"]["server.port"] == app]
    assert len(servers) == 10 and len(clients) == 10 and len(spans) == 20
    assert {s["name"] for s in servers + clients} == {"GET /hello"}
    assert all(s["attributes"]["http.response.status_code"] == 200 for s in servers + clients)


# A binary protocol no module knows (Redis is recognised since issue 13): bytes 1-31, neither
# text nor length-prefixed, so that guess_protocol says `unknown`.
ECHO_MESSAGES = tuple(bytes(range(1, 32))[i:] * 3 for i in range(5))


def test_unrecognised_traffic_is_counted_not_traced(pod: Pod, start_sidecar) -> None:
    echo, prom_port = free_port(), free_port()
    pod.spawn([sys.executable, str(APPS / "echo_server.py"), str(echo)], stdout=subprocess.DEVNULL)
    wait_port(echo)
    sidecar = start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom_port), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1")
    for message in ECHO_MESSAGES:  # one connection each
        out = pod.run([sys.executable, str(APPS / "raw_client.py"), str(echo)], input=message)
        assert out.stdout == message + b"\n"  # the echo (raw_client prints up to a CRLF: there is none)
    connections = "beyla_sidecar_unrecognised_connections_total"
    # Each connection has both ends in the pod (the client's socket and the server's): like
    # requests_completed_total, the counter counts the ends the sidecar sees.
    expected = 2 * len(ECHO_MESSAGES)
    assert wait_for(lambda: sample(scrape(prom_port), connections, port=str(echo)) >= expected)
    time.sleep(1.0)  # extras would show
    text = scrape(prom_port)
    assert sample(text, connections, protocol_guess="unknown", port=str(echo)) == expected
    assert sample(text, connections) == expected  # nothing else, under no other guess
    assert sample(text, "beyla_sidecar_unrecognised_bytes_total", protocol_guess="unknown", port=str(echo)) == \
        2 * 2 * sum(map(len, ECHO_MESSAGES))  # each message and its echo, at both ends
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sidecar.spans() == []
    logged = [json.loads(line) for line in sidecar.err.read_text().splitlines() if line.startswith("{")]
    warnings = [(w["role"], w["port"], w["guess"]) for w in logged if w["event"].startswith("unrecognised traffic")]
    # once per process and port: the server, and each client process
    assert sorted(warnings) == sorted([("server", echo, "unknown")]
                                      + [("client", echo, "unknown")] * len(ECHO_MESSAGES))


SAMPLED_REQUESTS = 400
RATIO = 0.25


def test_sampler_ratio_with_exact_metrics(pod: Pod, start_sidecar) -> None:
    app, prom_port = free_port(), free_port()
    start_python_server(pod, app, inside=True, service="sampled-app")
    with Receiver() as receiver:
        sidecar = start_sidecar(**otlp_env(receiver), BEYLA_TRACE_PRINTER="disabled",
                                BEYLA_PROMETHEUS_PORT=str(prom_port), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1",
                                OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG=str(RATIO))
        # one keep-alive connection, a request per id
        pod.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{app}/users/[1-{SAMPLED_REQUESTS}]"])
        count = "http_server_request_duration_seconds_count"
        assert wait_for(lambda: sample(scrape(prom_port), count, service_name="sampled-app") >= SAMPLED_REQUESTS)
        time.sleep(0.5)
        text = scrape(prom_port)
        assert sidecar.stop() == 0  # flushes what is queued
        received = receiver.spans()
    assert sample(text, count, service_name="sampled-app", http_route="/users/{id}") == SAMPLED_REQUESTS
    assert sample(text, count) == SAMPLED_REQUESTS
    assert sample(text, "http_client_request_duration_seconds_count", service_name="curl") == SAMPLED_REQUESTS
    assert sample(text, "beyla_sidecar_spans_dropped_total") == 0  # sampled out is not dropped
    sigma = (SAMPLED_REQUESTS * RATIO * (1 - RATIO)) ** 0.5  # binomial: ~8.7
    assert all(server_port(span) == app for _, span in received)
    for kind in (Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT):  # curl's spans are roots too: sampled alike
        kept = names(received, kind, app)
        print(f"{Span.SpanKind.Name(kind)}: {kept.total()} of {SAMPLED_REQUESTS} sampled")
        assert set(kept) == {"GET /users/{id}"}
        assert kept.total() > 0 and abs(kept.total() - SAMPLED_REQUESTS * RATIO) <= 4 * sigma
