"""(4) Against agent-based instrumentation: the same Python WSGI app served three ways,
alternating: plain (baseline), plain + our sidecar, and instrumented in-process with the
OpenTelemetry Python SDK and opentelemetry-instrumentation-wsgi (OpenTelemetryMiddleware,
BatchSpanProcessor, OTLP/gRPC exporter). Both kinds of instrumentation export to the same
OTLP receiver."""

from __future__ import annotations

import time

from .common import Context, Pod, log, ratio, start_app, warm_up, wrk
from .results_model import Section

VARIANTS = ("baseline", "sidecar", "agent")
FIXED_RATE = 1000
CONNECTIONS = 16
WARM_UP = 200


def _order(runs: int):
    """Rotates which variant goes first and reverses every other run."""
    for run in range(runs):
        order = list(VARIANTS[run % 3:] + VARIANTS[:run % 3])
        if run % 2:
            order.reverse()
        for variant in order:
            yield run, variant


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "agent", "4. Sidecar versus in-process agent (Python)",
        f"The Python WSGI app (benchmarks/apps/wsgi_server.py) in a pod, loaded by wrk ({CONNECTIONS} keep-alive "
        f"connections) paced at {FIXED_RATE:,} req/s and at full speed, {s.duration:g} s each. Variants, alternating "
        "in rotating order within each run: baseline (no tracing), sidecar (our sidecar traces it from outside), "
        "agent (the same app wrapped in opentelemetry-instrumentation-wsgi's OpenTelemetryMiddleware with the "
        "OTel SDK's BatchSpanProcessor and OTLP/gRPC exporter). Both export to the same receiver. Ratios are "
        "against the baseline of the same run; 'sidecar/agent' compares the two directly. The app process is "
        "restarted for every variant.")
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    pod = Pod("agent", s.tmp)
    try:
        for run, variant in _order(s.runs):
            app = start_app("python", pod, s.tmp, otel=variant == "agent",
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": ctx.receiver.endpoint,
                                 "OTEL_SERVICE_NAME": "bench-python-agent"})
            sidecar = ctx.sidecar(pod) if variant == "sidecar" else None
            spans0 = ctx.receiver.snapshot()[1]
            try:
                warm_up(app.url, WARM_UP)
                fixed = wrk(app.url, s.duration, CONNECTIONS, s.tmp, rate=FIXED_RATE)
                full = wrk(app.url, s.duration, CONNECTIONS, s.tmp)
            finally:
                if sidecar:
                    sidecar.stop()
                app.stop()  # the agent flushes its batch queue on SIGTERM
            ctx.receiver.wait_quiet(quiet=0.5, timeout=5)
            spans = ctx.receiver.snapshot()[1] - spans0
            runs[variant].append({"fixed": vars(fixed), "full": vars(full), "server_spans": spans,
                                  "requests": WARM_UP + fixed.requests + full.requests})
            log(f"run {run} {variant}: fixed p99 {fixed.p99_us} us; full {full.rps:,.0f} req/s p99 {full.p99_us} us; "
                f"{spans:,} spans for {WARM_UP + fixed.requests + full.requests:,} requests")
            time.sleep(0.2)
    finally:
        pod.close()

    for mode, mode_label in (("fixed", f"{FIXED_RATE:,} req/s"), ("full", "full speed")):
        for variant in ("sidecar", "agent"):
            pairs = list(zip(runs["baseline"], runs[variant]))
            for metric, mlabel in (("rps", "throughput"), ("p50_us", "p50 latency"), ("p99_us", "p99 latency")):
                sec.add(f"{mode}.{variant}.{metric}_ratio", f"{mode_label}: {mlabel}, {variant}/baseline", "ratio",
                        [ratio(v[mode][metric], b[mode][metric]) for b, v in pairs])
        pairs = list(zip(runs["agent"], runs["sidecar"]))
        for metric, mlabel in (("rps", "throughput"), ("p99_us", "p99 latency")):
            sec.add(f"{mode}.sidecar_vs_agent.{metric}", f"{mode_label}: {mlabel}, sidecar/agent", "ratio",
                    [ratio(sc[mode][metric], ag[mode][metric]) for ag, sc in pairs])
        for variant in VARIANTS:
            sec.add(f"{mode}.{variant}.rps", f"{mode_label}: req/s, {variant}", "req/s",
                    [r[mode]["rps"] for r in runs[variant]])
    for variant in ("sidecar", "agent"):
        sec.add(f"{variant}.span_ratio", f"Server spans received / requests served, {variant}", "ratio",
                [r["server_spans"] / max(1, r["requests"]) for r in runs[variant]])
    sec.raw = runs
    return sec
