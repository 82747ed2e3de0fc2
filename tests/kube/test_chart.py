"""The Helm chart, rendered without Helm (tests/kube/gotemplate.py), and its values schema."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml

from beyla_sidecar.config import WebhookConfig, load

from .conftest import REPO, validate_k8s
from .gotemplate import Renderer, TemplateError, deep_merge

CHART = REPO / "charts" / "beyla-sidecar"
NAMESPACE = "observability"


def values(*overrides: dict) -> dict:
    out = yaml.safe_load((CHART / "values.yaml").read_text())
    for o in overrides:
        out = deep_merge(out, o)
    return out


def render(vals: dict, release: str = "beyla-sidecar") -> dict[tuple[str, str], dict]:
    docs = {}
    for name, text in Renderer(CHART, vals, release_name=release, namespace=NAMESPACE).render_all().items():
        if name == "NOTES.txt":
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def schema_validator():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)  # Helm reads draft-07
    return jsonschema.Draft7Validator(schema)


EXAMPLE_VALUES = yaml.safe_load((REPO / "examples" / "values-example.yaml").read_text())


def test_values_and_example_values_match_the_schema():
    v = schema_validator()
    v.validate(values())
    v.validate(values(EXAMPLE_VALUES))


@pytest.mark.parametrize("bad", [
    {"webhook": {"timeoutSeconds": 31}},
    {"webhook": {"failurePolicy": "Maybe"}},
    {"sidecar": {"capabilities": ["ALL"]}},
    {"sidecar": {"resources": {"requests": {"cpu": "lots"}}}},
    {"sidecar": {"nativeSidecar": "yes"}},
    {"otlp": {"endpoint": "otel:4317"}},
    {"unknownKey": 1},
])
def test_schema_rejects_bad_values(bad):
    with pytest.raises(jsonschema.ValidationError):
        schema_validator().validate(values(bad))


CORE_KINDS = {"Deployment", "Service", "MutatingWebhookConfiguration", "PodDisruptionBudget", "ServiceAccount",
              "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("variant", ["default", "example", "cert-manager-own-issuer"])
def test_rendered_manifests_validate_against_kubernetes(variant):
    vals = {"default": values(), "example": values(EXAMPLE_VALUES),
            "cert-manager-own-issuer": values({"certManager": {"enabled": True,
                                                               "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}})}[variant]
    docs = render(vals)
    kinds = {k for k, _ in docs}
    assert {"Deployment", "Service", "MutatingWebhookConfiguration", "PodDisruptionBudget", "ServiceAccount"} <= kinds
    for (kind, _name), doc in docs.items():
        if kind in CORE_KINDS:
            validate_k8s(doc)
        else:
            assert kind in ("Certificate", "Issuer") and doc["apiVersion"] == "cert-manager.io/v1"


def webhook_env(docs) -> dict[str, str]:
    deployment = docs[("Deployment", "beyla-sidecar-webhook")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def test_default_render_self_generated_certificates():
    docs = render(values())
    mwc = docs[("MutatingWebhookConfiguration", "beyla-sidecar")]
    svc = docs[("Service", "beyla-sidecar-webhook")]
    dep = docs[("Deployment", "beyla-sidecar-webhook")]
    pdb = docs[("PodDisruptionBudget", "beyla-sidecar-webhook")]
    assert dep["spec"]["replicas"] == 2 and pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert dep["spec"]["template"]["metadata"]["labels"] == svc["spec"]["selector"]

    hooks = {h["name"]: h for h in mwc["webhooks"]}
    assert set(hooks) == {"pods.beyla-sidecar.io", "namespaces.beyla-sidecar.io"}
    for h in hooks.values():
        assert h["sideEffects"] == "None" and h["failurePolicy"] == "Ignore" and h["timeoutSeconds"] == 5
        assert h["admissionReviewVersions"] == ["v1"]
        assert h["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                               "resources": ["pods"], "scope": "Namespaced"}]
        assert h["clientConfig"]["service"]["name"] == svc["metadata"]["name"]
        assert h["clientConfig"]["service"]["namespace"] == NAMESPACE
        assert h["clientConfig"]["service"]["port"] == svc["spec"]["ports"][0]["port"]
        assert "caBundle" not in h["clientConfig"]  # filled in by the webhook at start-up
        exprs = h["namespaceSelector"]["matchExpressions"]
        assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", NAMESPACE]} in exprs
        assert_valid_webhook_path(h["clientConfig"]["service"]["path"])
    assert hooks["pods.beyla-sidecar.io"]["clientConfig"]["service"]["path"] == "/mutate"
    assert {"key": "beyla-sidecar.io/inject", "operator": "NotIn", "values": ["enabled", "disabled"]} in \
        hooks["pods.beyla-sidecar.io"]["namespaceSelector"]["matchExpressions"]
    assert hooks["namespaces.beyla-sidecar.io"]["clientConfig"]["service"]["path"] == "/mutate/namespace"
    assert {"key": "beyla-sidecar.io/inject", "operator": "In", "values": ["enabled"]} in \
        hooks["namespaces.beyla-sidecar.io"]["namespaceSelector"]["matchExpressions"]

    # Minimal RBAC: get/patch on this one configuration.
    role = docs[("ClusterRole", "beyla-sidecar-cabundle")]
    assert role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                              "resources": ["mutatingwebhookconfigurations"],
                              "resourceNames": [mwc["metadata"]["name"]], "verbs": ["get", "patch"]}]
    binding = docs[("ClusterRoleBinding", "beyla-sidecar-cabundle")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "beyla-sidecar", "namespace": NAMESPACE}]

    # The env the chart gives the webhook is a valid WebhookConfig and points at the right objects.
    env = webhook_env(docs)
    cfg = load(WebhookConfig, env)
    assert cfg.configuration_name == mwc["metadata"]["name"]
    assert (cfg.service_name, cfg.service_namespace) == (svc["metadata"]["name"], NAMESPACE)
    assert cfg.exclude_namespaces == ("kube-system", NAMESPACE)
    assert cfg.cert_file == "" and cfg.native_sidecar is True
    assert cfg.sidecar_capabilities == ("BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "CHECKPOINT_RESTORE")
    assert cfg.port == dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert cfg.sidecar_image == "beyla-sidecar:0.1.0"
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]  # generated cert files


def test_cert_manager_render():
    docs = render(values(EXAMPLE_VALUES))
    assert ("ClusterRole", "beyla-sidecar-cabundle") not in docs  # no API access needed at all
    mwc = docs[("MutatingWebhookConfiguration", "beyla-sidecar")]
    assert mwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/beyla-sidecar-webhook"}
    cert = docs[("Certificate", "beyla-sidecar-webhook")]
    assert cert["spec"]["dnsNames"] == ["beyla-sidecar-webhook", f"beyla-sidecar-webhook.{NAMESPACE}",
                                        f"beyla-sidecar-webhook.{NAMESPACE}.svc",
                                        f"beyla-sidecar-webhook.{NAMESPACE}.svc.cluster.local"]
    assert cert["spec"]["issuerRef"] == {"name": "beyla-sidecar-selfsigned", "kind": "Issuer", "group": "cert-manager.io"}
    assert ("Issuer", "beyla-sidecar-selfsigned") in docs
    dep = docs[("Deployment", "beyla-sidecar-webhook")]
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert secret_volume["secret"]["secretName"] == cert["spec"]["secretName"]
    cfg = load(WebhookConfig, webhook_env(docs))
    assert (cfg.cert_file, cfg.key_file) == ("/etc/beyla-sidecar/tls/tls.crt", "/etc/beyla-sidecar/tls/tls.key")
    assert cfg.configuration_name == ""
    assert cfg.exclude_namespaces == ("kube-system", NAMESPACE, "monitoring", "cert-manager")
    assert cfg.sidecar_capabilities[-1] == "SYS_ADMIN"
    assert cfg.otlp_endpoint == "http://otel-collector.observability:4317"
    assert (cfg.traces_sampler, cfg.traces_sampler_arg) == ("parentbased_traceidratio", "0.2")
    assert (cfg.sidecar_cpu_request, cfg.sidecar_memory_limit) == ("25m", "192Mi")
    assert cfg.sidecar_image == "registry.example.com/platform/beyla-sidecar:0.1.0"
    hooks = {h["name"]: h for h in mwc["webhooks"]}
    assert hooks["pods.beyla-sidecar.io"]["objectSelector"] == EXAMPLE_VALUES["webhook"]["objectSelector"]
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
            "values": ["kube-system", NAMESPACE, "monitoring", "cert-manager"]} in \
        hooks["namespaces.beyla-sidecar.io"]["namespaceSelector"]["matchExpressions"]


def test_release_name_prefixing_and_notes():
    docs = render(values(), release="obs")
    assert ("MutatingWebhookConfiguration", "obs-beyla-sidecar") in docs
    assert ("Service", "obs-beyla-sidecar-webhook") in docs
    notes = Renderer(CHART, values(), release_name="obs", namespace=NAMESPACE).render("NOTES.txt")
    assert "mutatingwebhookconfiguration obs-beyla-sidecar" in notes
    assert "beyla-sidecar.io/inject=enabled" in notes and "{{" not in notes


def test_renderer_is_strict_about_typos(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text((CHART / "Chart.yaml").read_text())
    (tmp_path / "templates" / "x.yaml").write_text("a: {{ .Values.nope }}\n")
    with pytest.raises(TemplateError):
        Renderer(tmp_path, {}).render("x.yaml")
    (tmp_path / "templates" / "y.yaml").write_text("{{ with .Values }}x{{ end }}\n")
    with pytest.raises(TemplateError):
        Renderer(tmp_path, {}).render("y.yaml")


_SEGMENT = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def assert_valid_webhook_path(path: str) -> None:
    """The API server's check of clientConfig.service.path (each segment a DNS-1123 subdomain)."""
    assert path.startswith("/")
    for segment in path[1:].rstrip("/").split("/"):
        assert segment and len(segment) <= 253 and _SEGMENT.fullmatch(segment), path
