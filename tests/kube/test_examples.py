"""examples/: every manifest validates against the Kubernetes schema; the manual pod is what the webhook injects."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from beyla_sidecar.kube import injection
from beyla_sidecar.kube.webhook import WebhookServer

from .conftest import REPO, admission_review, apply_patch, decode_response, validate_k8s, webhook_config

EXAMPLES = REPO / "examples"
MANIFESTS = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "values-example.yaml")


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_examples_exist():
    assert {p.name for p in MANIFESTS} >= {"pod-manual.yaml", "deployment-opt-in.yaml"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_manifests_validate(path):
    for doc in docs(path):
        validate_k8s(doc)


def test_manual_pod_is_exactly_what_the_webhook_injects():
    manual = next(d for d in docs(EXAMPLES / "pod-manual.yaml") if d["kind"] == "Pod")
    bare = copy.deepcopy(manual)
    del bare["spec"]["shareProcessNamespace"], bare["spec"]["initContainers"], bare["spec"]["volumes"]
    bare["metadata"]["annotations"] = {injection.INJECT_ANNOTATION: "true"}
    cfg = webhook_config(OTEL_EXPORTER_OTLP_ENDPOINT="http://otel-collector.observability:4317")
    server = WebhookServer(cfg, tls=None)  # type: ignore[arg-type]
    review = admission_review(bare, "demo")
    _, body = server.admit(json.dumps(review).encode(), namespace_opted_in=False)
    _, patch = decode_response(body, review["request"]["uid"])
    injected = apply_patch(bare, patch)
    expected = copy.deepcopy(manual)
    expected["metadata"]["annotations"] = {injection.INJECT_ANNOTATION: "true", injection.STATUS_ANNOTATION: "injected"}
    assert injected == expected
    # And the webhook leaves the hand-made one alone.
    _, body = server.admit(json.dumps(admission_review(with_opt_in(manual), "demo")).encode(), namespace_opted_in=True)
    assert decode_response(body, review["request"]["uid"])[1] is None


def with_opt_in(pod):
    out = copy.deepcopy(pod)
    out["metadata"].setdefault("annotations", {})[injection.INJECT_ANNOTATION] = "true"
    return out


def test_opt_in_deployment_pod_gets_the_sidecar():
    """The pod the ReplicaSet controller would create from the example Deployment, through the webhook."""
    deployment = next(d for d in docs(EXAMPLES / "deployment-opt-in.yaml") if d["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {**copy.deepcopy(template["metadata"]), "generateName": "checkout-6c8f9d7b5-",
                        "namespace": "shop",
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-6c8f9d7b5",
                                             "uid": "9d1c2b3a-0000-4000-8000-000000000002", "controller": True,
                                             "blockOwnerDeletion": True}]},
           "spec": copy.deepcopy(template["spec"])}
    pod["metadata"]["labels"]["pod-template-hash"] = "6c8f9d7b5"
    server = WebhookServer(webhook_config(), tls=None)  # type: ignore[arg-type]
    review = admission_review(pod, "shop")
    _, body = server.admit(json.dumps(review).encode(), namespace_opted_in=False)
    _, patch = decode_response(body, review["request"]["uid"])
    mutated = apply_patch(pod, patch)
    validate_k8s(mutated)
    sidecar = mutated["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    assert env["BEYLA_K8S_DEPLOYMENT_NAME"] == "checkout"
    assert env["BEYLA_K8S_REPLICASET_NAME"] == "checkout-6c8f9d7b5"
    assert env["BEYLA_SERVICE_NAME"] == "checkout" and env["BEYLA_SERVICE_VERSION"] == "1.27.3"
    assert env["OTEL_RESOURCE_ATTRIBUTES"].endswith(",deployment.environment.name=staging")
    assert sidecar["securityContext"]["privileged"] is False
    assert mutated["spec"]["shareProcessNamespace"] is True
