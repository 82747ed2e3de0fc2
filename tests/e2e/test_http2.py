"""HTTP/2 and gRPC end to end (issue 12): real servers and clients in the pod, real probes.

- gRPC: a grpcio server and client (apps/grpc_apps.py, no generated code): unary, server
  streaming and a trailers-only NOT_FOUND, N calls of each on one channel; 20 concurrent calls on
  one channel (20 interleaved streams on one connection). Spans arrive over real OTLP/gRPC at an
  in-test receiver (so the sidecar's own gRPC export is there to be mistaken for the app's);
  `rpc.*.call.duration` from the Prometheus endpoint.
- h2c: nginx `listen ... http2`, several requests on one connection (apps/h2_client.py: Debian's
  curl 7.88 fails reusing a prior-knowledge connection) and `curl --http2-prior-knowledge`; TLS:
  nginx `ssl http2` and `curl --http2` (ALPN h2, plaintext from the OpenSSL uprobes), several
  requests on one connection.
- A gRPC connection opened before the sidecar started: its HPACK dynamic table is already in use,
  so no span may come from it (headers would be wrong); the traffic is counted; a new connection
  afterwards is exact.

Both ends of every connection are in the pod: each request or call is a SERVER span (the server's
end) and a CLIENT span (the client's end).
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time

import pytest

from beyla_sidecar.export.printers import span_dict

from .inprocess import wait_for
from .nginx import start_nginx
from .otlp_receiver import Receiver
from .pod import APPS, Pod, Sidecar, free_port
from .test_metrics import sample, scrape
from .test_tls import cert  # noqa: F401 (a fixture)

pytestmark = pytest.mark.bpf

GRPC = [sys.executable, str(APPS / "grpc_apps.py")]
SERVICE = "demo.Greeter"
TRACE_ID = 0x5A1E5A1E5A1E5A1E5A1E5A1E5A1E5A1E  # apps/grpc_apps.py: the trace of the SayHello calls' traceparent
N = 5  # calls of each gRPC method
MESSAGES = 3  # per StreamHellos call, GAP apart
GAP, SLOW = 0.02, 0.3  # apps/grpc_apps.py
CONCURRENT = 20
NOT_FOUND = 5  # grpc status code
SERVER_COUNT, CLIENT_COUNT = "rpc_server_call_duration_seconds_count", "rpc_client_call_duration_seconds_count"

INDEX = b"<p>HTTP/2 through nginx</p>\n" * 1500  # 42 000 bytes: several DATA frames
FILES = {"index.html": INDEX, "hello": b"hello\n", "upload": b"static\n"}
GETS = ("/index.html", "/hello", "/missing", "/index.html")  # on one connection
POSTED = 1000  # bytes of a POST /upload (nginx answers 405)
# nginx answers a POST to a static file without reading its body, often before the DATA frames
# arrive; the mirror module reads the body first, so the request is complete when the 405 leaves.
UPLOAD = "location = /upload { mirror /mirrored; mirror_request_body on; } location = /mirrored { internal; return 204; }"


def start_grpc_server(pod: Pod, port: int, inside: bool = True, service: str = "greeter") -> None:
    proc = pod.spawn([*GRPC, "serve", str(port)], inside=inside, stdout=subprocess.PIPE,
                     env={"OTEL_SERVICE_NAME": service, "PATH": "/usr/bin:/bin"})
    assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"


def grpc_client(pod: Pod, *args: object, inside: bool = True) -> int:
    """apps/grpc_apps.py in a client mode; returns its local port."""
    return int(pod.run([*GRPC, *map(str, args)], inside=inside).stdout.split()[0])


def start_with_otlp(start_sidecar, receiver: Receiver) -> tuple[Sidecar, int]:
    prom = free_port()
    sidecar = start_sidecar(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
                            BEYLA_TRACE_PRINTER="disabled", BEYLA_PROMETHEUS_PORT=str(prom),
                            BEYLA_PROMETHEUS_ADDRESS="127.0.0.1")
    return sidecar, prom


def wait_otlp(receiver: Receiver, count: int, timeout: float = 20.0, settle: float = 1.5) -> None:
    """Until `count` spans arrived, and a little longer so that extras would show."""
    assert wait_for(lambda: len(receiver.spans()) >= count, timeout=timeout), len(receiver.spans())
    time.sleep(settle)


def received(receiver: Receiver) -> list[dict]:
    """The spans received, in the printer's JSON shape."""
    return [span_dict(span, resource) for resource, span in receiver.spans()]


