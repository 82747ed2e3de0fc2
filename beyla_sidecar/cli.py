"""`beyla-sidecar run | check | webhook | config`."""

from __future__ import annotations

import argparse
import os
import sys

import structlog

from . import __version__
from .config import Config, ConfigError, WebhookConfig, describe, load
from .log import configure
from .signals import StopSignal

log = structlog.get_logger()


def cmd_run(cfg: Config) -> int:
    from .bpf.libbpf import BpfError
    from .pipeline import Pipeline

    try:
        stop = StopSignal()
        Pipeline(cfg).run(stop)
        log.info("detached", signal=stop.received)
    except BpfError as exc:
        log.error("cannot instrument", error=str(exc))
        return 1
    return 0


def cmd_check(cfg: Config) -> int:
    from .bpf.loader import probe_features

    report = probe_features()
    print(report.render())
    network = _check_network(cfg)
    propagation = _check_propagation(cfg)
    # Any problem listed is something `run` cannot do here (e.g. HTTPS without uprobes).
    return 0 if report.ok and not report.problems and network is None and propagation is None else 1


def _check_propagation(cfg: Config) -> str | None:
    """The context-propagation row of `check` (BEYLA_BPF_CONTEXT_PROPAGATION): the problem, or None."""
    from .bpf import propagation

    mode = cfg.context_propagation
    if mode == "disabled":
        print(f"{'context propagation':<20} off (BEYLA_BPF_CONTEXT_PROPAGATION=disabled)")
        return None
    found = propagation.problem(cfg.cgroup2_mount)
    if found:
        print(f"{'context propagation':<20} no\nproblem: {found}")
        return found
    pod, _ = propagation.find_cgroups(cfg.cgroup2_mount)
    print(f"{'context propagation':<20} yes ({mode}: sockops and sk_msg on cgroup {pod}, NET_ADMIN)")
    return None


def _check_network(cfg: Config) -> str | None:
    """The network-metrics row of `check` (BEYLA_NETWORK_METRICS): the problem, or None."""
    from .bpf import netflow, tcphealth
    from .network import RTT_BOUNDS

    if not cfg.network_metrics:
        print(f"{'network metrics':<20} off (BEYLA_NETWORK_METRICS=false)")
        return None
    found = netflow.problem()
    print(f"{'network metrics':<20} {'no' if found else 'yes (packet socket filter, NET_RAW)'}")
    tcp = tcphealth.problem(RTT_BOUNDS)
    print(f"{'tcp health':<20} {'no' if tcp else 'yes (TCP tracepoints, no capability of its own)'}")
    for problem in (found, tcp):
        if problem:
            print(f"problem: {problem}")
    return found or tcp


def cmd_webhook(cfg: WebhookConfig) -> int:
    from .kube.webhook import serve

    return serve(cfg)


def cmd_config() -> int:
    for title, cls in (("Sidecar (`beyla-sidecar run`)", Config), ("Webhook (`beyla-sidecar webhook`)", WebhookConfig)):
        print(f"{title}:\n\n| Variable | Default | Description |\n|---|---|---|")
        for name, default, doc in describe(cls):
            print(f"| `{name}` | `{default}` | {doc} |" if default else f"| `{name}` | | {doc} |")
        print()
    return 0


def dispatch(command: str) -> int:
    if command == "config":
        return cmd_config()
    if command == "webhook":
        # Its own settings only: the sidecar's are not its to judge (the chart sets OTEL_* to "" when unset).
        webhook_cfg = load(WebhookConfig)
        configure(webhook_cfg.log_level)
        return cmd_webhook(webhook_cfg)
    cfg = load(Config)
    configure(cfg.log_level)
    return cmd_run(cfg) if command == "run" else cmd_check(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beyla-sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="instrument the processes of this PID namespace")
    sub.add_parser("check", help="report kernel features, privileges and the attach strategy")
    sub.add_parser("webhook", help="serve the mutating admission webhook")
    sub.add_parser("config", help="print the environment variables as a Markdown table")
    args = parser.parse_args(argv)
    try:
        code = dispatch(args.command)
        sys.stdout.flush()  # here, where a reader that went away can still be handled
        return code
    except ConfigError as exc:
        configure("info")
        log.error("invalid configuration", error=str(exc))
        return 2
    except BrokenPipeError:
        # `beyla-sidecar config | head`: the reader has what it wanted. stdout goes to /dev/null so
        # that the interpreter's last flush does not fail again on its way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
