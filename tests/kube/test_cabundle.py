"""Publishing the generated CA: against a fake Kubernetes API server over HTTPS on loopback."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonpatch
import pytest

from beyla_sidecar.kube import cabundle, certs
from beyla_sidecar.kube.webhook import Metrics, keep_ca_published

NAME = "beyla-sidecar"
PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/" + NAME
TOKEN = "eyJhbGciOiJSUzI1NiJ9.fake-token"


def webhook_configuration() -> dict:
    hook = {"admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NAME, "resourceVersion": "100", "uid": "b0b5c1a4-0000-4000-8000-000000000001"},
        "webhooks": [
            {**hook, "name": "pods.beyla-sidecar.io", "clientConfig": {
                "service": {"name": "beyla-sidecar-webhook", "namespace": "beyla-sidecar", "path": "/mutate"}}},
            {**hook, "name": "namespaces.beyla-sidecar.io", "clientConfig": {
                "service": {"name": "beyla-sidecar-webhook", "namespace": "beyla-sidecar", "path": "/mutate/namespace"},
                "caBundle": ""}},
            {**hook, "name": "external.example.com", "clientConfig": {"url": "https://hooks.example.com/x"}},
        ],
    }


class FakeAPI:
    """Just enough of the API server: GET and JSONPatch PATCH of one MutatingWebhookConfiguration."""

    def __init__(self, tmp_path):
        tls = certs.generate(["localhost"])
        (tmp_path / "ca.crt").write_bytes(tls.ca_pem)
        (tmp_path / "token").write_text(TOKEN + "\n")
        self.token_file, self.ca_file = str(tmp_path / "token"), str(tmp_path / "ca.crt")
        self.obj = webhook_configuration()
        self.requests: list[dict] = []
        self.status_override: int | None = None
        self.concurrent_writes = 0  # bump resourceVersion between a GET and the next PATCH this many times
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _record(self, body=None):
                api.requests.append({"method": self.command, "path": self.path,
                                     "authorization": self.headers.get("Authorization"),
                                     "content_type": self.headers.get("Content-Type"), "body": body})

            def do_GET(self):
                self._record()
                with api.lock:
                    if api.status_override:
                        return self._send(api.status_override, {"kind": "Status", "message": "forbidden by test"})
                    if self.path != PATH:
                        return self._send(404, {"kind": "Status", "message": "not found"})
                    obj = copy.deepcopy(api.obj)
                    if api.concurrent_writes:
                        api.concurrent_writes -= 1
                        api.bump()
                self._send(200, obj)

            def do_PATCH(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self._record(body)
                with api.lock:
                    if self.headers.get("Content-Type") != "application/json-patch+json":
                        return self._send(415, {"kind": "Status", "message": "unsupported media type"})
                    try:
                        api.obj = jsonpatch.apply_patch(api.obj, body)
                    except jsonpatch.JsonPatchTestFailed as exc:
                        return self._send(422, {"kind": "Status", "message": str(exc)})
                    api.bump()
                    self._send(200, api.obj)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self._files(tmp_path, tls))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _files(tmp_path, tls):
        (tmp_path / "srv.crt").write_bytes(tls.cert_pem)
        (tmp_path / "srv.key").write_bytes(tls.key_pem)
        return str(tmp_path / "srv.crt"), str(tmp_path / "srv.key")

    def bump(self):
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)

    def client(self) -> cabundle.KubeClient:
        return cabundle.KubeClient(self.url, token_file=self.token_file, ca_file=self.ca_file, timeout=5)

    def bundle(self, i: int) -> bytes:
        return base64.b64decode(self.obj["webhooks"][i]["clientConfig"].get("caBundle", ""))

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api(tmp_path):
    fake = FakeAPI(tmp_path)
    yield fake
    fake.close()


def test_publish_patches_every_service_webhook_with_a_tested_resource_version(api):
    ours = certs.generate(["svc"]).ca_pem
    assert cabundle.publish(api.client(), NAME, ours) is True
    get, patch = api.requests
    assert (get["method"], get["path"]) == ("GET", PATH)
    assert (patch["method"], patch["path"]) == ("PATCH", PATH)
    assert get["authorization"] == patch["authorization"] == f"Bearer {TOKEN}"
    assert patch["content_type"] == "application/json-patch+json"
    b64 = base64.b64encode(ours).decode()
    assert patch["body"] == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "100"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64},
    ]
    assert api.bundle(0) == api.bundle(1) == ours
    assert "caBundle" not in api.obj["webhooks"][2]["clientConfig"]  # url webhook untouched
    # Second time: nothing to do, no PATCH.
    assert cabundle.publish(api.client(), NAME, ours) is False
    assert [r["method"] for r in api.requests] == ["GET", "PATCH", "GET"]


def test_two_replicas_keep_both_cas_and_retry_on_conflict(api):
    a, b = certs.generate(["svc"]).ca_pem, certs.generate(["svc"]).ca_pem
    cabundle.publish(api.client(), NAME, a)
    api.concurrent_writes = 1  # another writer between replica b's GET and PATCH
    assert cabundle.publish(api.client(), NAME, b) is True
    methods = [r["method"] for r in api.requests]
    assert methods == ["GET", "PATCH", "GET", "PATCH", "GET", "PATCH"]  # first PATCH of b failed its test op
    assert api.bundle(0) == api.bundle(1) == b + a
    assert cabundle.bundle_contains(api.bundle(0), a) and cabundle.bundle_contains(api.bundle(0), b)
    # The resulting bundle verifies a certificate of either replica.
    for ca in (a, b):
        ctx = ssl.create_default_context(cadata=api.bundle(0).decode())
        assert ctx.cert_store_stats()["x509_ca"] == 2
        assert ca in api.bundle(0)


def test_merge_drops_expired_and_duplicates_and_caps():
    cas = [certs.generate(["svc"]).ca_pem for _ in range(4)]
    existing = b"".join(cas[1:]) + cas[1] + b"garbage"
    assert cabundle.merge_bundle(cas[0], existing) == b"".join(cas)
    assert cabundle.merge_bundle(cas[0], existing, keep=2) == cas[0] + cas[1]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    assert cabundle.merge_bundle(cas[0], existing, now=later) == cas[0]  # ours is always kept


def test_api_errors_raise(api):
    api.status_override = 403
    with pytest.raises(cabundle.KubeAPIError) as err:
        cabundle.publish(api.client(), NAME, certs.generate(["svc"]).ca_pem)
    assert err.value.status == 403 and "forbidden by test" in str(err.value)


def test_keep_ca_published_sets_ready_and_repairs(api):
    ours = certs.generate(["svc"]).ca_pem
    ready, stop, metrics = threading.Event(), threading.Event(), Metrics()
    t = threading.Thread(target=keep_ca_published, args=(api.client(), NAME, ours, ready, metrics, stop, 0.05),
                         daemon=True)
    t.start()
    try:
        assert ready.wait(5)
        assert metrics.ca_published == 1
        # Someone pushes our CA out: the loop puts it back.
        with api.lock:
            for hook in api.obj["webhooks"][:2]:
                hook["clientConfig"]["caBundle"] = base64.b64encode(certs.generate(["x"]).ca_pem).decode()
            api.bump()
        for _ in range(100):
            if cabundle.bundle_contains(api.bundle(0), ours) and cabundle.bundle_contains(api.bundle(1), ours):
                break
            stop.wait(0.05)
        assert cabundle.bundle_contains(api.bundle(0), ours)
    finally:
        stop.set()
        t.join(5)


def test_keep_ca_published_not_ready_while_api_refuses(api):
    api.status_override = 403
    ready, stop, metrics = threading.Event(), threading.Event(), Metrics()
    t = threading.Thread(target=keep_ca_published, args=(api.client(), NAME, b"", ready, metrics, stop, 0.05),
                         daemon=True)
    t.start()
    assert not ready.wait(0.5)
    assert metrics.ca_published == 0
    stop.set()
    t.join(5)
