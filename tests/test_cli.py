"""The real command line in a subprocess: a bad setting is one log line on stderr and exit code 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest


def beyla_sidecar(command: str, stdout: int = subprocess.DEVNULL, **env: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: only the settings under test.
    return subprocess.run([sys.executable, "-m", "beyla_sidecar.cli", command], env={"PATH": os.environ["PATH"], **env},
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


def config_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a configuration error gives: its message."""
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert (record["event"], record["level"]) == ("invalid configuration", "error")
    return str(record["error"])


@pytest.mark.parametrize("command,name,value", [
    ("run", "BEYLA_RINGBUF_SIZE", "100000"),
    ("run", "BEYLA_POLL_INTERVAL_MS", "nan"),
    ("run", "BEYLA_POLL_INTERVAL_MS", "inf"),
    ("run", "BEYLA_POLL_INTERVAL_MS", "1e12"),
    ("run", "BEYLA_PROMETHEUS_ADDRESS", "not-an-address"),
    ("run", "BEYLA_PID_NAMESPACE", "12345"),
    ("run", "OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ("run", "OTEL_EXPORTER_OTLP_TIMEOUT", "abc"),
    ("run", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zip"),
    ("run", "OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
    ("run", "OTEL_EXPORTER_OTLP_METRICS_HEADERS", "garbage"),
    ("run", "OTEL_BSP_SCHEDULE_DELAY", "nan"),
    ("run", "OTEL_BSP_MAX_QUEUE_SIZE", "many"),
    ("run", "OTEL_RESOURCE_ATTRIBUTES", "garbage"),
    ("run", "OTEL_TRACES_SAMPLER", "bogus"),
    ("check", "OTEL_TRACES_SAMPLER_ARG", "nan"),
    ("webhook", "BEYLA_WEBHOOK_SIDECAR_IMAGE", ""),
    ("webhook", "BEYLA_WEBHOOK_SIDECAR_CAPABILITIES", "BPF,PERFMONN"),
    ("webhook", "BEYLA_WEBHOOK_TRACEFS_HOST_PATH", "sys/kernel/tracing"),
    ("webhook", "OTEL_TRACES_SAMPLER", "bogus"),
])
def test_bad_value_is_one_line_and_exit_code_2(command: str, name: str, value: str) -> None:
    message = config_error(beyla_sidecar(command, **{name: value}))
    assert message.startswith(f"{name}={value!r} is invalid: ")


def test_prometheus_port_in_use_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = beyla_sidecar("run", BEYLA_PROMETHEUS_PORT=str(port), BEYLA_PROMETHEUS_ADDRESS="127.0.0.1")
    assert config_error(result) == (f"BEYLA_PROMETHEUS_PORT={port} is unusable: cannot listen on 127.0.0.1:{port}: "
                                    "Address already in use. Choose a free port, or 0 for none.")


def test_webhook_judges_only_its_own_settings() -> None:
    # The chart gives the webhook every OTEL_* variable, empty when unset: the sidecar would refuse
    # an empty OTEL_EXPORTER_OTLP_PROTOCOL, the webhook must not (the error is the image's).
    result = beyla_sidecar("webhook", OTEL_EXPORTER_OTLP_PROTOCOL="", OTEL_METRIC_EXPORT_INTERVAL="",
                           BEYLA_WEBHOOK_SIDECAR_IMAGE="")
    assert config_error(result).startswith("BEYLA_WEBHOOK_SIDECAR_IMAGE='' is invalid: ")


def test_config_into_a_closed_pipe_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write, as after `| head` read its lines
    try:
        result = beyla_sidecar("config", stdout=write_end)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (1, "")


def test_config_prints_every_variable() -> None:
    result = beyla_sidecar("config", stdout=subprocess.PIPE)
    assert (result.returncode, result.stderr) == (0, "")
    assert "| `BEYLA_RINGBUF_SIZE` | `8388608` |" in result.stdout
    assert "| `OTEL_EXPORTER_OTLP_COMPRESSION` | |" in result.stdout
