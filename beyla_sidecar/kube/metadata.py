"""Kubernetes metadata from the downward-API environment variables the webhook sets."""

from __future__ import annotations

from ..config import Config


def k8s_attributes(cfg: Config) -> dict[str, str]:
    """Resource attributes for the pod; empty values are left out."""
    containers = [c for c in cfg.k8s_container_names.split(",") if c.strip()]
    attrs = {
        "k8s.pod.name": cfg.k8s_pod_name,
        "k8s.namespace.name": cfg.k8s_namespace,
        "k8s.pod.uid": cfg.k8s_pod_uid,
        "k8s.node.name": cfg.k8s_node_name,
        "k8s.pod.ip": cfg.k8s_pod_ip,
        "k8s.pod.service_account.name": cfg.k8s_service_account,
        "k8s.container.name": containers[0].strip() if len(containers) == 1 else "",
        "k8s.deployment.name": cfg.k8s_deployment_name,
        "k8s.replicaset.name": cfg.k8s_replicaset_name,
        "k8s.statefulset.name": cfg.k8s_statefulset_name,
        "k8s.daemonset.name": cfg.k8s_daemonset_name,
        "k8s.job.name": cfg.k8s_job_name,
        "k8s.cronjob.name": cfg.k8s_cronjob_name,
    }
    if cfg.k8s_namespace and cfg.k8s_pod_name and attrs["k8s.container.name"]:
        attrs["service.instance.id"] = f"{cfg.k8s_namespace}.{cfg.k8s_pod_name}.{attrs['k8s.container.name']}"
    return {k: v for k, v in attrs.items() if v}


def owner_name(cfg: Config) -> str:
    """The pod's controller as the webhook names it (injection.OWNER_ORDER): its Deployment (the
    ReplicaSet's name minus the pod-template-hash), ReplicaSet, StatefulSet, DaemonSet, CronJob or Job."""
    owners = (cfg.k8s_deployment_name, cfg.k8s_replicaset_name, cfg.k8s_statefulset_name,
              cfg.k8s_daemonset_name, cfg.k8s_cronjob_name, cfg.k8s_job_name)
    return next((name for name in owners if name), "")
