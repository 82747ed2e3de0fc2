"""Helpers for the webhook tests: real AdmissionReview v1 payloads, patch application, schema checks."""

from __future__ import annotations

import base64
import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from beyla_sidecar.config import WebhookConfig, load

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"  # schemas shipped by kubernetes-validate; native sidecars are GA since 1.33


def webhook_config(**env: str) -> WebhookConfig:
    return load(WebhookConfig, env)


@pytest.fixture
def cfg() -> WebhookConfig:
    return webhook_config()


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def admission_review(pod: dict[str, Any], namespace: str, *, dry_run: bool = False,
                     uid: str = "7f0b2891-916f-4ed6-b7cd-27bff1815a8c") -> dict[str, Any]:
    """An AdmissionReview v1 as the API server sends it for a pod CREATE."""
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": (pod.get("metadata") or {}).get("name", ""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:job-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def decode_response(body: bytes, uid: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    review = json.loads(body)
    assert review["apiVersion"] == "admission.k8s.io/v1"
    assert review["kind"] == "AdmissionReview"
    response = review["response"]
    assert response["uid"] == uid
    assert response["allowed"] is True
    patch = None
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(response["patch"]))
    return response, patch


def apply_patch(pod: dict[str, Any], patch: list[dict[str, Any]] | None) -> dict[str, Any]:
    return jsonpatch.apply_patch(copy.deepcopy(pod), patch or [])


def validate_k8s(obj: dict[str, Any]) -> None:
    """Raises kubernetes_validate.ValidationError when `obj` does not match the Kubernetes schema."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


_EXPANSION = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def kubelet_expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined references replaced, `$$` -> `$`, else literal."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _EXPANSION.sub(sub, value)


def resolve_env(container: dict[str, Any], downward: dict[str, str]) -> dict[str, str]:
    """The environment the kubelet would give `container`: fieldRefs from `downward`, in list order."""
    out: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            out[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            out[item["name"]] = kubelet_expand(item.get("value", ""), out)
    return out
