"""Table tests: real AdmissionReview v1 in, JSONPatch out, applied, compared with the whole expected pod."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from beyla_sidecar.kube import injection
from beyla_sidecar.kube.webhook import WebhookServer

from .conftest import (
    admission_review,
    apply_patch,
    decode_response,
    fixture_json,
    resolve_env,
    validate_k8s,
    webhook_config,
)

DOWNWARD = [
    {"name": "BEYLA_K8S_POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
    {"name": "BEYLA_K8S_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
    {"name": "BEYLA_K8S_POD_UID", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.uid"}}},
    {"name": "BEYLA_K8S_NODE_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
    {"name": "BEYLA_K8S_POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
    {"name": "BEYLA_K8S_SERVICE_ACCOUNT",
     "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.serviceAccountName"}}},
]

VOLUMES = [
    {"name": "beyla-sidecar-tracefs", "hostPath": {"path": "/sys/kernel/tracing", "type": "Directory"}},
    {"name": "beyla-sidecar-tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
]


def sidecar(literals: list[tuple[str, str]], *, native: bool = True) -> dict[str, Any]:
    """The expected sidecar with default configuration, written out (not computed by the code under test)."""
    c: dict[str, Any] = {
        "name": "beyla-sidecar",
        "image": "beyla-sidecar:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "args": ["run"],
        "env": DOWNWARD + [{"name": n, "value": v} for n, v in literals],
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "securityContext": {
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsUser": 0,
            "runAsNonRoot": False,
            "capabilities": {"drop": ["ALL"],
                             "add": ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHECKPOINT_RESTORE"]},
        },
        "volumeMounts": [
            {"name": "beyla-sidecar-tracefs", "mountPath": "/sys/kernel/tracing", "readOnly": True},
            {"name": "beyla-sidecar-tmp", "mountPath": "/tmp"},
        ],
    }
    if native:
        c["restartPolicy"] = "Always"
    return c


def app(name: str, image: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": image, "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent", **extra}


def pod(metadata: dict[str, Any], containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata,
            "spec": {"containers": containers, "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                     "serviceAccountName": "default", **spec},
            "status": {}}


RS_FIXTURE = fixture_json("review-replicaset-pod.json")
RS_POD = RS_FIXTURE["request"]["object"]
RS_ENV = [
    ("BEYLA_K8S_CONTAINER_NAMES", "checkout"),
    ("BEYLA_K8S_DEPLOYMENT_NAME", "checkout"),
    ("BEYLA_K8S_REPLICASET_NAME", "checkout-7d4b9c5f6d"),
    ("BEYLA_SERVICE_NAME", "checkout"),
    ("BEYLA_SERVICE_NAMESPACE", "shop"),
    ("BEYLA_SERVICE_VERSION", "2.4.1"),
    ("OTEL_RESOURCE_ATTRIBUTES",
     "k8s.pod.name=$(BEYLA_K8S_POD_NAME),k8s.pod.uid=$(BEYLA_K8S_POD_UID),"
     "k8s.namespace.name=$(BEYLA_K8S_NAMESPACE),k8s.node.name=$(BEYLA_K8S_NODE_NAME),"
     "k8s.deployment.name=checkout,k8s.replicaset.name=checkout-7d4b9c5f6d,"
     "k8s.container.name=checkout,service.instance.id=$(BEYLA_K8S_NAMESPACE).$(BEYLA_K8S_POD_NAME).checkout"),
]


def rs_expected(native: bool = True) -> dict[str, Any]:
    out = copy.deepcopy(RS_POD)
    out["metadata"]["annotations"]["beyla-sidecar.io/status"] = "injected"
    out["spec"]["shareProcessNamespace"] = True
    if native:
        out["spec"]["initContainers"] = [sidecar(RS_ENV)]
    else:
        out["spec"]["containers"].append(sidecar(RS_ENV, native=False))
    out["spec"]["volumes"] += VOLUMES
    return out


# --- StatefulSet pod, namespace opt-in, already shareProcessNamespace, an init container, 2 apps ---
STS_POD = pod(
    {"name": "ledger-0", "generateName": "ledger-", "namespace": "payments",
     "labels": {"app.kubernetes.io/instance": "ledger-eu", "app.kubernetes.io/name": "ledger",
                "app.kubernetes.io/version": "17.2", "apps.kubernetes.io/pod-index": "0",
                "controller-revision-hash": "ledger-5b9d8c7f4", "statefulset.kubernetes.io/pod-name": "ledger-0"},
     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "ledger",
                          "uid": "0b4e7c1e-98a2-4a55-9d7a-3e8f5b6c7d8e", "controller": True,
                          "blockOwnerDeletion": True}]},
    [app("db", "postgres:17.2"), app("exporter", "quay.io/prometheuscommunity/postgres-exporter:v0.16.0")],
    shareProcessNamespace=True, hostname="ledger-0", subdomain="ledger",
    initContainers=[app("init-perms", "busybox:1.36", command=["sh", "-c", "chown 999 /data"],
                        volumeMounts=[{"name": "data", "mountPath": "/data"}])],
    volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data-ledger-0"}}],
)
STS_ENV = [
    ("BEYLA_K8S_CONTAINER_NAMES", "db,exporter"),
    ("BEYLA_K8S_STATEFULSET_NAME", "ledger"),
    ("BEYLA_SERVICE_NAME", "ledger-eu"),
    ("BEYLA_SERVICE_NAMESPACE", "payments"),
    ("BEYLA_SERVICE_VERSION", "17.2"),
    ("OTEL_RESOURCE_ATTRIBUTES",
     "k8s.pod.name=$(BEYLA_K8S_POD_NAME),k8s.pod.uid=$(BEYLA_K8S_POD_UID),"
     "k8s.namespace.name=$(BEYLA_K8S_NAMESPACE),k8s.node.name=$(BEYLA_K8S_NODE_NAME),"
     "k8s.statefulset.name=ledger"),
]


def sts_expected() -> dict[str, Any]:
    out = copy.deepcopy(STS_POD)
    out["metadata"]["annotations"] = {"beyla-sidecar.io/status": "injected"}
    out["spec"]["initContainers"].insert(0, sidecar(STS_ENV))
    out["spec"]["volumes"] += VOLUMES
    return out


# --- Pod of a Job created by a CronJob: run to completion, no volumes, image pinned by digest ---
JOB_POD = pod(
    {"generateName": "nightly-report-28934520-", "namespace": "batch",
     "labels": {"batch.kubernetes.io/controller-uid": "c1f0e3a2-7b6d-4f0e-9a8b-2c3d4e5f6a7b",
                "batch.kubernetes.io/job-name": "nightly-report-28934520",
                "controller-uid": "c1f0e3a2-7b6d-4f0e-9a8b-2c3d4e5f6a7b", "job-name": "nightly-report-28934520"},
     "annotations": {"beyla-sidecar.io/inject": "true"},
     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-report-28934520",
                          "uid": "c1f0e3a2-7b6d-4f0e-9a8b-2c3d4e5f6a7b", "controller": True,
                          "blockOwnerDeletion": True}]},
    [app("report", "ghcr.io/acme/report:1.0.3@sha256:" + "ab" * 32)],
    restartPolicy="OnFailure",
)
JOB_ENV = [
    ("BEYLA_K8S_CONTAINER_NAMES", "report"),
    ("BEYLA_K8S_CRONJOB_NAME", "nightly-report"),
    ("BEYLA_K8S_JOB_NAME", "nightly-report-28934520"),
    ("BEYLA_SERVICE_NAME", "nightly-report"),
    ("BEYLA_SERVICE_NAMESPACE", "batch"),
    ("BEYLA_SERVICE_VERSION", "1.0.3"),
    ("OTEL_RESOURCE_ATTRIBUTES",
     "k8s.pod.name=$(BEYLA_K8S_POD_NAME),k8s.pod.uid=$(BEYLA_K8S_POD_UID),"
     "k8s.namespace.name=$(BEYLA_K8S_NAMESPACE),k8s.node.name=$(BEYLA_K8S_NODE_NAME),"
     "k8s.cronjob.name=nightly-report,k8s.job.name=nightly-report-28934520,"
     "k8s.container.name=report,service.instance.id=$(BEYLA_K8S_NAMESPACE).$(BEYLA_K8S_POD_NAME).report"),
]


def job_expected() -> dict[str, Any]:
    out = copy.deepcopy(JOB_POD)
    out["metadata"]["annotations"]["beyla-sidecar.io/status"] = "injected"
    out["spec"]["shareProcessNamespace"] = True
    out["spec"]["initContainers"] = [sidecar(JOB_ENV)]
    out["spec"]["volumes"] = VOLUMES
    return out


# --- Bare pod with a name, OTel resource annotations (one with `$(` and `,` that must be escaped) ---
BARE_POD = pod(
    {"name": "debug-shell", "namespace": "default",
     "annotations": {"beyla-sidecar.io/inject": "true",
                     "resource.opentelemetry.io/service.name": "billing-$(HOME)",
                     "resource.opentelemetry.io/deployment.environment.name": "prod,eu",
                     "resource.opentelemetry.io/service.namespace": "finance"}},
    [app("shell", "debian")],
)
BARE_ENV = [
    ("BEYLA_K8S_CONTAINER_NAMES", "shell"),
    ("BEYLA_SERVICE_NAME", "billing-$$(HOME)"),
    ("BEYLA_SERVICE_NAMESPACE", "finance"),
    ("OTEL_RESOURCE_ATTRIBUTES",
     "k8s.pod.name=$(BEYLA_K8S_POD_NAME),k8s.pod.uid=$(BEYLA_K8S_POD_UID),"
     "k8s.namespace.name=$(BEYLA_K8S_NAMESPACE),k8s.node.name=$(BEYLA_K8S_NODE_NAME),"
     "k8s.container.name=shell,service.instance.id=$(BEYLA_K8S_NAMESPACE).$(BEYLA_K8S_POD_NAME).shell,"
     "deployment.environment.name=prod%2Ceu"),
]


def bare_expected() -> dict[str, Any]:
    out = copy.deepcopy(BARE_POD)
    out["metadata"]["annotations"]["beyla-sidecar.io/status"] = "injected"
    out["spec"]["shareProcessNamespace"] = True
    out["spec"]["initContainers"] = [sidecar(BARE_ENV)]
    out["spec"]["volumes"] = VOLUMES
    return out


# --- Bare pod with only generateName and no labels: service.name from the stable prefix ---
GENERATED_POD = pod({"generateName": "scratch-", "namespace": "dev"}, [app("main", "python:3.12-slim")])
GENERATED_ENV = [
    ("BEYLA_K8S_CONTAINER_NAMES", "main"),
    ("BEYLA_SERVICE_NAME", "scratch"),
    ("BEYLA_SERVICE_NAMESPACE", "dev"),
    ("BEYLA_SERVICE_VERSION", "3.12-slim"),
    ("OTEL_RESOURCE_ATTRIBUTES",
     "k8s.pod.name=$(BEYLA_K8S_POD_NAME),k8s.pod.uid=$(BEYLA_K8S_POD_UID),"
     "k8s.namespace.name=$(BEYLA_K8S_NAMESPACE),k8s.node.name=$(BEYLA_K8S_NODE_NAME),"
     "k8s.container.name=main,service.instance.id=$(BEYLA_K8S_NAMESPACE).$(BEYLA_K8S_POD_NAME).main"),
]


def generated_expected() -> dict[str, Any]:
    out = copy.deepcopy(GENERATED_POD)
    out["metadata"]["annotations"] = {"beyla-sidecar.io/status": "injected"}
    out["spec"]["shareProcessNamespace"] = True
    out["spec"]["initContainers"] = [sidecar(GENERATED_ENV)]
    out["spec"]["volumes"] = VOLUMES
    return out


def with_annotations(p: dict[str, Any], **annotations: str) -> dict[str, Any]:
    out = copy.deepcopy(p)
    out["metadata"].setdefault("annotations", {}).update(annotations)
    return out


def with_spec(p: dict[str, Any], **spec: Any) -> dict[str, Any]:
    out = copy.deepcopy(p)
    out["spec"].update(spec)
    return out


SHARED_FALSE = with_spec(RS_POD, shareProcessNamespace=False)
ALREADY = with_spec(RS_POD, shareProcessNamespace=True,
                    initContainers=[sidecar(RS_ENV)], volumes=RS_POD["spec"]["volumes"] + VOLUMES)
OPTED_OUT = with_annotations(STS_POD, **{"beyla-sidecar.io/inject": "false"})
HOST_PID = with_spec(RS_POD, hostPID=True)
WINDOWS = with_spec(RS_POD, os={"name": "windows"})

SHARED_FALSE_WARNING = ("beyla-sidecar not injected: the pod sets shareProcessNamespace: false, and the sidecar "
                        "can only see the app's processes in a shared PID namespace")

# (id, pod, namespace, path, extra config, expected outcome, expected pod or None (= unchanged), warnings)
CASES = [
    ("replicaset-annotation", RS_POD, "shop", "/mutate", {}, "injected", rs_expected(), []),
    ("replicaset-regular-container", RS_POD, "shop", "/mutate", {"BEYLA_WEBHOOK_NATIVE_SIDECAR": "false"},
     "injected", rs_expected(native=False), []),
    ("statefulset-namespace-opt-in", STS_POD, "payments", "/mutate/namespace", {}, "injected", sts_expected(), []),
    ("statefulset-no-opt-in", STS_POD, "payments", "/mutate", {}, "skipped-not-opted-in", None, []),
    ("statefulset-opted-out-in-opted-in-namespace", OPTED_OUT, "payments", "/mutate/namespace", {},
     "skipped-not-opted-in", None, []),
    ("cronjob-job", JOB_POD, "batch", "/mutate", {}, "injected", job_expected(), []),
    ("cronjob-job-regular-container", JOB_POD, "batch", "/mutate", {"BEYLA_WEBHOOK_NATIVE_SIDECAR": "false"},
     "skipped-unsupported", None,
     ["beyla-sidecar not injected: as a regular container the sidecar would keep this pod "
      "(restartPolicy OnFailure) from completing; enable native sidecars"]),
    ("bare-pod-resource-annotations", BARE_POD, "default", "/mutate", {}, "injected", bare_expected(), []),
    ("bare-pod-generate-name", GENERATED_POD, "dev", "/mutate/namespace", {}, "injected", generated_expected(), []),
    ("share-process-namespace-false", SHARED_FALSE, "shop", "/mutate", {}, "refused-shared-pid-false", None,
     [SHARED_FALSE_WARNING]),
    ("already-injected", ALREADY, "shop", "/mutate", {}, "skipped-already", None, []),
    ("excluded-namespace", RS_POD, "kube-system", "/mutate/namespace", {}, "skipped-not-opted-in", None, []),
    ("host-pid", HOST_PID, "shop", "/mutate", {}, "skipped-unsupported", None,
     ["beyla-sidecar not injected: hostPID pods cannot share a pod PID namespace"]),
    ("windows", WINDOWS, "shop", "/mutate", {}, "skipped-unsupported", None,
     ["beyla-sidecar not injected: eBPF instrumentation needs a Linux pod"]),
]


def run_case(p: dict[str, Any], namespace: str, path: str, env: dict[str, str], *, dry_run: bool = False):
    server = WebhookServer(webhook_config(**env), tls=None)  # type: ignore[arg-type] - admit() needs no TLS
    review = admission_review(p, namespace, dry_run=dry_run)
    status, body = server.admit(json.dumps(review).encode(), namespace_opted_in=path == "/mutate/namespace")
    assert status == 200
    response, patch = decode_response(body, review["request"]["uid"])
    return server, response, patch


@pytest.mark.parametrize("name,p,namespace,path,env,outcome,expected,warnings", CASES, ids=[c[0] for c in CASES])
def test_table(name, p, namespace, path, env, outcome, expected, warnings):
    server, response, patch = run_case(p, namespace, path, env)
    mutated = apply_patch(p, patch)
    if expected is None:
        assert patch is None
        assert mutated == p
    else:
        assert mutated == expected
    assert response.get("warnings", []) == warnings
    assert server.metrics.outcomes[outcome] == 1
    assert sum(server.metrics.outcomes.values()) == 1
    validate_k8s(mutated)


def test_full_fixture_review_round_trip():
    """The fixture is a verbatim AdmissionReview (with managedFields etc.): the patch applies to it."""
    server = WebhookServer(webhook_config(), tls=None)  # type: ignore[arg-type]
    status, body = server.admit(json.dumps(RS_FIXTURE).encode(), namespace_opted_in=False)
    response, patch = decode_response(body, RS_FIXTURE["request"]["uid"])
    assert apply_patch(RS_POD, patch) == rs_expected()
    assert [op["op"] for op in patch] == ["add"] * len(patch)


def test_dry_run_returns_the_same_patch_and_is_counted():
    _s1, _r1, real = run_case(RS_POD, "shop", "/mutate", {})
    server, _r2, dry = run_case(RS_POD, "shop", "/mutate", {}, dry_run=True)
    assert dry == real  # sideEffects None: a dry run must show what a real create would get
    assert server.metrics.dry_run == 1
    assert server.metrics.outcomes["injected"] == 1


def test_idempotent_second_pass_changes_nothing():
    _s, _r, patch = run_case(RS_POD, "shop", "/mutate", {})
    once = apply_patch(RS_POD, patch)
    server, _r, again = run_case(once, "shop", "/mutate", {})
    assert again is None
    assert server.metrics.outcomes["skipped-already"] == 1


def test_passthrough_and_sidecar_settings_come_before_resource_attributes():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4317",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
           "OTEL_TRACES_SAMPLER_ARG": "0.25", "BEYLA_WEBHOOK_SIDECAR_LOG_LEVEL": "debug",
           "BEYLA_WEBHOOK_SIDECAR_CAPABILITIES": "BPF,PERFMON,SYS_PTRACE,DAC_READ_SEARCH,CHECKPOINT_RESTORE,CAP_SYS_ADMIN",
           "BEYLA_WEBHOOK_SIDECAR_CPU_LIMIT": "", "BEYLA_WEBHOOK_SIDECAR_IMAGE": "registry.local/beyla-sidecar:0.1.0"}
    _s, _r, patch = run_case(RS_POD, "shop", "/mutate", env)
    container = apply_patch(RS_POD, patch)["spec"]["initContainers"][0]
    names = [e["name"] for e in container["env"]]
    assert names[-6:] == ["BEYLA_LOG_LEVEL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                          "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES"]
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert values["BEYLA_LOG_LEVEL"] == "debug"
    assert container["securityContext"]["capabilities"]["add"][-1] == "SYS_ADMIN"
    assert container["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    assert container["image"] == "registry.local/beyla-sidecar:0.1.0"


def test_kubelet_expansion_of_the_injected_env():
    """What the sidecar will read once the kubelet resolved the downward API and `$(VAR)` references."""
    for p, ns, expected_attrs, expected_name in [
        (RS_POD, "shop",
         "k8s.pod.name=checkout-7d4b9c5f6d-x2x9q,k8s.pod.uid=3f6d2a4e-1111-4c2b-9d5e-000000000001,"
         "k8s.namespace.name=shop,k8s.node.name=node-a,k8s.deployment.name=checkout,"
         "k8s.replicaset.name=checkout-7d4b9c5f6d,k8s.container.name=checkout,"
         "service.instance.id=shop.checkout-7d4b9c5f6d-x2x9q.checkout", "checkout"),
        (BARE_POD, "default",
         "k8s.pod.name=checkout-7d4b9c5f6d-x2x9q,k8s.pod.uid=3f6d2a4e-1111-4c2b-9d5e-000000000001,"
         "k8s.namespace.name=shop,k8s.node.name=node-a,k8s.container.name=shell,"
         "service.instance.id=shop.checkout-7d4b9c5f6d-x2x9q.shell,deployment.environment.name=prod%2Ceu",
         "billing-$(HOME)"),
    ]:
        _s, _r, patch = run_case(p, ns, "/mutate", {})
        container = apply_patch(p, patch)["spec"]["initContainers"][0]
        env = resolve_env(container, {"metadata.name": "checkout-7d4b9c5f6d-x2x9q", "metadata.namespace": "shop",
                                      "metadata.uid": "3f6d2a4e-1111-4c2b-9d5e-000000000001",
                                      "spec.nodeName": "node-a", "status.podIP": "10.0.0.7",
                                      "spec.serviceAccountName": "default"})
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == expected_attrs
        assert env["BEYLA_SERVICE_NAME"] == expected_name


@pytest.mark.parametrize("image,tag", [
    ("nginx", ""), ("nginx:latest", ""), ("nginx:1.27", "1.27"), ("localhost:5000/app", ""),
    ("localhost:5000/app:v2", "v2"), ("app@sha256:" + "0" * 64, ""), ("r.io/a/b:3.1@sha256:" + "0" * 64, "3.1"),
])
def test_image_tag(image, tag):
    assert injection.image_tag(image) == tag


@pytest.mark.parametrize("owner,labels,expected", [
    ({"kind": "ReplicaSet", "name": "web-5f7c9d"}, {"pod-template-hash": "5f7c9d"},
     {"replicaset": "web-5f7c9d", "deployment": "web"}),
    ({"kind": "ReplicaSet", "name": "standalone"}, {}, {"replicaset": "standalone"}),
    ({"kind": "DaemonSet", "name": "agent"}, {}, {"daemonset": "agent"}),
    ({"kind": "Job", "name": "backup-2"}, {}, {"job": "backup-2"}),
    ({"kind": "Job", "name": "a-b-28934520"}, {}, {"job": "a-b-28934520", "cronjob": "a-b"}),
    ({"kind": "Node", "name": "n1"}, {}, {}),
])
def test_owner_names(owner, labels, expected):
    meta = {"labels": labels, "ownerReferences": [{"apiVersion": "v1", "uid": "u", "controller": True, **owner}]}
    assert injection.owner_names(meta) == expected


def test_not_a_pod_create_is_left_alone():
    review = admission_review(RS_POD, "shop")
    review["request"]["operation"] = "UPDATE"
    server = WebhookServer(webhook_config(), tls=None)  # type: ignore[arg-type]
    status, body = server.admit(json.dumps(review).encode(), namespace_opted_in=True)
    response, patch = decode_response(body, review["request"]["uid"])
    assert patch is None and server.metrics.outcomes["skipped-unsupported"] == 1


def test_own_error_admits_the_pod_with_a_warning():
    def broken(*_a, **_k):
        raise KeyError("boom")

    server = WebhookServer(webhook_config(), tls=None, review=broken)  # type: ignore[arg-type]
    review = admission_review(RS_POD, "shop")
    status, body = server.admit(json.dumps(review).encode(), namespace_opted_in=False)
    response, patch = decode_response(body, review["request"]["uid"])
    assert patch is None
    assert response["warnings"] == ["beyla-sidecar webhook error, pod admitted without the sidecar: KeyError"]
    assert server.metrics.outcomes["error"] == 1


def test_malformed_pod_is_an_error_not_a_block():
    review = admission_review({"kind": "Pod", "apiVersion": "v1", "metadata": {"annotations": {
        "beyla-sidecar.io/inject": "true"}}, "spec": {}}, "shop")
    server = WebhookServer(webhook_config(), tls=None)  # type: ignore[arg-type]
    status, body = server.admit(json.dumps(review).encode(), namespace_opted_in=False)
    response, patch = decode_response(body, review["request"]["uid"])
    assert patch is None and server.metrics.outcomes["error"] == 1 and response["warnings"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"kind":"AdmissionReview"}',
                                  b'{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}',
                                  b"\xff\xfe"])
def test_undecodable_body_is_400(body):
    server = WebhookServer(webhook_config(), tls=None)  # type: ignore[arg-type]
    status, _ = server.admit(body, namespace_opted_in=False)
    assert status == 400


def test_sidecar_prometheus_port_gets_env_named_port_and_liveness_probe():
    env = {"BEYLA_WEBHOOK_SIDECAR_PROMETHEUS_PORT": "9400"}
    _s, _r, patch = run_case(RS_POD, "shop", "/mutate", env)
    pod = apply_patch(RS_POD, patch)
    container = pod["spec"]["initContainers"][0]
    assert {"name": "BEYLA_PROMETHEUS_PORT", "value": "9400"} in container["env"]
    assert container["env"][-1]["name"] == "OTEL_RESOURCE_ATTRIBUTES"
    assert container["ports"] == [{"name": "beyla-metrics", "containerPort": 9400, "protocol": "TCP"}]
    assert container["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "beyla-metrics"},
                                          "periodSeconds": 30, "failureThreshold": 3}
    assert "readinessProbe" not in container and "startupProbe" not in container
    validate_k8s(pod)
    _s, _r, default_patch = run_case(RS_POD, "shop", "/mutate", {})
    default = apply_patch(RS_POD, default_patch)["spec"]["initContainers"][0]
    assert "ports" not in default and "livenessProbe" not in default
    assert all(e["name"] != "BEYLA_PROMETHEUS_PORT" for e in default["env"])


def test_network_metrics_add_net_raw_and_the_env_only_when_on():
    _s, _r, patch = run_case(RS_POD, "shop", "/mutate", {"BEYLA_WEBHOOK_SIDECAR_NETWORK_METRICS": "true"})
    pod = apply_patch(RS_POD, patch)
    container = pod["spec"]["initContainers"][0]
    assert container["securityContext"]["capabilities"]["add"] == [
        "BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHECKPOINT_RESTORE", "NET_RAW"]
    assert {"name": "BEYLA_NETWORK_METRICS", "value": "true"} in container["env"]
    validate_k8s(pod)
    _s, _r, default_patch = run_case(RS_POD, "shop", "/mutate", {})
    default = apply_patch(RS_POD, default_patch)["spec"]["initContainers"][0]
    assert "NET_RAW" not in default["securityContext"]["capabilities"]["add"]
    assert all(e["name"] != "BEYLA_NETWORK_METRICS" for e in default["env"])


def test_context_propagation_adds_net_admin_the_cgroup_mount_and_the_env_only_when_on():
    env = {"BEYLA_WEBHOOK_SIDECAR_CONTEXT_PROPAGATION": "headers", "BEYLA_WEBHOOK_CGROUP2_HOST_PATH": "/sys/fs/cgroup"}
    _s, _r, patch = run_case(RS_POD, "shop", "/mutate", env)
    pod = apply_patch(RS_POD, patch)
    container = pod["spec"]["initContainers"][0]
    assert container["securityContext"]["capabilities"]["add"] == [
        "BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHECKPOINT_RESTORE", "NET_ADMIN"]
    assert {"name": "BEYLA_BPF_CONTEXT_PROPAGATION", "value": "headers"} in container["env"]
    assert {"name": "BEYLA_CGROUP2_MOUNT", "value": "/host/sys/fs/cgroup"} in container["env"]
    assert {"name": "beyla-sidecar-cgroup", "mountPath": "/host/sys/fs/cgroup", "readOnly": True} in \
        container["volumeMounts"]
    assert {"name": "beyla-sidecar-cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}} in \
        pod["spec"]["volumes"]
    validate_k8s(pod)
    _s, _r, default_patch = run_case(RS_POD, "shop", "/mutate", {})
    default_pod = apply_patch(RS_POD, default_patch)
    default = default_pod["spec"]["initContainers"][0]
    assert "NET_ADMIN" not in default["securityContext"]["capabilities"]["add"]
    assert all(not e["name"].startswith(("BEYLA_BPF_CONTEXT", "BEYLA_CGROUP2")) for e in default["env"])
    assert all(v["name"] != "beyla-sidecar-cgroup" for v in default_pod["spec"]["volumes"])
