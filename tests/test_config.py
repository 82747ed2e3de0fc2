import pytest

from beyla_sidecar.config import Config, ConfigError, describe, load


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
        ("BEYLA_REQUEST_CAPTURE_SIZE", "1024"), ("BEYLA_RESPONSE_CAPTURE_SIZE", "257"), ("BEYLA_MAX_CONNECTIONS", "0"), ("BEYLA_PID_NAMESPACE", "pod"),
    ("BEYLA_TRACE_PRINTER", "xml"), ("BEYLA_INCLUDE_QUERY", "maybe"), ("BEYLA_POLL_INTERVAL_MS", "0"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}="):
        load(Config, {name: value})


def test_pid_namespace_forms() -> None:
    assert load(Config, {"BEYLA_PID_NAMESPACE": "HOST"}).pid_namespace == "host"
    assert load(Config, {"BEYLA_PID_NAMESPACE": "4026531836"}).pid_namespace == 4026531836


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
