"""Publish the webhook's generated CA as the `caBundle` of its MutatingWebhookConfiguration.

Standard library only (urllib + ssl) against the Kubernetes API, with the pod's service-account
token. RBAC: `get` and `patch` on `mutatingwebhookconfigurations`, restricted by `resourceNames`
to the chart's own configuration; nothing else.

Several replicas each have their own CA, so the bundle holds several: each replica puts its CA first
and keeps the others' that have not expired (at most `KEEP`), with a JSONPatch `test` on
`metadata.resourceVersion` so that two replicas starting together cannot overwrite each other. A
replica re-checks its CA periodically (webhook.py) and puts it back if it was pushed out.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import structlog
from cryptography import x509

log = structlog.get_logger()

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
KEEP = 10
MAX_CONFLICTS = 5


class KubeAPIError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"Kubernetes API answered {status}: {message}")
        self.status = status


@dataclass
class KubeClient:
    base_url: str
    token_file: str = SERVICE_ACCOUNT_DIR + "/token"
    ca_file: str = SERVICE_ACCOUNT_DIR + "/ca.crt"
    timeout: float = 10.0

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        # The token is re-read every time: projected service-account tokens are rotated by the kubelet.
        with open(self.token_file, encoding="ascii") as f:
            token = f.read().strip()
        ctx = ssl.create_default_context(cafile=self.ca_file)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json",
            **({"Content-Type": content_type} if data is not None else {}),
        })
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read(4096).decode("utf-8", "replace")
            try:
                detail = json.loads(detail).get("message", detail)
            except (ValueError, AttributeError):
                pass
            raise KubeAPIError(exc.code, detail) from None


def configuration_path(name: str) -> str:
    return f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"


def split_pem(bundle: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    out = []
    for part in bundle.split(marker):
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + marker + b"\n")
    return out


def merge_bundle(ours: bytes, existing: bytes, now: dt.datetime | None = None, keep: int = KEEP) -> bytes:
    """Our CA first, then the other still-valid CAs of `existing`, without duplicates, at most `keep`."""
    now = now or dt.datetime.now(dt.UTC)
    merged = [ours.strip() + b"\n"]
    seen = {x509.load_pem_x509_certificate(ours).fingerprint(_sha256())}
    for pem in split_pem(existing):
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            continue
        fp = cert.fingerprint(_sha256())
        if fp in seen or cert.not_valid_after_utc <= now:
            continue
        seen.add(fp)
        merged.append(pem)
    return b"".join(merged[:keep])


def bundle_contains(bundle: bytes, ca_pem: bytes) -> bool:
    want = x509.load_pem_x509_certificate(ca_pem).fingerprint(_sha256())
    for pem in split_pem(bundle):
        try:
            if x509.load_pem_x509_certificate(pem).fingerprint(_sha256()) == want:
                return True
        except ValueError:
            continue
    return False


def publish(client: KubeClient, name: str, ca_pem: bytes) -> bool:
    """Make sure every service-backed webhook of configuration `name` trusts `ca_pem`.

    Returns True when it patched, False when the CA was already there. Raises KubeAPIError.
    """
    path = configuration_path(name)
    for _attempt in range(MAX_CONFLICTS):
        cfg = client.request("GET", path)
        version = cfg["metadata"]["resourceVersion"]
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion", "value": version}]
        for i, hook in enumerate(cfg.get("webhooks") or []):
            client_config = hook.get("clientConfig") or {}
            if "service" not in client_config:
                continue
            existing = base64.b64decode(client_config.get("caBundle") or "")
            if bundle_contains(existing, ca_pem):
                continue
            merged = merge_bundle(ca_pem, existing)
            ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle",
                        "value": base64.b64encode(merged).decode()})
        if len(ops) == 1:
            return False
        try:
            client.request("PATCH", path, ops, content_type="application/json-patch+json")
        except KubeAPIError as exc:
            if exc.status in (409, 422):  # someone else patched in between: the test op failed
                log.info("caBundle patch conflict, retrying", configuration=name, status=exc.status)
                continue
            raise
        log.info("caBundle published", configuration=name, webhooks=len(ops) - 1)
        return True
    raise KubeAPIError(409, f"gave up after {MAX_CONFLICTS} conflicting updates of {name}")


def _sha256():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()
