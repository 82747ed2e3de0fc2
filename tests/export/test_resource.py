from beyla_sidecar.config import Config, load
from beyla_sidecar.discover.processes import ProcessInfo
from beyla_sidecar.export.resource import ResourceFactory, parse_resource_attributes


def proc(service: str = "", app: str = "") -> ProcessInfo:
    return ProcessInfo(pid=42, executable_name="nginx", command_line="nginx -g daemon off;", app_name=app,
                       service_name=service, create_time=1.0)


def test_parse_resource_attributes() -> None:
    assert parse_resource_attributes("a=1, b = x%20y ,broken,=v,c=") == {"a": "1", "b": "x y", "c": ""}


def test_service_name_order() -> None:
    env = {"BEYLA_SERVICE_NAME": "beyla", "OTEL_SERVICE_NAME": "otel",
           "OTEL_RESOURCE_ATTRIBUTES": "service.name=attr", "BEYLA_K8S_DEPLOYMENT_NAME": "shop"}
    f = ResourceFactory(load(Config, env))
    assert f.service_name(proc("own", app="app")) == "own"
    assert f.service_name(proc(app="app")) == "beyla"
    env.pop("BEYLA_SERVICE_NAME")
    assert ResourceFactory(load(Config, env)).service_name(proc(app="app")) == "otel"
    env.pop("OTEL_SERVICE_NAME")
    assert ResourceFactory(load(Config, env)).service_name(proc(app="app")) == "attr"
    env.pop("OTEL_RESOURCE_ATTRIBUTES")
    assert ResourceFactory(load(Config, env)).service_name(proc(app="app")) == "shop"
    f = ResourceFactory(load(Config, {}))
    assert f.service_name(proc(app="app")) == "app"
    assert f.service_name(proc()) == "nginx"
    assert f.service_name(None) == "unknown_service"


def test_owner_order() -> None:
    owners = [("BEYLA_K8S_DEPLOYMENT_NAME", "shop"), ("BEYLA_K8S_REPLICASET_NAME", "shop-7c9f8d6b5"),
              ("BEYLA_K8S_STATEFULSET_NAME", "db"), ("BEYLA_K8S_DAEMONSET_NAME", "agent"),
              ("BEYLA_K8S_CRONJOB_NAME", "report"), ("BEYLA_K8S_JOB_NAME", "report-28394011")]
    for i, (var, name) in enumerate(owners):  # each wins over those after it
        f = ResourceFactory(load(Config, dict(owners[i:])))
        assert (f.service_name(proc(app="app")), f.service_name(None)) == (name, name), var


def test_resource_attributes() -> None:
    cfg = load(Config, {
        "BEYLA_K8S_POD_NAME": "web-1", "BEYLA_K8S_NAMESPACE": "shop", "BEYLA_K8S_POD_UID": "u-1",
        "BEYLA_K8S_NODE_NAME": "node-a", "BEYLA_K8S_CONTAINER_NAMES": "web",
        "BEYLA_K8S_STATEFULSET_NAME": "web", "OTEL_RESOURCE_ATTRIBUTES": "team=core",
        "BEYLA_SERVICE_VERSION": "1.2.3",
    })
    attrs = dict(ResourceFactory(cfg).create(42, proc()).attributes)
    assert attrs["service.name"] == "web" and attrs["service.version"] == "1.2.3"  # the StatefulSet
    assert attrs["process.pid"] == 42 and attrs["process.executable.name"] == "nginx"
    assert "process.command_line" not in attrs  # command lines carry secrets: opt-in only
    with_cmd = load(Config, {"BEYLA_INCLUDE_COMMAND_LINE": "true"})
    assert ResourceFactory(with_cmd).create(42, proc()).attributes["process.command_line"] == "nginx -g daemon off;"
    assert attrs["k8s.pod.name"] == "web-1" and attrs["k8s.namespace.name"] == "shop"
    assert attrs["k8s.pod.uid"] == "u-1" and attrs["k8s.node.name"] == "node-a"
    assert attrs["k8s.container.name"] == "web" and attrs["k8s.statefulset.name"] == "web"
    assert attrs["service.instance.id"] == "shop.web-1.web"
    assert attrs["team"] == "core" and attrs["telemetry.distro.name"] == "beyla-sidecar"
    assert "k8s.deployment.name" not in attrs


def test_several_containers_leave_container_name_out() -> None:
    cfg = load(Config, {"BEYLA_K8S_CONTAINER_NAMES": "web,worker", "BEYLA_K8S_POD_NAME": "p",
                        "BEYLA_K8S_NAMESPACE": "n"})
    attrs = dict(ResourceFactory(cfg).create(1, None).attributes)
    assert "k8s.container.name" not in attrs and "service.instance.id" not in attrs
