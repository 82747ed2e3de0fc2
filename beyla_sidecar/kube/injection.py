"""What the webhook does to a pod: decide, then build the sidecar and the JSONPatch. Pure functions.

Nothing here does I/O; `review()` takes a decoded AdmissionReview v1 request and returns the
decision. The HTTPS server (webhook.py) only frames it.

Opt-in (see docs/kubernetes.md, "How opt-in works"): the MutatingWebhookConfiguration has two
entries. Pods of namespaces labelled `beyla-sidecar.io/inject=enabled` are sent to
`/mutate/namespace` and injected unless their annotation says `"false"`; pods of every other
namespace (minus the excluded ones) are sent to `/mutate` and injected only when they carry the
annotation `beyla-sidecar.io/inject: "true"`. Kubernetes cannot select on annotations and the
webhook cannot see namespace labels, so the path tells the webhook which entry called it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from ..config import WebhookConfig

SIDECAR_NAME = "beyla-sidecar"
INJECT_ANNOTATION = "beyla-sidecar.io/inject"
STATUS_ANNOTATION = "beyla-sidecar.io/status"
NAMESPACE_LABEL = "beyla-sidecar.io/inject"  # value `enabled` (opt in) or `disabled` (never)
TRACEFS_VOLUME = "beyla-sidecar-tracefs"
METRICS_PORT_NAME = "beyla-metrics"
TMP_VOLUME = "beyla-sidecar-tmp"
CGROUP_VOLUME = "beyla-sidecar-cgroup"
CGROUP_MOUNT = "/host/sys/fs/cgroup"  # BEYLA_CGROUP2_MOUNT of sidecars with context propagation
RESOURCE_ANNOTATION_PREFIX = "resource.opentelemetry.io/"

# Outcomes, also the `outcome` label of the webhook's metrics.
INJECTED = "injected"
SKIPPED_NOT_OPTED_IN = "skipped-not-opted-in"
SKIPPED_ALREADY = "skipped-already"
SKIPPED_UNSUPPORTED = "skipped-unsupported"
REFUSED_SHARED_PID_FALSE = "refused-shared-pid-false"
ERROR = "error"
OUTCOMES = (INJECTED, SKIPPED_NOT_OPTED_IN, SKIPPED_ALREADY, SKIPPED_UNSUPPORTED, REFUSED_SHARED_PID_FALSE, ERROR)

# Downward API: (env var, fieldRef path). Values unknown at admission (the pod name is usually
# generated later, the uid, node and IP always are), resolved by the kubelet when it starts the pod.
DOWNWARD_API = (
    ("BEYLA_K8S_POD_NAME", "metadata.name"),
    ("BEYLA_K8S_NAMESPACE", "metadata.namespace"),
    ("BEYLA_K8S_POD_UID", "metadata.uid"),
    ("BEYLA_K8S_NODE_NAME", "spec.nodeName"),
    ("BEYLA_K8S_POD_IP", "status.podIP"),
    ("BEYLA_K8S_SERVICE_ACCOUNT", "spec.serviceAccountName"),
)

# Owner kinds in the semantic-convention order used for service.name, with their env var.
OWNER_ORDER = (
    ("deployment", "BEYLA_K8S_DEPLOYMENT_NAME", "k8s.deployment.name"),
    ("replicaset", "BEYLA_K8S_REPLICASET_NAME", "k8s.replicaset.name"),
    ("statefulset", "BEYLA_K8S_STATEFULSET_NAME", "k8s.statefulset.name"),
    ("daemonset", "BEYLA_K8S_DAEMONSET_NAME", "k8s.daemonset.name"),
    ("cronjob", "BEYLA_K8S_CRONJOB_NAME", "k8s.cronjob.name"),
    ("job", "BEYLA_K8S_JOB_NAME", "k8s.job.name"),
)

# A CronJob names its Jobs `<cronjob>-<scheduled time in minutes since the epoch>`: 8 digits
# today. Requiring 8+ digits keeps a hand-made Job such as `backup-2` from passing for a CronJob's.
_CRONJOB_JOB = re.compile(r"^(?P<cronjob>.+)-(?P<minutes>[0-9]{8,})$")


@dataclass
class Decision:
    outcome: str
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reason: str = ""


def review(request: dict[str, Any], cfg: WebhookConfig, *, namespace_opted_in: bool) -> Decision:
    """Decide for one AdmissionReview `request` (pods, CREATE). Raises on malformed objects."""
    kind = request.get("kind") or {}
    if request.get("operation") != "CREATE" or kind.get("kind") != "Pod" or kind.get("group", "") != "":
        return Decision(SKIPPED_UNSUPPORTED, reason="not a pod creation")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise ValueError("request.object is not a pod")
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise ValueError("pod has no spec.containers")
    annotations = meta.get("annotations") or {}

    if namespace in cfg.exclude_namespaces:
        return Decision(SKIPPED_NOT_OPTED_IN, reason=f"namespace {namespace} is excluded")
    choice = str(annotations.get(INJECT_ANNOTATION, "")).strip().lower()
    if choice == "false":
        return Decision(SKIPPED_NOT_OPTED_IN, reason="opted out by annotation")
    if choice != "true" and not namespace_opted_in:
        return Decision(SKIPPED_NOT_OPTED_IN, reason="no opt-in annotation or namespace label")

    if already_injected(pod):
        return Decision(SKIPPED_ALREADY, reason="the pod already has the sidecar")
    if spec.get("shareProcessNamespace") is False:
        return Decision(REFUSED_SHARED_PID_FALSE, warnings=[
            "beyla-sidecar not injected: the pod sets shareProcessNamespace: false, and the sidecar "
            "can only see the app's processes in a shared PID namespace"],
            reason="shareProcessNamespace is false")
    if spec.get("hostPID"):
        return Decision(SKIPPED_UNSUPPORTED, warnings=[
            "beyla-sidecar not injected: hostPID pods cannot share a pod PID namespace"], reason="hostPID")
    if ((spec.get("os") or {}).get("name") or "linux") != "linux":
        return Decision(SKIPPED_UNSUPPORTED, warnings=[
            "beyla-sidecar not injected: eBPF instrumentation needs a Linux pod"], reason="not linux")
    if not cfg.native_sidecar and spec.get("restartPolicy", "Always") != "Always":
        return Decision(SKIPPED_UNSUPPORTED, warnings=[
            "beyla-sidecar not injected: as a regular container the sidecar would keep this pod "
            f"(restartPolicy {spec.get('restartPolicy')}) from completing; enable native sidecars"],
            reason="regular-container sidecar in a run-to-completion pod")
    taken = {v.get("name") for v in spec.get("volumes") or []}
    if taken & {TRACEFS_VOLUME, TMP_VOLUME, CGROUP_VOLUME}:
        return Decision(ERROR, warnings=[
            f"beyla-sidecar not injected: the pod already has a volume named {TRACEFS_VOLUME}, {TMP_VOLUME} "
            f"or {CGROUP_VOLUME}"], reason="volume name taken")

    return Decision(INJECTED, patch=build_patch(pod, namespace, cfg), reason="injected")


def already_injected(pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if (meta.get("annotations") or {}).get(STATUS_ANNOTATION):
        return True
    spec = pod.get("spec") or {}
    names = [c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])]
    return SIDECAR_NAME in names


def build_patch(pod: dict[str, Any], namespace: str, cfg: WebhookConfig) -> list[dict[str, Any]]:
    """The JSONPatch (RFC 6902) that adds the sidecar; `pod` is not modified."""
    meta = pod.get("metadata") or {}
    spec = pod["spec"]
    patch: list[dict[str, Any]] = []
    if "metadata" not in pod:
        patch.append({"op": "add", "path": "/metadata", "value": {}})
    if meta.get("annotations") is None:
        patch.append({"op": "add", "path": "/metadata/annotations", "value": {STATUS_ANNOTATION: "injected"}})
    else:
        patch.append({"op": "add", "path": "/metadata/annotations/" + _pointer(STATUS_ANNOTATION), "value": "injected"})
    if spec.get("shareProcessNamespace") is not True:
        patch.append({"op": "add", "path": "/spec/shareProcessNamespace", "value": True})
    container = sidecar_container(pod, namespace, cfg)
    if cfg.native_sidecar:
        if spec.get("initContainers"):
            # First, so that it starts before the other init containers and sees them too.
            patch.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
        else:
            patch.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        patch.append({"op": "add", "path": "/spec/containers/-", "value": container})
    volumes = sidecar_volumes(cfg)
    if spec.get("volumes"):
        patch.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes)
    else:
        patch.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    return patch


def sidecar_volumes(cfg: WebhookConfig) -> list[dict[str, Any]]:
    # tracefs: tracepoint ids are read from it (attaching goes through perf_event_open), so
    # read-only is enough. bpffs (/sys/fs/bpf) is not mounted: the sidecar pins nothing.
    # BTF (/sys/kernel/btf/vmlinux) is part of sysfs, already visible read-only in every container.
    volumes: list[dict[str, Any]] = [
        {"name": TRACEFS_VOLUME, "hostPath": {"path": cfg.tracefs_host_path, "type": "Directory"}},
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
    ]
    # context propagation attaches to the pod's cgroup, which the container's own cgroup
    # namespace hides: the node's cgroup2 shows it (read-only: attaching needs no write)
    if cfg.sidecar_context_propagation != "disabled":
        volumes.append({"name": CGROUP_VOLUME, "hostPath": {"path": cfg.cgroup2_host_path, "type": "Directory"}})
    return volumes


def sidecar_container(pod: dict[str, Any], namespace: str, cfg: WebhookConfig) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": cfg.sidecar_image,
        "imagePullPolicy": cfg.sidecar_image_pull_policy,
        "args": ["run"],
        "env": sidecar_env(pod, namespace, cfg),
    }
    resources: dict[str, dict[str, str]] = {}
    for section, key, value in (("requests", "cpu", cfg.sidecar_cpu_request),
                                ("requests", "memory", cfg.sidecar_memory_request),
                                ("limits", "cpu", cfg.sidecar_cpu_limit),
                                ("limits", "memory", cfg.sidecar_memory_limit)):
        if value:
            resources.setdefault(section, {})[key] = value
    if resources:
        container["resources"] = resources
    container["securityContext"] = {
        # Not privileged: only the capabilities the probes need (design.md section 5).
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        # uid 0: the capabilities above are granted to the container's root user; for a non-root
        # uid they would only be in the bounding set, not effective (no ambient capabilities in
        # Kubernetes), and bpf()/perf_event_open() would fail.
        "runAsUser": 0,
        "runAsNonRoot": False,
        "capabilities": {"drop": ["ALL"], "add": sidecar_capabilities(cfg)},
    }
    if cfg.sidecar_prometheus_port:
        container["ports"] = [{"name": METRICS_PORT_NAME, "containerPort": cfg.sidecar_prometheus_port,
                               "protocol": "TCP"}]
        # Liveness only: a readiness or startup probe would let a sidecar problem hold the app back.
        container["livenessProbe"] = {"httpGet": {"path": "/healthz", "port": METRICS_PORT_NAME},
                                      "periodSeconds": 30, "failureThreshold": 3}
    container["volumeMounts"] = [
        {"name": TRACEFS_VOLUME, "mountPath": "/sys/kernel/tracing", "readOnly": True},
        {"name": TMP_VOLUME, "mountPath": "/tmp"},
    ]
    if cfg.sidecar_context_propagation != "disabled":
        container["volumeMounts"].append({"name": CGROUP_VOLUME, "mountPath": CGROUP_MOUNT, "readOnly": True})
    if cfg.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def sidecar_capabilities(cfg: WebhookConfig) -> list[str]:
    """The configured capabilities, plus NET_RAW (its packet socket) when network metrics are on,
    NET_ADMIN (sockops and sk_msg programs) when context propagation is."""
    caps = list(cfg.sidecar_capabilities)
    if cfg.sidecar_network_metrics and "NET_RAW" not in caps:
        caps.append("NET_RAW")
    if cfg.sidecar_context_propagation != "disabled" and "NET_ADMIN" not in caps:
        caps.append("NET_ADMIN")
    return caps


def sidecar_env(pod: dict[str, Any], namespace: str, cfg: WebhookConfig) -> list[dict[str, Any]]:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    app_containers = [c for c in pod["spec"]["containers"] if c.get("name") != SIDECAR_NAME]
    container_names = [str(c.get("name", "")) for c in app_containers]
    owners = owner_names(meta)

    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}
        for name, path in DOWNWARD_API
    ]

    def literal(name: str, value: str) -> None:
        if value:
            env.append({"name": name, "value": _escape_expansion(value)})

    literal("BEYLA_K8S_CONTAINER_NAMES", ",".join(container_names))
    for kind, var, _attr in OWNER_ORDER:
        literal(var, owners.get(kind, ""))
    literal("BEYLA_SERVICE_NAME", service_name(meta, owners, container_names))
    literal("BEYLA_SERVICE_NAMESPACE",
            str(annotations.get(RESOURCE_ANNOTATION_PREFIX + "service.namespace") or namespace))
    literal("BEYLA_SERVICE_VERSION", service_version(meta, app_containers))
    literal("BEYLA_LOG_LEVEL", cfg.sidecar_log_level)
    literal("BEYLA_TRACE_PRINTER", cfg.sidecar_trace_printer)
    if cfg.sidecar_prometheus_port:
        literal("BEYLA_PROMETHEUS_PORT", str(cfg.sidecar_prometheus_port))
    if cfg.sidecar_network_metrics:
        literal("BEYLA_NETWORK_METRICS", "true")
    if cfg.sidecar_context_propagation != "disabled":
        literal("BEYLA_BPF_CONTEXT_PROPAGATION", cfg.sidecar_context_propagation)
        literal("BEYLA_CGROUP2_MOUNT", CGROUP_MOUNT)
    for name, value in cfg.passthrough_env():
        literal(name, value)
    env.append({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": resource_attributes(meta, owners, container_names)})
    return env


def resource_attributes(meta: dict[str, Any], owners: dict[str, str], container_names: list[str]) -> str:
    """OTEL_RESOURCE_ATTRIBUTES, last in the env list: `$(VAR)` refers to the variables above it."""
    attrs = [
        ("k8s.pod.name", "$(BEYLA_K8S_POD_NAME)"),
        ("k8s.pod.uid", "$(BEYLA_K8S_POD_UID)"),
        ("k8s.namespace.name", "$(BEYLA_K8S_NAMESPACE)"),
        ("k8s.node.name", "$(BEYLA_K8S_NODE_NAME)"),
    ]
    for kind, _var, attr in OWNER_ORDER:
        if owners.get(kind):
            attrs.append((attr, _attr_value(owners[kind])))
    if len(container_names) == 1:
        # With several app containers the sidecar tells them apart per process (metadata.py).
        attrs.append(("k8s.container.name", _attr_value(container_names[0])))
        attrs.append(("service.instance.id",
                      "$(BEYLA_K8S_NAMESPACE).$(BEYLA_K8S_POD_NAME)." + _attr_value(container_names[0])))
    # Pod annotations `resource.opentelemetry.io/<key>` are resource attributes (semantic
    # conventions); service.* ones go through BEYLA_SERVICE_* so that a process's own
    # OTEL_SERVICE_NAME still wins in the sidecar.
    annotations = meta.get("annotations") or {}
    taken = {k for k, _ in attrs}
    for key in sorted(annotations):
        if not key.startswith(RESOURCE_ANNOTATION_PREFIX):
            continue
        attr = key[len(RESOURCE_ANNOTATION_PREFIX):]
        if attr and not attr.startswith("service.") and attr not in taken and re.fullmatch(r"[A-Za-z0-9._-]+", attr):
            attrs.append((attr, _attr_value(str(annotations[key]))))
    return ",".join(f"{k}={v}" for k, v in attrs)


def owner_names(meta: dict[str, Any]) -> dict[str, str]:
    """{kind: name} for the pod's controller and what can be derived from its name."""
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not ref:
        return {}
    kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
    if not name:
        return {}
    out: dict[str, str] = {}
    if kind == "ReplicaSet":
        out["replicaset"] = name
        template_hash = (meta.get("labels") or {}).get("pod-template-hash", "")
        if template_hash and name.endswith("-" + template_hash) and len(name) > len(template_hash) + 1:
            out["deployment"] = name[: -len(template_hash) - 1]
    elif kind == "StatefulSet":
        out["statefulset"] = name
    elif kind == "DaemonSet":
        out["daemonset"] = name
    elif kind == "Job":
        out["job"] = name
        m = _CRONJOB_JOB.match(name)
        if m:
            out["cronjob"] = m.group("cronjob")
    return out


