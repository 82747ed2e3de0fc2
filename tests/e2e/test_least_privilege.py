"""`run` under exactly the documented capability set (what the webhook and the chart give the
sidecar, nothing more), as root and as another uid: HTTP through the socket probes and HTTPS
through the OpenSSL uprobes are both traced, and /readyz and the self-metrics say so."""

from __future__ import annotations

import urllib.request

import pytest

from ..privileges import DOCUMENTED, effective, mask, setpriv
from .pod import Pod, Sidecar, free_port
from .test_tls import cert, curl, method_path_status, spans_on, start_tls_server, tls_client  # noqa: F401 (fixture)

pytestmark = pytest.mark.bpf


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(page: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in page.splitlines() if line.startswith(name + " "))


@pytest.mark.parametrize("uid", [0, 1000])
def test_http_and_https_under_exactly_the_documented_capabilities(pod: Pod, cert, uid: int) -> None:
    tls_port, plain_port, metrics_port = free_port(), free_port(), free_port()
    start_tls_server(pod, cert, tls_port, http_port=plain_port)  # one process, libssl mapped
    sidecar = Sidecar(pod, {"BEYLA_PROMETHEUS_PORT": str(metrics_port)}, wrapper=setpriv(DOCUMENTED, uid))
    try:
        assert effective(pod.payload_pid(sidecar.proc)) == (uid, mask(DOCUMENTED))
        for _ in range(3):
            assert curl(pod, f"https://127.0.0.1:{tls_port}/hello") == b"hello\n"  # SSL_read/SSL_write
        for _ in range(2):
            assert curl(pod, f"http://127.0.0.1:{plain_port}/hello") == b"hello\n"
        tls_client(pod, tls_port, "/hello", 1, post=True)  # SSL_read_ex/SSL_write_ex

        spans = sidecar.wait_spans(14)
        assert len(spans) == 14
        https_servers, https_clients = spans_on(spans, "SERVER", tls_port), spans_on(spans, "CLIENT", tls_port)
        assert method_path_status(https_servers) == method_path_status(https_clients) == {
            ("GET", "/hello", 200): 4, ("POST", "/echo", 201): 1}
        http_servers, http_clients = spans_on(spans, "SERVER", plain_port), spans_on(spans, "CLIENT", plain_port)
        assert method_path_status(http_servers) == method_path_status(http_clients) == {("GET", "/hello", 200): 2}
        assert {s["attributes"]["url.scheme"] for s in https_servers + https_clients} == {"https"}
        assert {s["attributes"]["url.scheme"] for s in http_servers + http_clients} == {"http"}

        assert scrape(metrics_port, "/readyz") == (200, "ready\n")
        status, page = scrape(metrics_port, "/metrics")
        assert status == 200
        assert metric(page, "beyla_sidecar_tls_libraries") == 1
        assert metric(page, "beyla_sidecar_probe_attach_failures_total") == 0
        log = sidecar.err.read_text()
        assert '"uprobes": "uprobe_multi"' in log and "OpenSSL probes attached" in log
        assert "cannot attach" not in log and "will not be traced" not in log
    finally:
        assert sidecar.stop() == 0
