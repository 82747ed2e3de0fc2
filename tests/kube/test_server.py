"""The webhook over real HTTPS on loopback, with the certificate it generated at start-up."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from beyla_sidecar.kube import certs
from beyla_sidecar.kube.webhook import WebhookServer, tls_source

from .conftest import REPO, admission_review, apply_patch, decode_response, validate_k8s, webhook_config
from .test_injection import RS_POD, rs_expected

SERVICE_HOST = "beyla-sidecar-webhook.beyla-sidecar.svc"  # the name the API server dials
TIMEOUT_MS = "1500"
HANDSHAKE_MS = "1000"


@contextlib.contextmanager
def serving(**env: str):
    cfg = webhook_config(BEYLA_WEBHOOK_ADDRESS="127.0.0.1", BEYLA_WEBHOOK_PORT="0", **env)
    tls, ca_pem = tls_source(cfg)
    srv = WebhookServer(cfg, tls).start()
    srv.ready.set()
    srv.ca_pem = ca_pem
    srv.client_ctx = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server():
    with serving(BEYLA_WEBHOOK_REQUEST_TIMEOUT_MS=TIMEOUT_MS, BEYLA_WEBHOOK_MAX_BODY_BYTES="65536",
                 BEYLA_WEBHOOK_MAX_CONNECTIONS="64", BEYLA_WEBHOOK_HANDSHAKE_TIMEOUT_MS=HANDSHAKE_MS) as srv:
        yield srv


def https_request(srv, method: str, path: str, body: bytes | None = None,
                  headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    tls = srv.client_ctx.wrap_socket(raw, server_hostname=SERVICE_HOST)
    try:
        hdrs = {"Host": SERVICE_HOST, **({"Content-Type": "application/json"} if body is not None else {}),
                **(headers or {})}
        if body is not None and "Content-Length" not in hdrs:
            hdrs["Content-Length"] = str(len(body))
        head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        tls.sendall(head.encode() + (body or b""))
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    finally:
        tls.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers_out = dict(line.split(": ", 1) for line in lines[1:])
    return status, payload, headers_out


def test_certificate_is_valid_for_the_service_names(server):
    for name in certs.service_dns_names("beyla-sidecar-webhook", "beyla-sidecar"):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        with server.client_ctx.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        server.client_ctx.wrap_socket(raw, server_hostname="evil.example.com")
    raw.close()


def test_health_ready_metrics_and_404(server):
    assert https_request(server, "GET", "/healthz")[:2] == (200, b"ok\n")
    assert https_request(server, "GET", "/readyz")[0] == 200
    server.ready.clear()
    assert https_request(server, "GET", "/readyz")[0] == 503
    assert https_request(server, "GET", "/nope")[0] == 404
    assert https_request(server, "POST", "/other", b"{}")[0] == 404
    status, body, headers = https_request(server, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    check_exposition(body.decode())


def check_exposition(text: str) -> dict[str, float]:
    """Strict check of the Prometheus text format we write; returns {series: value}."""
    series: dict[str, float] = {}
    typed: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert re.fullmatch(r"# HELP [a-zA-Z_:][a-zA-Z0-9_:]* \S.*", line), line
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in typed, f"duplicate TYPE for {name}"
            typed[name] = kind
        else:
            m = re.fullmatch(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-z_]+="[^"\\]*"(?:,[a-z_]+="[^"\\]*")*\})? (\S+)', line)
            assert m, line
            name = m.group(1)
            family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in typed else name
            assert family in typed, f"{name} has no TYPE"
            if typed[family] == "counter":
                assert name.endswith("_total")
            series[name + (m.group(2) or "")] = float(m.group(3))
    return series


def test_50_concurrent_admissions(server):
    def one(i: int):
        review = admission_review(RS_POD, "shop", uid=f"00000000-0000-0000-0000-{i:012d}")
        status, body, _ = https_request(server, "POST", "/mutate", json.dumps(review).encode())
        assert status == 200
        _, patch = decode_response(body, review["request"]["uid"])
        return apply_patch(RS_POD, patch)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    expected = rs_expected()
    assert all(r == expected for r in results)
    validate_k8s(results[0])
    series = check_exposition(server.metrics.render())
    assert series['beyla_webhook_admission_requests_total{outcome="injected"}'] == 50
    assert series['beyla_webhook_admission_duration_seconds_count'] == 50
    assert series['beyla_webhook_admission_duration_seconds_bucket{le="+Inf"}'] == 50
    assert series['beyla_webhook_http_responses_total{code="200"}'] == 50


def test_malformed_missing_length_and_oversized_bodies(server):
    assert https_request(server, "POST", "/mutate", b"{not json")[0] == 400
    assert https_request(server, "POST", "/mutate", b'{"kind": "AdmissionReview"}')[0] == 400
    assert https_request(server, "POST", "/mutate", b"{}", {"Content-Length": "-5"})[0] == 400
    # No Content-Length (and no body): 411.
    assert https_request(server, "POST", "/mutate")[0] == 411
    # Oversized: refused from the header, without reading the body.
    status, body, _ = https_request(server, "POST", "/mutate", b"x" * 1024, {"Content-Length": str(10 * 1024 * 1024)})
    assert status == 413 and b"65536" in body
    # The whole oversized body actually sent.
    big = json.dumps(admission_review(RS_POD, "shop") | {"padding": "x" * 70000}).encode()
    assert https_request(server, "POST", "/mutate", big)[0] == 413
    series = check_exposition(server.metrics.render())
    assert series['beyla_webhook_http_responses_total{code="400"}'] == 3
    assert series['beyla_webhook_http_responses_total{code="411"}'] == 1
    assert series['beyla_webhook_http_responses_total{code="413"}'] == 2
    # Still serving.
    review = admission_review(RS_POD, "shop")
    assert https_request(server, "POST", "/mutate", json.dumps(review).encode())[0] == 200


def dropped(srv, reason: str) -> float:
    return check_exposition(srv.metrics.render())[f'beyla_webhook_dropped_connections_total{{reason="{reason}"}}']


def closed_unanswered(sock: socket.socket) -> bool:
    """True when the server closes `sock` (EOF or reset) without sending anything."""
    sock.settimeout(5)
    try:
        return sock.recv(100) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True


def test_slow_clients_do_not_block_others_and_are_cut_off(server):
    # 1. TCP connected, never starts TLS.
    silent = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    # 2. TLS done, half a request line and headers, then nothing (slowloris).
    partial = server.client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=10),
                                            server_hostname=SERVICE_HOST)
    partial.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n")
    # 3. Trickles one byte every 200 ms: would defeat a per-read timeout, not the deadline.
    trickle = server.client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=10),
                                            server_hostname=SERVICE_HOST)
    stop = threading.Event()

    def trickler():
        try:
            for b in b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                if stop.wait(0.2):
                    return
                trickle.sendall(bytes([b]))
        except OSError:
            pass

    t = threading.Thread(target=trickler, daemon=True)
    t.start()
    started = time.monotonic()
    review = json.dumps(admission_review(RS_POD, "shop")).encode()
    for _ in range(10):
        t0 = time.monotonic()
        assert https_request(server, "POST", "/mutate", review)[0] == 200
        assert time.monotonic() - t0 < 1.0, "a normal request waited for a slow client"

    for sock in (silent, partial, trickle):
        assert closed_unanswered(sock), "the server answered a slow client"
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 2.0, f"slow clients held for {elapsed:.1f}s, deadline is 1.5s"
    stop.set()
    t.join(2)
    for sock in (silent, partial, trickle):
        sock.close()
    assert https_request(server, "GET", "/healthz")[0] == 200
    assert dropped(server, "idle") == 1  # the silent one, at the handshake timeout (1 s)
    assert dropped(server, "deadline") == 2  # the other two, at the request deadline (1.5 s)


def test_200_idle_connections_do_not_delay_admissions(server):
    # Before: each idle TCP connection held one of the 64 (default 128) request threads through its
    # TLS handshake, so every admission was refused until their deadline.
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(200)]
    time.sleep(0.3)  # all accepted and waiting for a ClientHello
    review = admission_review(RS_POD, "shop")
    for _ in range(5):
        t0 = time.monotonic()
        status, body, _ = https_request(server, "POST", "/mutate", json.dumps(review).encode())
        assert status == 200
        assert decode_response(body, review["request"]["uid"])[1]  # the patch
        assert time.monotonic() - t0 < 1.0
    assert all(closed_unanswered(s) for s in idle)  # at the handshake timeout
    for s in idle:
        s.close()
    assert dropped(server, "idle") == 200
    assert dropped(server, "evicted") == 0 and dropped(server, "tls") == 0
    assert server.metrics.rejected_connections == 0


def test_idle_flood_from_one_address_evicts_its_own_connections():
    with serving(BEYLA_WEBHOOK_MAX_IDLE_CONNECTIONS="50", BEYLA_WEBHOOK_HANDSHAKE_TIMEOUT_MS="5000") as srv:
        # The API server's connection, not yet past its ClientHello, then 100 idle from another address.
        api = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        time.sleep(0.1)
        flood = [socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=("127.0.0.2", 0))
                 for _ in range(100)]
        deadline = time.monotonic() + 5
        while dropped(srv, "evicted") < 51 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dropped(srv, "evicted") == 51  # 101 held, 50 kept
        # A newcomer at the cap replaces one more of the flood.
        assert https_request(srv, "GET", "/healthz")[0] == 200
        assert dropped(srv, "evicted") == 52
        closed, _, _ = select.select(flood + [api], [], [], 0.5)
        assert closed == flood[:52], "not the oldest of the flooding address"
        assert all(s.recv(1) == b"" for s in closed)
        # The API server's connection survived the flood.
        tls = srv.client_ctx.wrap_socket(api, server_hostname=SERVICE_HOST)
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.0 200")
        tls.close()
        for s in flood:
            s.close()


def test_connection_cap_rejects_excess_then_recovers():
    with serving(BEYLA_WEBHOOK_REQUEST_TIMEOUT_MS="800", BEYLA_WEBHOOK_MAX_CONNECTIONS="2") as srv:
        # Two requests started and stalled: they hold the two request threads.
        stalled = []
        for _ in range(2):
            tls = srv.client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                                             server_hostname=SERVICE_HOST)
            tls.sendall(b"GET /healthz HTTP/1.1\r\n")
            stalled.append(tls)
        time.sleep(0.2)
        third = srv.client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=5),
                                           server_hostname=SERVICE_HOST)
        third.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_unanswered(third)
        third.close()
        assert srv.metrics.rejected_connections == 1
        assert all(closed_unanswered(s) for s in stalled)  # their deadline
        assert https_request(srv, "GET", "/healthz")[0] == 200
        assert dropped(srv, "deadline") == 2
        for s in stalled:
            s.close()


def test_deeply_nested_json_gets_400(server):
    # Before: json.loads raised RecursionError and the connection closed without a response.
    nested = b"[" * 20_000 + b"]" * 20_000  # under the 64 KiB body limit of the fixture
    review = json.dumps(admission_review(RS_POD, "shop")).encode()
    in_review = review[:-1] + b', "extra": ' + nested + b"}"
    for body in (nested, in_review):
        assert https_request(server, "POST", "/mutate", body)[:2] == (400, b"body is JSON nested too deeply\n")
    assert https_request(server, "POST", "/mutate", review)[0] == 200


def test_oversized_body_and_headers_are_answered_not_reset(server):
    # Before: the server answered, read at most 256 KiB, and closed on unread data: the reset
    # reached the client before it read the answer.
    status, body, _ = https_request(server, "POST", "/mutate", b"x" * (4 * 1024 * 1024))
    assert (status, body) == (413, b"body larger than 65536 bytes\n")
    for _ in range(3):
        status, body, _ = https_request(server, "GET", "/healthz", headers={"X-Big": "a" * 200_000})
        assert (status, body) == (431, b"Line too long\n")
    # 200 KB over 50 headers of 4 KB: each line is allowed, their sum is not (before: 200).
    many = {f"X-Part-{i}": "a" * 4000 for i in range(50)}
    status, body, _ = https_request(server, "POST", "/mutate", b"{}", headers=many)
    assert (status, body) == (431, b"request line and headers larger than 65536 bytes\n")
    series = check_exposition(server.metrics.render())
    assert series['beyla_webhook_http_responses_total{code="413"}'] == 1
    assert series['beyla_webhook_http_responses_total{code="431"}'] == 4
    assert https_request(server, "GET", "/healthz")[0] == 200


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"])
def test_tls12_cbc_suites_are_refused(server, cipher):
    # Before: both negotiated (Python's default server list allows CBC with SHA-2 MACs).
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        ctx.wrap_socket(raw, server_hostname=SERVICE_HOST)
    raw.close()
    deadline = time.monotonic() + 2
    while dropped(server, "tls") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dropped(server, "tls") == 1


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                                    "ECDHE-ECDSA-CHACHA20-POLY1305"])
def test_tls12_aead_suites_are_negotiated(server, cipher):
    ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                         server_hostname=SERVICE_HOST) as tls:
        assert tls.cipher()[:2] == (cipher, "TLSv1.2")


def test_certificate_files_are_reloaded_when_renewed(tmp_path):
    first = certs.generate(["beyla-sidecar-webhook.beyla-sidecar.svc"])
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.cert_pem)
    key.write_bytes(first.key_pem)
    cfg = webhook_config(BEYLA_WEBHOOK_ADDRESS="127.0.0.1", BEYLA_WEBHOOK_PORT="0",
                         BEYLA_WEBHOOK_CERT=str(cert), BEYLA_WEBHOOK_KEY=str(key))
    tls, ca = tls_source(cfg)
    assert ca is None
    tls._check_every = tls._next_check = 0.0
    srv = WebhookServer(cfg, tls).start()
    try:
        srv.client_ctx = ssl.create_default_context(cadata=first.ca_pem.decode())
        assert https_request(srv, "GET", "/healthz")[0] == 200
        second = certs.generate(["beyla-sidecar-webhook.beyla-sidecar.svc"])
        cert.write_bytes(second.cert_pem)
        key.write_bytes(second.key_pem)
        os.utime(cert, (time.time() + 5, time.time() + 5))
        srv.client_ctx = ssl.create_default_context(cadata=second.ca_pem.decode())
        assert https_request(srv, "GET", "/healthz")[0] == 200
    finally:
        srv.stop()


def test_cert_without_key_is_a_config_error():
    with pytest.raises(ValueError, match="both"):
        tls_source(webhook_config(BEYLA_WEBHOOK_CERT="/tmp/x.crt"))


def test_serve_runs_until_sigterm():
    env = {**os.environ, "BEYLA_WEBHOOK_ADDRESS": "127.0.0.1", "BEYLA_WEBHOOK_PORT": "0"}
    code = ("import sys; from beyla_sidecar.config import load, WebhookConfig; "
            "from beyla_sidecar.kube.webhook import serve; sys.exit(serve(load(WebhookConfig)))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        deadline = time.monotonic() + 20
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            m = re.search(r"webhook serving.*port=(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "".join(lines)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5)) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(100).startswith(b"HTTP/1.0 200")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
