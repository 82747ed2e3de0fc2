"""(6) Where the sidecar's CPU goes: py-spy samples the sidecar while nginx in its pod is
loaded at a fixed rate; each sample is put in the category of its innermost recognised
frame. Idle samples (waiting in epoll or on a condition) are left out."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

from .common import Context, Pod, log, start_app, warm_up, wrk
from .results_model import Section

RATE = 5000
# (category, substrings of a frame) — matched from the innermost frame outwards.
CATEGORIES = (
    ("export: OTLP protobuf encoding", ("trace_encoder", "common/_internal", "_translate_data", "encode_spans")),
    ("export: gRPC call", ("grpc/", "_channel.py")),
    ("export: batch span processor", ("BatchProcessor", "BatchSpanProcessor", "_shared_internal")),
    ("span building (to_span, SDK span objects)", ("export/spans.py", "sdk/trace/__init__", "ReadableSpan")),
    ("metrics recording", ("export/metrics.py", "selfmetrics", "sdk/metrics")),
    ("HTTP parsing", ("protocols/",)),
    ("connection tracking, trace context", ("tracker/",)),
    ("record decoding", ("bpf/events.py",)),
    ("ring buffer: reading records from shared memory", ("bpf/ring.py",)),
    ("pipeline glue, process table, resources", ("pipeline.py", "discover/", "export/resource")),
)
IDLE = ("Condition.wait", "Event.wait", "epoll", "select", "sleep", "Thread._wait_for_tstate_lock")


def categorize(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                return name
    return "other"


def aggregate(raw: Path) -> tuple[dict[str, float], dict[str, float], int]:
    cats: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        frames = stack_text.split(";")
        if any(i in frames[-1] for i in IDLE):
            continue
        n = int(count)
        total += n
        cats[categorize(frames[1:])] += n
        threads["main thread" if "MainThread" in frames[0] else "other threads"] += n
    pct = {k: 100 * v / total for k, v in cats.most_common()} if total else {}
    tpct = {k: 100 * v / total for k, v in threads.most_common()} if total else {}
    return pct, tpct, total


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "profile", "6. Where the sidecar's CPU goes (py-spy)",
        f"nginx in a pod paced at {RATE:,} req/s for {s.duration:g} s; `py-spy record --threads --gil -f raw` "
        "samples, at 250 Hz, the sidecar thread that holds the GIL (i.e. runs Python code); each sample goes to "
        "the category of its innermost recognised frame. Shares of the sidecar's Python execution time, one run "
        "(a profile, not a figure); the CPU split by thread is in section 2. Time in C without the GIL "
        "(gRPC's core, the kernel) is not sampled here.")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sec.error = "py-spy not installed (pip install -e '.[bench]')"
        return sec
    out = s.tmp / "py-spy.txt"
    pod = Pod("profile", s.tmp)
    try:
        app = start_app("nginx", pod, s.tmp)
        sidecar = ctx.sidecar(pod)
        try:
            warm_up(app.url)
            proc = subprocess.Popen([spy, "record", "--pid", str(sidecar.pid), "--threads", "--gil", "-r", "250",
                                     "-d", str(int(s.duration) + 1), "-f", "raw", "-o", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            result = wrk(app.url, s.duration, 32, s.tmp, rate=RATE)
            _, err = proc.communicate(timeout=60)
        finally:
            sidecar.stop()
    finally:
        pod.close()
    if not out.exists():
        sec.error = f"py-spy produced nothing: {err.decode(errors='replace')[-500:]}"
        return sec
    pct, threads, total = aggregate(out)
    log(f"profile: {total} busy samples over {result.requests:,} requests")
    for name, share in pct.items():
        sec.add(f"share.{name}", name, "% of samples", [share], digits=2)
    for name, share in threads.items():
        sec.notes.append(f"{name}: {share:.0f}% of the samples")
    sec.raw = {"categories": pct, "threads": threads, "samples": total, "requests": result.requests}
    return sec