def service_name(meta: dict[str, Any], owners: dict[str, str], container_names: list[str]) -> str:
    """service.name in the semantic-convention order; at admission the pod name is often empty."""
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    candidates = [
        annotations.get(RESOURCE_ANNOTATION_PREFIX + "service.name"),
        labels.get("app.kubernetes.io/instance"),
        labels.get("app.kubernetes.io/name"),
        *(owners.get(kind) for kind, _v, _a in OWNER_ORDER),
        meta.get("name"),
        # generateName `web-` of a bare pod: its stable prefix, not the random name it will get.
        (meta.get("generateName") or "").rstrip("-.") or None,
        container_names[0] if container_names else None,
    ]
    return next((str(c) for c in candidates if c), "")


def service_version(meta: dict[str, Any], app_containers: list[dict[str, Any]]) -> str:
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    version = annotations.get(RESOURCE_ANNOTATION_PREFIX + "service.version") or labels.get("app.kubernetes.io/version")
    if version:
        return str(version)
    return image_tag(str(app_containers[0].get("image", ""))) if app_containers else ""


def image_tag(image: str) -> str:
    """`registry:5000/app:1.2@sha256:...` -> `1.2`; no tag (or `latest`) -> ``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return ""
    tag = last.rsplit(":", 1)[1]
    return "" if tag == "latest" else tag


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _escape_expansion(value: str) -> str:
    # The kubelet expands `$(VAR)` in every env value and turns `$$` into `$`; values that come
    # from annotations must not expand (or reference the sidecar's other variables).
    return value.replace("$", "$$")


def _attr_value(value: str) -> str:
    # OTEL_RESOURCE_ATTRIBUTES values are percent-decoded by the SDKs; `,` `=` `%` `$` must not
    # appear raw (`$` would also be a kubelet expansion).
    return quote(value, safe="-._~:/@+")