def rpc_summary(spans: list[dict], kind: str, port: int) -> collections.Counter:
    """(name, rpc.system, rpc.service, rpc.method, rpc.grpc.status_code, status) of one kind's spans to `port`."""
    return collections.Counter(
        (s["name"], s["attributes"].get("rpc.system"), s["attributes"].get("rpc.service"),
         s["attributes"].get("rpc.method"), s["attributes"].get("rpc.grpc.status_code"), s["status"])
        for s in spans if s["kind"] == kind and s["attributes"].get("server.port") == port)


def durations(spans: list[dict], method: str) -> list[float]:
    return [(s["end_time_unix_nano"] - s["start_time_unix_nano"]) / 1e9 for s in spans
            if s["attributes"].get("rpc.method") == method]


def test_grpc_unary_streaming_and_not_found(pod: Pod, start_sidecar) -> None:
    port, outside = free_port(), free_port()
    start_grpc_server(pod, port)
    start_grpc_server(pod, outside, inside=False, service="outside-greeter")
    with Receiver() as receiver:
        sidecar, prom = start_with_otlp(start_sidecar, receiver)
        local = grpc_client(pod, "calls", port, N, MESSAGES)
        grpc_client(pod, "calls", outside, N, MESSAGES, inside=False)  # the same pair outside: never seen
        wait_otlp(receiver, 2 * 3 * N)
        text = scrape(prom)
        assert sidecar.stop() == 0
        spans = received(receiver)  # after the final flush

    assert [s for s in spans if outside in (s["attributes"].get("server.port"),
                                            s["attributes"].get("network.peer.port"))] == []
    assert len(spans) == 2 * 3 * N  # none of the sidecar's own OTLP export calls either
    expected = {
        "SERVER": collections.Counter({
            (f"{SERVICE}/SayHello", "grpc", SERVICE, "SayHello", 0, "UNSET"): N,
            (f"{SERVICE}/StreamHellos", "grpc", SERVICE, "StreamHellos", 0, "UNSET"): N,
            (f"{SERVICE}/Find", "grpc", SERVICE, "Find", NOT_FOUND, "UNSET"): N,  # not a server error
        }),
        "CLIENT": collections.Counter({
            (f"{SERVICE}/SayHello", "grpc", SERVICE, "SayHello", 0, "UNSET"): N,
            (f"{SERVICE}/StreamHellos", "grpc", SERVICE, "StreamHellos", 0, "UNSET"): N,
            (f"{SERVICE}/Find", "grpc", SERVICE, "Find", NOT_FOUND, "ERROR"): N,  # every non-OK code is
        }),
    }
    for kind, summary in expected.items():
        assert rpc_summary(spans, kind, port) == summary, kind
    servers = [s for s in spans if s["kind"] == "SERVER"]
    clients = [s for s in spans if s["kind"] == "CLIENT"]
    assert {s["resource"]["service.name"] for s in servers} == {"greeter"}
    assert {s["attributes"]["client.port"] for s in servers} == {local}  # one channel, one connection
    for s in servers:
        assert "error.type" not in s["attributes"], s
    for s in clients:
        a = s["attributes"]
        assert a.get("error.type") == ("NOT_FOUND" if a["rpc.method"] == "Find" else None), s
        assert (a["server.address"], a["network.peer.port"]) == ("127.0.0.1", port)
    # the traceparent in each SayHello's metadata makes its server span a child of that context
    hellos = [s for s in servers if s["attributes"]["rpc.method"] == "SayHello"]
    assert sorted((s["trace_id"], s["parent_span_id"]) for s in hellos) == [
        (f"{TRACE_ID:032x}", f"{i + 1:016x}") for i in range(N)]
    assert all(s["parent_span_id"] == "" for s in servers if s not in hellos)  # roots
    # a streaming call lasts until its last message: MESSAGES - 1 gaps at least, at both ends
    assert min(durations(spans, "StreamHellos")) >= (MESSAGES - 1) * GAP
    assert max(durations(spans, "SayHello") + durations(spans, "Find")) < 1.0

    for name in (SERVER_COUNT, CLIENT_COUNT):
        assert sample(text, name) == N * 3, name
        for method, code in (("SayHello", 0), ("StreamHellos", 0), ("Find", NOT_FOUND)):
            assert sample(text, name, rpc_system="grpc", rpc_service=SERVICE, rpc_method=method,
                          rpc_grpc_status_code=str(code)) == N, (name, method)
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0
    assert sample(text, "beyla_sidecar_unrecognised_connections_total") == 0
    assert sample(text, "beyla_sidecar_http2_desyncs_total") == 0
    assert sample(text, "beyla_sidecar_http2_streams_dropped_total") == 0


