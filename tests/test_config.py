import os
from pathlib import Path

import pytest

from beyla_sidecar.config import Config, ConfigError, WebhookConfig, describe, load


def test_defaults() -> None:
    cfg = load(Config, {})
    assert cfg.pid_namespace == "self" and (cfg.request_capture_size, cfg.response_capture_size) == (256, 256)
    assert cfg.max_connections == 8192
    assert cfg.printer == "text" and cfg.traces_endpoint == "" and cfg.include_query is False


def test_otlp_endpoint_disables_default_printer_and_traces_variant_wins() -> None:
    cfg = load(Config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4317"})
    assert cfg.printer == "disabled" and cfg.traces_endpoint == "http://b:4317"
    assert load(Config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
                         "BEYLA_TRACE_PRINTER": "json"}).printer == "json"


@pytest.mark.parametrize("name,value", [
    ("BEYLA_REQUEST_CAPTURE_SIZE", "32"), ("BEYLA_REQUEST_CAPTURE_SIZE", "abc"),
    ("BEYLA_REQUEST_CAPTURE_SIZE", "1024"), ("BEYLA_RESPONSE_CAPTURE_SIZE", "257"), ("BEYLA_MAX_CONNECTIONS", "0"),
    ("BEYLA_MAX_CONNECTIONS", "99999999999999"), ("BEYLA_PID_NAMESPACE", "pod"), ("BEYLA_PID_NAMESPACE", "1"),
    ("BEYLA_PID_NAMESPACE", str(1 << 32)),
    ("BEYLA_TRACE_PRINTER", "xml"), ("BEYLA_INCLUDE_QUERY", "maybe"),
    ("BEYLA_RINGBUF_SIZE", "100000"), ("BEYLA_RINGBUF_SIZE", "1024"), ("BEYLA_RINGBUF_SIZE", str(1 << 31)),
    ("BEYLA_POLL_INTERVAL_MS", "0"), ("BEYLA_POLL_INTERVAL_MS", "nan"), ("BEYLA_POLL_INTERVAL_MS", "inf"),
    ("BEYLA_POLL_INTERVAL_MS", "1e12"), ("BEYLA_POLL_INTERVAL_MS", "1001"),
    ("BEYLA_PROMETHEUS_ADDRESS", "not-an-address"), ("BEYLA_PROMETHEUS_ADDRESS", "999.1.1.1"),
    ("BEYLA_PROMETHEUS_ADDRESS", "::"),  # the endpoint listens on IPv4 only
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "otel-collector:4317"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://a:4317"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:99999"), ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:port"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://a:4318/v1/traces"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://"),
    ("OTEL_RESOURCE_ATTRIBUTES", "garbage"), ("OTEL_RESOURCE_ATTRIBUTES", "=v"), ("OTEL_RESOURCE_ATTRIBUTES", "a b=c"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "inf"), ("OTEL_METRIC_EXPORT_TIMEOUT", "1e12"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}={value!r} is invalid: "):
        load(Config, {name: value})


def test_bounded_values_at_their_limits() -> None:
    cfg = load(Config, {"BEYLA_RINGBUF_SIZE": str(os.sysconf("SC_PAGE_SIZE")), "BEYLA_POLL_INTERVAL_MS": "1000",
                        "BEYLA_MAX_CONNECTIONS": str(1 << 20), "OTEL_BSP_SCHEDULE_DELAY": "86400000"})
    assert (cfg.ringbuf_size, cfg.poll_interval) == (os.sysconf("SC_PAGE_SIZE"), 1.0)
    assert (cfg.max_connections, cfg.span_schedule_delay) == (1 << 20, 86400.0)
    assert load(Config, {"BEYLA_RINGBUF_SIZE": str(1 << 30), "BEYLA_POLL_INTERVAL_MS": "0.5"}).poll_interval == 0.0005


def test_pid_namespace_forms() -> None:
    own = os.stat("/proc/self/ns/pid").st_ino
    assert load(Config, {"BEYLA_PID_NAMESPACE": "HOST"}).pid_namespace == "host"
    assert load(Config, {"BEYLA_PID_NAMESPACE": str(own)}).pid_namespace == own


def test_endpoints_addresses_and_resource_attributes() -> None:
    cfg = load(Config, {"OTEL_EXPORTER_OTLP_ENDPOINT": " https://collector.example ",
                        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://[::1]:4317/",
                        "BEYLA_PROMETHEUS_ADDRESS": " 127.0.0.1 ",
                        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=prod, team=a%2Cb,"})
    assert (cfg.traces_endpoint, cfg.metrics_endpoint) == ("https://collector.example", "http://[::1]:4317/")
    assert cfg.prometheus_address == "127.0.0.1"
    assert cfg.resource_attributes == "deployment.environment.name=prod, team=a%2Cb,"  # as given, parsed by export


def test_every_variable_is_documented() -> None:
    rows = describe(Config)
    assert len({name for name, _, _ in rows}) == len(rows)
    assert all(doc.strip() for _, _, doc in rows)


def test_metrics_and_routes_settings() -> None:
    cfg = load(Config, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4317",
                        "BEYLA_ROUTES_PATTERNS": " /users/{id} , /items/:sku,",
                        "BEYLA_METRICS_EXTRA_ATTRIBUTES": "url.path",
                        "OTEL_METRIC_EXPORT_INTERVAL": "1500"})
    assert cfg.metrics_endpoint == "http://a:4317" and cfg.metric_export_interval == 1.5
    assert cfg.routes_patterns == ("/users/{id}", "/items/:sku")
    assert cfg.metric_extra_attributes == ("url.path",)
    assert load(Config, {}).prometheus_port == 0  # no port taken unless asked (make run asks for 9400)
    for name, value in (("BEYLA_ROUTES_PATTERNS", "users/{id}"), ("BEYLA_METRICS_EXTRA_ATTRIBUTES", "user.id"),
                        ("BEYLA_ROUTES_IGNORE_MODE", "logs"), ("BEYLA_PROMETHEUS_PORT", "70000")):
        with pytest.raises(ConfigError, match=f"^{name}="):
            load(Config, {name: value})


def test_span_batch_settings() -> None:
    cfg = load(Config, {})
    assert (cfg.span_queue_size, cfg.span_batch_size) == (2048, 512)  # the OTel spec's defaults
    assert (cfg.span_schedule_delay, cfg.span_export_timeout) == (5.0, 30.0)
    cfg = load(Config, {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100",
                        "OTEL_BSP_SCHEDULE_DELAY": "250", "OTEL_BSP_EXPORT_TIMEOUT": "1500"})
    assert (cfg.span_queue_size, cfg.span_batch_size, cfg.span_schedule_delay, cfg.span_export_timeout) == (
        100, 100, 0.25, 1.5)
    with pytest.raises(ConfigError, match="^OTEL_BSP_MAX_EXPORT_BATCH_SIZE=101 .*OTEL_BSP_MAX_QUEUE_SIZE=100"):
        load(Config, {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "101"})
    for name, value in (("OTEL_BSP_SCHEDULE_DELAY", "0"), ("OTEL_BSP_EXPORT_TIMEOUT", "-1"),
                        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"), ("OTEL_BSP_MAX_QUEUE_SIZE", "many")):
        with pytest.raises(ConfigError, match=f"^{name}="):
            load(Config, {name: value})


def test_otlp_exporter_settings_the_sdk_reads_are_checked_in_every_form(tmp_path: Path) -> None:
    unset = load(Config, {})
    assert (unset.otlp_timeout, unset.otlp_compression, unset.otlp_headers, unset.otlp_insecure,
            unset.otlp_certificate) == (None, None, None, None, None)  # the SDK's defaults apply
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n")
    cfg = load(Config, {"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5", "OTEL_EXPORTER_OTLP_COMPRESSION": " GZIP ",
                        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer abc,x-tenant=a%3Bb",
                        "OTEL_EXPORTER_OTLP_INSECURE": "TRUE", "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca),
                        "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(key), "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(ca),
                        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1", "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "gzip"})
    assert (cfg.otlp_timeout, cfg.otlp_compression, cfg.otlp_insecure) == (2.5, "gzip", True)
    assert cfg.otlp_headers == "authorization=Bearer abc,x-tenant=a%3Bb"
    assert (cfg.otlp_certificate, cfg.otlp_client_key, cfg.otlp_client_certificate) == (str(ca), str(key), str(ca))
    for name, value, reason in (
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "abc", "expected a number"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "", "expected a number"),  # the SDK would raise on float("")
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0", "expected seconds"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "nan", "expected seconds"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none", "expected gzip"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "", "expected gzip"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zip", "expected gzip"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "yes", "expected true or false"),  # the SDK would read false
            ("OTEL_EXPORTER_OTLP_HEADERS", "garbage", "'garbage': expected name=value pairs"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "a=b;c", "the value of 'a' must be printable ASCII"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=%0A", "the value of 'a' must be printable ASCII"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "missing.pem"), "cannot read it: No such file"),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(tmp_path), "cannot read it: Is a directory"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", str(key), "it holds no PEM certificate"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(ca), "it holds no PEM private key")):
        with pytest.raises(ConfigError, match=f"^{name}={value!r} is invalid: {reason}"):
            load(Config, {name: value})


def test_sampler_settings() -> None:
    cfg = load(Config, {})
    assert (cfg.traces_sampler, cfg.traces_sampler_arg) == ("parentbased_always_on", 1.0)
    cfg = load(Config, {"OTEL_TRACES_SAMPLER": " ParentBased_TraceIdRatio ", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert (cfg.traces_sampler, cfg.traces_sampler_arg) == ("parentbased_traceidratio", 0.25)
    # Empty means unset, as the OTel spec says for every variable.
    empty = load(Config, {"OTEL_TRACES_SAMPLER": "", "OTEL_TRACES_SAMPLER_ARG": " "})
    assert (empty.traces_sampler, empty.traces_sampler_arg) == ("parentbased_always_on", 1.0)
    for name, value in (("OTEL_TRACES_SAMPLER", "jaeger_remote"), ("OTEL_TRACES_SAMPLER", "ratio"),
                        ("OTEL_TRACES_SAMPLER_ARG", "1.5"), ("OTEL_TRACES_SAMPLER_ARG", "-0.1"),
                        ("OTEL_TRACES_SAMPLER_ARG", "half"), ("OTEL_TRACES_SAMPLER_ARG", "nan")):
        with pytest.raises(ConfigError, match=f"^{name}="):
            load(Config, {name: value})


def test_webhook_settings_are_checked() -> None:
    for name, value, reason in (
            ("BEYLA_WEBHOOK_SIDECAR_IMAGE", "", "expected an image reference"),
            ("BEYLA_WEBHOOK_SIDECAR_IMAGE", "Beyla Sidecar", "expected an image reference"),
            ("BEYLA_WEBHOOK_SIDECAR_CAPABILITIES", "BPF,PERFMONN", "'PERFMONN' is not a Linux capability"),
            ("BEYLA_WEBHOOK_SIDECAR_CAPABILITIES", "cap_all", "ALL is refused"),
            ("BEYLA_WEBHOOK_TRACEFS_HOST_PATH", "sys/kernel/tracing", "expected an absolute path"),
            ("BEYLA_WEBHOOK_TRACEFS_HOST_PATH", "/sys/../etc", "expected an absolute path"),
            ("BEYLA_WEBHOOK_ADDRESS", "localhost", "expected an IPv4 address"),
            ("BEYLA_WEBHOOK_REQUEST_TIMEOUT_MS", "inf", "expected a number of milliseconds"),
            ("BEYLA_LOG_LEVEL", "verbose", "expected one of"),
            # Given to every sidecar: checked by the sidecar's rule, or every injected pod would fail.
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317", "expected an http://"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "expected one of 'grpc'"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "garbage", "'garbage': expected name=value pairs"),
            ("OTEL_TRACES_SAMPLER", "bogus", "expected one of"),
            ("OTEL_TRACES_SAMPLER_ARG", "2", "expected a sampling ratio"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "expected a number")):
        with pytest.raises(ConfigError, match=f"^{name}={value!r} is invalid: {reason}"):
            load(WebhookConfig, {name: value})


def test_webhook_settings_accepted_forms() -> None:
    digest = "ghcr.io/org/beyla-sidecar:0.1.0@sha256:" + "a" * 64
    cfg = load(WebhookConfig, {"BEYLA_WEBHOOK_SIDECAR_IMAGE": f" {digest} ",
                               "BEYLA_WEBHOOK_SIDECAR_CAPABILITIES": "cap_bpf, PERFMON,,BPF",
                               "BEYLA_WEBHOOK_TRACEFS_HOST_PATH": "/sys/kernel/debug/tracing",
                               "OTEL_TRACES_SAMPLER": " traceidratio ", "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert (cfg.sidecar_image, cfg.sidecar_capabilities) == (digest, ("BPF", "PERFMON"))
    assert cfg.tracefs_host_path == "/sys/kernel/debug/tracing"
    assert cfg.passthrough_env() == [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")]
    # The chart sets every pass-through variable, empty when its value is unset: none is given on.
    chart = {name: "" for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                   "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
                                   "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_METRIC_EXPORT_INTERVAL")}
    assert load(WebhookConfig, chart).passthrough_env() == []
