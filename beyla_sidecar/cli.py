"""`beyla-sidecar run | check | webhook | config`."""

from __future__ import annotations

import argparse
import sys

import structlog

from . import __version__
from .config import Config, ConfigError, describe, load
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
    return 0 if report.ok else 1


def cmd_webhook() -> int:
    from .config import WebhookConfig
    from .kube.webhook import serve

    return serve(load(WebhookConfig))


def cmd_config() -> int:
    from .config import WebhookConfig

    for title, cls in (("Sidecar (`beyla-sidecar run`)", Config), ("Webhook (`beyla-sidecar webhook`)", WebhookConfig)):
        print(f"{title}:\n\n| Variable | Default | Description |\n|---|---|---|")
        for name, default, doc in describe(cls):
            print(f"| `{name}` | `{default}` | {doc} |" if default else f"| `{name}` | | {doc} |")
        print()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="beyla-sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="instrument the processes of this PID namespace")
    sub.add_parser("check", help="report kernel features, privileges and the attach strategy")
    sub.add_parser("webhook", help="serve the mutating admission webhook")
    sub.add_parser("config", help="print the environment variables as a Markdown table")
    args = parser.parse_args(argv)
    if args.command == "config":
        return cmd_config()
    try:
        cfg = load(Config)
        configure(cfg.log_level)
        if args.command == "run":
            return cmd_run(cfg)
        if args.command == "check":
            return cmd_check(cfg)
        return cmd_webhook()
    except ConfigError as exc:
        configure("info")
        log.error("invalid configuration", error=str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