def test_grpc_concurrent_calls_on_one_channel(pod: Pod, start_sidecar) -> None:
    """20 calls at once on one channel: 20 streams interleaved on one connection, each answered
    after SLOW seconds, so their requests all arrive before the first response."""
    port = free_port()
    start_grpc_server(pod, port)
    with Receiver() as receiver:
        sidecar, prom = start_with_otlp(start_sidecar, receiver)
        local = grpc_client(pod, "concurrent", port, CONCURRENT)
        wait_otlp(receiver, 2 * CONCURRENT)
        text = scrape(prom)
        assert sidecar.stop() == 0
        spans = received(receiver)

    assert len(spans) == 2 * CONCURRENT
    for kind in ("SERVER", "CLIENT"):
        assert rpc_summary(spans, kind, port) == {
            (f"{SERVICE}/SayHello", "grpc", SERVICE, "SayHello", 0, "UNSET"): CONCURRENT}
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert {s["attributes"]["client.port"] for s in servers} == {local}
    # timestamps per stream: every call took SLOW, and they overlapped (not one after another)
    assert min(durations(spans, "SayHello")) >= SLOW
    starts = sorted(s["start_time_unix_nano"] for s in servers)
    ends = sorted(s["end_time_unix_nano"] for s in servers)
    assert starts[-1] < ends[0]
    assert len({s["span_id"] for s in spans}) == 2 * CONCURRENT
    assert sample(text, SERVER_COUNT, rpc_method="SayHello") == CONCURRENT
    assert sample(text, CLIENT_COUNT, rpc_method="SayHello") == CONCURRENT


Result = tuple[int, int, int, str]  # status, response body bytes, local port, HTTP version


def curl_h2(pod: Pod, url: str, paths: tuple[str, ...], *options: str) -> list[Result]:
    """One curl over HTTP/2 fetching `paths` of `url` (one connection); a Result per transfer."""
    argv = ["curl", "-sS", *options, "-w", "%{response_code} %{size_download} %{local_port} %{http_version}\n"]
    for path in paths:
        argv += ["-o", "/dev/null", url + path]
    return results(pod.run(argv).stdout)


def h2_client(pod: Pod, port: int, *requests: str) -> list[Result]:
    """apps/h2_client.py: h2c requests on one connection (curl 7.88 cannot reuse one)."""
    return results(pod.run([sys.executable, str(APPS / "h2_client.py"), str(port), *requests]).stdout)


def results(out: bytes) -> list[Result]:
    words = out.decode().split()
    return [(int(words[i]), int(words[i + 1]), int(words[i + 2]), words[i + 3]) for i in range(0, len(words), 4)]


def http_summary(spans: list[dict], kind: str, port: int) -> collections.Counter:
    """(method, path, status, response body size, protocol version, scheme) of one kind's spans to `port`."""
    return collections.Counter(
        (a["http.request.method"], a["url.path"], a.get("http.response.status_code"),
         a.get("http.response.body.size"), a.get("network.protocol.version"), a.get("url.scheme"))
        for s in spans if s["kind"] == kind and (a := s["attributes"]).get("server.port") == port)


