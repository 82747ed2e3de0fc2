"""End to end with real probes: HTTPS through OpenSSL uprobes, processes that come and go,
and process selection. Servers: nginx (TLS) and Python's ssl module; clients: curl
(SSL_read/SSL_write) and Python (SSL_read_ex/SSL_write_ex)."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ..kernel import bpf_map_entries
from .inprocess import InProcessSidecar, wait_for
from .nginx import start_nginx
from .pod import APPS, Pod, free_port

pytestmark = pytest.mark.bpf

INDEX = b"<h1>nginx over TLS</h1>\n" * 40
FILES = {"index.html": INDEX, "hello": b"hello\n"}
# Hash maps whose entries belong to processes, threads or sockets (not configuration). A thread's
# SSL_* call is in task storage (ssl_calls), which the kernel frees with the thread.
STATE_MAPS = ("conns", "serving", "ssl_socks")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Self-signed (certificate, key, both in one PEM)."""
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", d / "key.pem", "-out", d / "cert.pem"],
                   check=True, capture_output=True)
    (d / "both.pem").write_bytes((d / "key.pem").read_bytes() + (d / "cert.pem").read_bytes())
    return d / "cert.pem", d / "key.pem", d / "both.pem"


def start_tls_server(pod: Pod, cert: tuple[Path, Path, Path], port: int, inside: bool = True,
                     http_port: int | None = None, service: str = "tls-app") -> None:
    argv = [sys.executable, str(APPS / "tls_server.py"), str(cert[2]), str(port)]
    if http_port:
        argv.append(str(http_port))
    proc = pod.spawn(argv, inside=inside, env={"OTEL_SERVICE_NAME": service, "PATH": "/usr/bin:/bin"},
                     stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"listening\n"


def curl(pod: Pod, url: str, inside: bool = True) -> bytes:
    return pod.run(["curl", "-sSk", "-o", "-", url], inside=inside).stdout


def tls_client(pod: Pod, port: int, path: str, count: int, post: bool = False, inside: bool = True) -> int:
    """Python client; returns its local port."""
    argv = [sys.executable, str(APPS / "tls_client.py"), str(port), path, str(count)] + (["post"] if post else [])
    return int(pod.run(argv, inside=inside).stdout)


def spans_on(spans: list[dict], kind: str, port: int) -> list[dict]:
    return [s for s in spans if s["kind"] == kind and s["attributes"].get("server.port") == port]


def method_path_status(spans: list[dict]) -> collections.Counter:
    return collections.Counter((s["attributes"]["http.request.method"], s["attributes"]["url.path"],
                                s["attributes"].get("http.response.status_code")) for s in spans)


def test_https_spans_inside_pod_only(pod: Pod, start_sidecar, cert) -> None:
    app, web, outside = free_port(), free_port(), free_port()
    start_tls_server(pod, cert, app)
    start_nginx(pod, web, FILES, tls=cert[:2])
    start_tls_server(pod, cert, outside, inside=False, service="outside-app")
    sidecar = start_sidecar()

    for path in ("/hello", "/hello", "/notfound"):
        curl(pod, f"https://127.0.0.1:{app}{path}")
    py_port = tls_client(pod, app, "/hello", 3, post=True)
    for path in ("/index.html", "/index.html", "/missing"):
        curl(pod, f"https://127.0.0.1:{web}{path}")
    web_py_port = tls_client(pod, web, "/hello", 2)
    for _ in range(2):  # the same pair outside the pod: must not be seen
        assert curl(pod, f"https://127.0.0.1:{outside}/hello", inside=False) == b"hello\n"
        tls_client(pod, outside, "/hello", 2, post=True, inside=False)

    spans = sidecar.wait_spans(24)
    assert [s for s in spans if outside in (s["attributes"].get("server.port"),
                                            s["attributes"].get("network.peer.port"))] == []
    assert len(spans) == 24
    assert {s["attributes"]["url.scheme"] for s in spans} == {"https"}

    app_servers, app_clients = spans_on(spans, "SERVER", app), spans_on(spans, "CLIENT", app)
    expected_app = collections.Counter({("GET", "/hello", 200): 5, ("GET", "/notfound", 404): 1,
                                        ("POST", "/echo", 201): 1})
    assert method_path_status(app_servers) == method_path_status(app_clients) == expected_app
    assert {s["resource"]["service.name"] for s in app_servers} == {"tls-app"}
    for s in app_servers:
        a = s["attributes"]
        assert a["client.address"] == "127.0.0.1" and a["network.peer.port"] == a["client.port"] != app
    assert sum(s["attributes"]["client.port"] == py_port for s in app_servers) == 4  # keep-alive
    post = [s for s in app_servers if s["attributes"]["http.request.method"] == "POST"][0]
    assert post["attributes"]["http.request.body.size"] == 300
    for s in app_clients:
        assert s["attributes"]["network.peer.port"] == app and s["attributes"]["server.address"] == "127.0.0.1"
    assert sum(s["resource"]["service.name"] == "curl" for s in app_clients) == 3

    web_servers, web_clients = spans_on(spans, "SERVER", web), spans_on(spans, "CLIENT", web)
    expected_web = collections.Counter({("GET", "/index.html", 200): 2, ("GET", "/missing", 404): 1,
                                        ("GET", "/hello", 200): 2})
    assert method_path_status(web_servers) == method_path_status(web_clients) == expected_web
    assert {s["resource"]["service.name"] for s in web_servers} == {"nginx"}
    assert sum(s["attributes"]["client.port"] == web_py_port for s in web_servers) == 2
    sizes = sorted(s["attributes"]["http.response.body.size"] for s in web_servers
                   if s["attributes"]["url.path"] == "/index.html")
    assert sizes == [len(INDEX), len(INDEX)]
    assert "TLS library not supported" not in sidecar.err.read_text()  # curl maps GnuTLS, uses OpenSSL


def test_server_started_after_the_sidecar_is_traced_within_a_second(pod: Pod, start_sidecar, cert) -> None:
    sidecar = start_sidecar()  # nothing in the pod maps libssl yet
    app, web = free_port(), free_port()
    start_tls_server(pod, cert, app)
    start_nginx(pod, web, FILES, tls=cert[:2])  # master and a worker forked after the sidecar
    for port, path in ((app, "/hello"), (web, "/index.html")):
        curl(pod, f"https://127.0.0.1:{port}{path}")
        done = time.monotonic()
        while not spans_on(sidecar.spans(), "SERVER", port) and time.monotonic() - done < 1.0:
            time.sleep(0.02)
        servers = spans_on(sidecar.spans(), "SERVER", port)
        assert [s["attributes"]["url.path"] for s in servers] == [path], f"no span within 1 s for {path}"
        assert servers[0]["attributes"]["url.scheme"] == "https"


def test_one_process_serving_http_and_https(pod: Pod, start_sidecar, cert) -> None:
    tls_port, plain_port = free_port(), free_port()
    start_tls_server(pod, cert, tls_port, http_port=plain_port)
    sidecar = start_sidecar()
    for _ in range(2):
        curl(pod, f"https://127.0.0.1:{tls_port}/hello")
        curl(pod, f"http://127.0.0.1:{plain_port}/hello")
    tls_client(pod, tls_port, "/hello", 2, post=True)
    pod.run([sys.executable, str(APPS / "keepalive_client.py"), str(plain_port), "2"])

    spans = sidecar.wait_spans(20)
    assert len(spans) == 20  # no span twice, none from ciphertext
    for port, scheme in ((tls_port, "https"), (plain_port, "http")):
        servers, clients = spans_on(spans, "SERVER", port), spans_on(spans, "CLIENT", port)
        assert method_path_status(servers) == method_path_status(clients) == {
            ("GET", "/hello", 200): 4, ("POST", "/echo", 201): 1}
        assert {s["attributes"]["url.scheme"] for s in servers + clients} == {scheme}


def test_statically_linked_openssl(pod: Pod, start_sidecar, cert, tmp_path: Path) -> None:
    """OpenSSL inside the executable (symbols kept): probed in that file, not in a libssl.
    The file is new to the pod when the first run starts: that run waits 300 ms before its
    first TLS call (the probes are attached within a poll cycle or two). Later runs of the
    same file, however short, are covered from their first instruction."""
    client = tmp_path / "static_client"
    subprocess.run(["cc", "-O2", "-o", client, APPS / "static_client.c", "-static", "-lssl", "-lcrypto",
                    "-lpthread"], check=True, capture_output=True)
    app = free_port()
    start_tls_server(pod, cert, app)
    sidecar = start_sidecar()
    for delay in ("300", "0", "0"):
        assert pod.run([str(client), str(app), "/hello", delay]).stdout.endswith(b"\r\n\r\nhello\n")
    spans = sidecar.wait_spans(6)
    clients = spans_on(spans, "CLIENT", app)
    assert len(spans) == 6 and len(clients) == 3
    assert {s["resource"]["service.name"] for s in clients} == {"static_client"}
    assert method_path_status(clients) == {("GET", "/hello", 200): 3}
    assert {s["attributes"]["url.scheme"] for s in spans} == {"https"}
    assert "OpenSSL probes attached" in sidecar.err.read_text() and str(client) in sidecar.err.read_text()


def pod_pids(pod: Pod) -> set[int]:
    out = set()
    for p in psutil.pids():
        try:
            if os.stat(f"/proc/{p}/ns/pid").st_ino == pod.ns_inode:
                out.add(p)
        except OSError:
            pass
    return out


def test_a_thousand_short_lived_processes_leave_nothing_behind(pod: Pod, in_process, cert) -> None:
    port = free_port()
    start_tls_server(pod, cert, port)
    sidecar = InProcessSidecar(pod)
    in_process.append(sidecar)
    p = sidecar.pipeline
    churn = [sys.executable, str(APPS / "churn.py"), str(port)]
    assert pod.run(churn + ["100"]).stdout == b"0\n"  # warm-up: caches, allocator, code paths
    assert wait_for(lambda: p.tracker.stats.exchanges >= 100)
    rss_before = psutil.Process().memory_info().rss
    exchanges = p.tracker.stats.exchanges

    started = time.monotonic()
    assert pod.run(churn + ["1000"], timeout=120).stdout == b"0\n"
    # 500 HTTPS requests from forks of a process that had mapped libssl: server and client spans
    assert wait_for(lambda: p.tracker.stats.exchanges - exchanges >= 1000, timeout=20)
    assert time.monotonic() - started < 45

    live = pod_pids(pod)
    assert wait_for(lambda: len(p.discovery) == len(live) and len(p.tracker) == 0)
    assert p.discovery.instrumented_processes == len(live)  # no selector: all of the pod
    assert p.discovery.tls_files == 1  # libssl, attached once for every process mapping it
    assert len(p.processes) <= len(live)
    entries = bpf_map_entries()
    assert {name: entries[name] for name in STATE_MAPS} == {name: 0 for name in STATE_MAPS}
    assert p.tracker.stats.exchanges - exchanges == 1000
    assert p.tracker.stats.parse_failures.get("http", 0) == 0  # ciphertext is never parsed
    rss_after = psutil.Process().memory_info().rss
    assert rss_after - rss_before < 16 << 20, (rss_before, rss_after)


def test_executable_name_and_open_port_select_processes(pod: Pod, in_process, cert) -> None:
    app, web = free_port(), free_port()
    start_tls_server(pod, cert, app)
    start_nginx(pod, web, FILES, tls=cert[:2])
    by_name = InProcessSidecar(pod, BEYLA_EXECUTABLE_NAME="/nginx$")
    in_process.append(by_name)
    assert by_name.pipeline.discovery.instrumented_processes == 2  # master and worker
    for port in (app, web, app, web):
        curl(pod, f"https://127.0.0.1:{port}/hello")
    assert wait_for(lambda: by_name.pipeline.tracker.stats.exchanges >= 2)
    time.sleep(0.5)
    # only nginx's server spans: neither the Python server nor curl (a client) match
    assert by_name.pipeline.tracker.stats.exchanges == 2
    by_name.stop()
    assert bpf_map_entries() == {}  # the session is closed: no map held any more

    by_port = InProcessSidecar(pod, BEYLA_OPEN_PORT=f"{app}")
    in_process.append(by_port)
    assert by_port.pipeline.discovery.instrumented_processes == 1
    late = free_port()  # a process that starts listening on a selected port later
    tls_client(pod, app, "/hello", 1)
    assert wait_for(lambda: by_port.pipeline.tracker.stats.exchanges >= 1)
    time.sleep(0.5)
    assert by_port.pipeline.tracker.stats.exchanges == 1
    by_port.stop()

    both = InProcessSidecar(pod, BEYLA_OPEN_PORT=f"{late}", BEYLA_EXECUTABLE_NAME="python")
    in_process.append(both)
    assert both.pipeline.discovery.instrumented_processes == 0
    start_tls_server(pod, cert, late)
    assert wait_for(lambda: both.pipeline.discovery.instrumented_processes == 1, timeout=1.0)
    curl(pod, f"https://127.0.0.1:{late}/hello")
    assert wait_for(lambda: both.pipeline.tracker.stats.exchanges >= 1)
    time.sleep(0.5)
    assert both.pipeline.tracker.stats.exchanges == 1
