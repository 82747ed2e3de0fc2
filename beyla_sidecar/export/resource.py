"""The OTel resource of each instrumented process: service, process, host, pod."""

from __future__ import annotations

import socket
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource

from .. import __version__
from ..config import Config
from ..discover.processes import ProcessInfo
from ..kube.metadata import k8s_attributes, owner_name


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """`k=v,k2=v2` as in OTEL_RESOURCE_ATTRIBUTES (values percent-decoded); bad pairs skipped."""
    attrs: dict[str, str] = {}
    for pair in raw.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attrs[key.strip()] = unquote(value.strip())
    return attrs


class ResourceFactory:
    """Builds one Resource per process; pod-wide attributes are computed once."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._user = parse_resource_attributes(cfg.resource_attributes)
        self._pod_service = (cfg.service_name or cfg.otel_service_name or self._user.get("service.name")
                             or owner_name(cfg))
        self._common: dict[str, str] = {
            "host.name": socket.gethostname(),
            **k8s_attributes(cfg),
            **self._user,
            "telemetry.distro.name": "beyla-sidecar",
            "telemetry.distro.version": __version__,
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
        }
        for key, value in (("service.namespace", cfg.service_namespace),
                           ("service.version", cfg.service_version)):
            if value:
                self._common[key] = value

    def service_name(self, proc: ProcessInfo | None) -> str:
        """The process's own OTEL_SERVICE_NAME, then ours, then the pod's owner, then what an
        interpreter runs (`python3.11 app.py` -> `app`), then the executable name."""
        if proc is None:
            return self._pod_service or "unknown_service"
        return proc.service_name or self._pod_service or proc.app_name or proc.executable_name or "unknown_service"

    def service(self, service_name: str) -> Resource:
        """The resource of a whole service (metrics): no process.* attributes, so the series of
        its processes add up and survive restarts."""
        return Resource({**self._common, "service.name": service_name})

    def create(self, pid: int, proc: ProcessInfo | None) -> Resource:
        attrs: dict[str, str | int] = {**self._common, "service.name": self.service_name(proc),
                                       "process.pid": pid}
        if proc is not None:
            attrs["process.executable.name"] = proc.executable_name
            if self._cfg.include_command_line:
                attrs["process.command_line"] = proc.command_line
        return Resource(attrs)