def start_with_prometheus(start_sidecar) -> tuple[Sidecar, int]:
    prom = free_port()
    return start_sidecar(BEYLA_PROMETHEUS_PORT=str(prom), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1"), prom


def check_nginx_h2(sidecar: Sidecar, prom: int, port: int, scheme: str,
                   sent: list[tuple[str, str, Result]]) -> None:
    """`sent` (method, path, what the client got) to nginx over HTTP/2 made exactly its spans."""
    assert {version for _, _, (_, _, _, version) in sent} == {"2"}
    count = len(sent)
    spans = sidecar.wait_spans(2 * count)
    assert len(spans) == 2 * count
    expected = collections.Counter((method, path, status, size, "2", scheme)
                                   for method, path, (status, size, _, _) in sent)
    assert http_summary(spans, "SERVER", port) == http_summary(spans, "CLIENT", port) == expected
    servers = [s for s in spans if s["kind"] == "SERVER"]
    assert {s["resource"]["service.name"] for s in servers} == {"nginx"}
    assert collections.Counter(s["attributes"]["client.port"] for s in servers) == \
        collections.Counter(local for _, _, (_, _, local, _) in sent)  # several requests per connection
    posts = [s for s in spans if s["attributes"]["http.request.method"] == "POST"]
    assert [s["attributes"].get("http.request.body.size") for s in posts] == [POSTED, POSTED]
    check_errors_and_counters(spans, prom, count)


def check_errors_and_counters(spans: list[dict], prom: int, count: int) -> None:
    """4xx is an error for the client only; nothing unparsed, unrecognised, desynchronised or dropped;
    each of the `count` requests measured once at each end."""
    for s in spans:
        failed = s["kind"] == "CLIENT" and s["attributes"]["http.response.status_code"] >= 400
        assert s["status"] == ("ERROR" if failed else "UNSET"), s["attributes"].get("error.type")
    text = scrape(prom)
    for name in ("parse_failures", "unrecognised_connections", "http2_desyncs", "http2_streams_dropped"):
        assert sample(text, f"beyla_sidecar_{name}_total") == 0, name
    assert sample(text, "http_server_request_duration_seconds_count") == count
    assert sample(text, "http_client_request_duration_seconds_count") == count


def test_h2c_prior_knowledge_nginx(pod: Pod, start_sidecar) -> None:
    """Five requests on one connection (apps/h2_client.py), then one by curl --http2-prior-knowledge."""
    port = free_port()
    start_nginx(pod, port, FILES, locations=UPLOAD, http2=True)
    sidecar, prom = start_with_prometheus(start_sidecar)
    got = h2_client(pod, port, *(f"GET:{path}" for path in GETS), f"POST:/upload:{POSTED}")
    got += curl_h2(pod, f"http://127.0.0.1:{port}", ("/hello",), "--http2-prior-knowledge")
    assert [status for status, *_ in got] == [200, 200, 404, 200, 405, 200]
    assert len({local for _, _, local, _ in got[:5]}) == 1 and got[0][1] == len(INDEX)
    requests = [("GET", path) for path in GETS] + [("POST", "/upload"), ("GET", "/hello")]
    check_nginx_h2(sidecar, prom, port, "http", [(m, p, r) for (m, p), r in zip(requests, got)])


def test_tls_alpn_h2_nginx_and_curl(pod: Pod, start_sidecar, cert) -> None:  # noqa: F811 (the fixture)
    """curl --http2 (ALPN h2, OpenSSL): four requests on one connection, then a POST."""
    port = free_port()
    start_nginx(pod, port, FILES, tls=cert[:2], locations=UPLOAD, http2=True)
    sidecar, prom = start_with_prometheus(start_sidecar)
    url = f"https://127.0.0.1:{port}"
    got = curl_h2(pod, url, GETS, "--http2", "-k")
    got += curl_h2(pod, url, ("/upload",), "--http2", "-k", "--data-binary", "p" * POSTED)
    assert [status for status, *_ in got] == [200, 200, 404, 200, 405]
    assert len({local for _, _, local, _ in got[:4]}) == 1 and got[0][1] == len(INDEX)
    requests = [("GET", path) for path in GETS] + [("POST", "/upload")]
    check_nginx_h2(sidecar, prom, port, "https", [(m, p, r) for (m, p), r in zip(requests, got)])


HELD = 4  # SayHello calls before and after the sidecar starts, on the connection opened before it


def test_connection_opened_before_the_sidecar(pod: Pod, start_sidecar) -> None:
    port = free_port()
    start_grpc_server(pod, port)
    held = pod.spawn([*GRPC, "hold", str(port), str(HELD)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert held.stdin is not None and held.stdout is not None
    held_port = int(held.stdout.readline())  # HELD calls made: the dynamic tables are in use
    sidecar, prom = start_with_prometheus(start_sidecar)
    held.stdin.write(b"go\n")
    held.stdin.flush()
    assert held.stdout.readline() == b"done\n"  # HELD calls more, seen by the sidecar
    local = grpc_client(pod, "calls", port, 2, MESSAGES)  # a new connection: exact
    spans = sidecar.wait_spans(2 * 3 * 2)
    assert len(spans) == 2 * 3 * 2  # none from the held connection: its headers cannot be decoded
    assert {s["attributes"]["client.port"] for s in spans if s["kind"] == "SERVER"} == {local} != {held_port}
    for kind in ("SERVER", "CLIENT"):
        assert sum(rpc_summary(spans, kind, port).values()) == 6
        assert {s["attributes"]["rpc.method"] for s in spans if s["kind"] == kind} == {
            "SayHello", "StreamHellos", "Find"}
    text = scrape(prom)
    mine = "\n".join(line for line in text.splitlines() if line.startswith("beyla_sidecar") and not line.endswith(" 0"))
    # both ends of the held connection: not traced, counted, named HTTP/2 joined mid-stream
    assert sample(text, "beyla_sidecar_unrecognised_connections_total", port=str(port)) == 2, mine
    assert sample(text, "beyla_sidecar_http2_desyncs_total", reason="mid_stream") == 2, mine
    assert sample(text, "beyla_sidecar_http2_desyncs_total") == 2, mine
    assert sample(text, "beyla_sidecar_parse_failures_total") == 0, mine


def test_h2c_upgrade_hypercorn_and_curl(pod: Pod, start_sidecar) -> None:
    """curl --http2 on http:// asks `Upgrade: h2c`; hypercorn answers 101 and the first request's
    response, then the next requests, in HTTP/2 on the same connection."""
    port = free_port()
    proc = pod.spawn([sys.executable, str(APPS / "h2c_server.py"), str(port)], stdout=subprocess.PIPE,
                     env={"OTEL_SERVICE_NAME": "hypercorn", "PATH": "/usr/bin:/bin"})
    assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"
    sidecar, prom = start_with_prometheus(start_sidecar)
    paths = ("/bytes/1500", "/bytes/70000", "/missing", "/bytes/3")
    got = curl_h2(pod, f"http://127.0.0.1:{port}", paths, "--http2")
    assert [(status, size, version) for status, size, _, version in got] == [
        (200, 1500, "2"), (200, 70000, "2"), (404, 10, "2"), (200, 3, "2")]
    assert len({local for _, _, local, _ in got}) == 1  # one connection, upgraded once
    spans = sidecar.wait_spans(2 * len(paths))
    assert len(spans) == 2 * len(paths)
    expected = collections.Counter(("GET", path, status, size, "2", "http")
                                   for path, (status, size, _, _) in zip(paths, got))
    assert http_summary(spans, "SERVER", port) == http_summary(spans, "CLIENT", port) == expected
    # curl resets each stream once its body is in, and closes before the last END_STREAM: no errors
    check_errors_and_counters(spans, prom, len(paths))
