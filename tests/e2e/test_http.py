"""End to end with real probes: HTTP/1.1 servers and clients inside a pod, and noise outside."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..kernel import bpf_prog_ids, still_loaded
from .nginx import start_nginx
from .pod import APPS, Pod, free_port, wait_port

pytestmark = pytest.mark.bpf

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INDEX = b"<h1>nginx in the pod</h1>\n" * 50



def start_python_server(pod: Pod, port: int, inside: bool, service: str) -> None:
    env = {"OTEL_SERVICE_NAME": service, "PATH": "/usr/bin:/bin"}
    pod.spawn([sys.executable, str(APPS / "server.py"), str(port)], inside=inside, env=env,
              stdout=subprocess.DEVNULL)
    wait_port(port)


def curl(pod: Pod, url: str, inside: bool = True, *headers: str) -> bytes:
    argv = ["curl", "-sS", "-o", "-", url]
    for h in headers:
        argv += ["-H", h]
    return pod.run(argv, inside=inside).stdout


def by_kind(spans: list[dict], kind: str, port: int) -> list[dict]:
    return [s for s in spans if s["kind"] == kind and s["attributes"].get("server.port") == port]


def test_http_spans_inside_pod_only(pod: Pod, start_sidecar, tmp_path: Path) -> None:
    app, web, outside = free_port(), free_port(), free_port()
    start_python_server(pod, app, inside=True, service="inside-app")
    start_nginx(pod, web, {"index.html": INDEX})
    start_python_server(pod, outside, inside=False, service="outside-app")
    sidecar = start_sidecar()

    base = f"http://127.0.0.1:{app}"
    for _ in range(3):
        assert curl(pod, f"{base}/hello") == b"hello\n"
    curl(pod, f"{base}/notfound")
    curl(pod, f"{base}/error")
    assert len(curl(pod, f"{base}/big")) == 100_000
    curl(pod, f"{base}/hello?tp=1", True, f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01")
    assert curl(pod, f"{base}/proxy") == b"upstream 200\n"
    pod.run([sys.executable, str(APPS / "keepalive_client.py"), str(app), "5"])
    for path in ("/index.html", "/index.html", "/missing"):
        curl(pod, f"http://127.0.0.1:{web}{path}")
    for _ in range(5):  # the same kind of traffic outside the pod: must not be seen
        assert curl(pod, f"http://127.0.0.1:{outside}/hello", False) == b"hello\n"
        pod.run([sys.executable, str(APPS / "keepalive_client.py"), str(outside), "2"], inside=False)

    spans = sidecar.wait_spans(36)
    held = bpf_prog_ids(pod.payload_pid(sidecar.proc))
    assert len(held) >= 10 and all(name.startswith("beyla_") for name in held.values())
    assert sidecar.stop() == 0  # SIGTERM: detaches and exits cleanly
    assert not still_loaded(held)

    assert [s for s in spans if outside in (s["attributes"].get("server.port"),
                                            s["attributes"].get("network.peer.port"))] == []
    assert all(s["resource"]["service.name"] != "outside-app" for s in spans)
    app_servers, app_clients = by_kind(spans, "SERVER", app), by_kind(spans, "CLIENT", app)
    assert len(app_servers) == 15 and len(app_clients) == 15
    web_servers, web_clients = by_kind(spans, "SERVER", web), by_kind(spans, "CLIENT", web)
    assert len(web_servers) == 3 and len(web_clients) == 3
    assert len(spans) == 36

    names = collections.Counter(s["name"] for s in app_servers)
    assert names == {"GET /hello": 3 + 1 + 1 + 5, "GET /notfound": 1, "GET /error": 1, "GET /big": 1,
                     "GET /proxy": 1, "POST /echo": 1}
    assert collections.Counter(s["name"] for s in app_clients) == names
    for s in app_servers:
        a = s["attributes"]
        assert s["resource"]["service.name"] == "inside-app"
        assert a["url.path"] == s["name"].split(" ", 1)[1]
        assert "url.query" not in a
        assert a["server.port"] == app and a["client.address"] == "127.0.0.1"
        assert a["network.peer.port"] == a["client.port"] and a["network.peer.port"] != app
        assert a["network.protocol.version"] == "1.1"
        assert int(s["span_id"], 16) != 0 and int(s["trace_id"], 16) != 0
        assert s["end_time_unix_nano"] >= s["start_time_unix_nano"]
    status = {s["name"]: s["attributes"]["http.response.status_code"] for s in app_servers}
    assert status["GET /notfound"] == 404 and status["GET /error"] == 500 and status["POST /echo"] == 201
    errors = {s["name"]: (s["status"], s["attributes"].get("error.type")) for s in app_servers}
    assert errors["GET /error"] == ("ERROR", "500")
    assert errors["GET /notfound"] == ("UNSET", None)  # a 404 is the client's error, not the server's
    client_errors = {s["name"]: (s["status"], s["attributes"].get("error.type")) for s in app_clients}
    assert client_errors["GET /notfound"] == ("ERROR", "404")
    big = [s for s in app_servers if s["name"] == "GET /big"][0]
    assert big["attributes"]["http.response.body.size"] == 100_000
    post = [s for s in app_servers if s["name"] == "POST /echo"][0]
    assert post["attributes"]["http.request.body.size"] == 300

    # Keep-alive: the 5 GETs and the POST of one client share one connection, so one client port.
    port = post["attributes"]["client.port"]
    assert sum(1 for s in app_servers if s["attributes"]["client.port"] == port) == 6

    # Incoming traceparent: the server span continues the caller's trace.
    continued = [s for s in app_servers if s["trace_id"] == TRACE_ID]
    assert len(continued) == 1 and continued[0]["parent_span_id"] == PARENT_ID

    # The client call made while serving /proxy is a child of the /proxy server span.
    proxy = [s for s in app_servers if s["name"] == "GET /proxy"][0]
    children = [s for s in app_clients if s["parent_span_id"] == proxy["span_id"]]
    assert len(children) == 1 and children[0]["trace_id"] == proxy["trace_id"]
    assert children[0]["name"] == "GET /hello" and children[0]["resource"]["service.name"] == "inside-app"

    curl_spans = [s for s in app_clients + web_clients if s["resource"]["service.name"] == "curl"]
    assert len(curl_spans) == 8 + 3
    assert collections.Counter(s["name"] for s in web_servers) == {"GET /index.html": 2, "GET /missing": 1}
    assert {s["resource"]["service.name"] for s in web_servers} == {"nginx"}
    sizes = sorted(s["attributes"].get("http.response.body.size", 0) for s in web_servers
                   if s["name"] == "GET /index.html")
    assert sizes == [len(INDEX), len(INDEX)]


def test_short_lived_interpreter_clients_are_named_by_their_script(pod: Pod, start_sidecar) -> None:
    """A Python client that connects and exits within milliseconds, while the sidecar idles (its
    poll backs off): named by its script, not by its task name python3. The probes wake the
    sidecar at exec and it reads /proc then, not at the client's first record, when the
    client may be gone."""
    app = free_port()
    start_python_server(pod, app, inside=True, service="named-app")
    sidecar = start_sidecar()
    runs = 8
    for _ in range(runs):
        time.sleep(0.5)  # idle: the sidecar's poll is at its longest
        out = pod.run([sys.executable, str(APPS / "raw_client.py"), str(app)],
                      input=b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.stdout == b"HTTP/1.1 200 OK\n"
    clients = by_kind(sidecar.wait_spans(2 * runs), "CLIENT", app)
    assert len(clients) == runs
    for r in (s["resource"] for s in clients):
        assert (r["service.name"], r["process.executable.name"]) == ("raw_client", Path(sys.executable).resolve().name)
