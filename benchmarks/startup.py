"""(5) Start-up: from the moment `beyla-sidecar run` is started to its `instrumentation ready`
log line (probes loaded, attached and the PID-namespace filter set)."""

from __future__ import annotations

import time

from .common import Context, Pod, log
from .results_model import Section, at_most


def measure(ctx: Context) -> Section:
    s = ctx.settings
    sec = Section(
        "startup", "5. Start-up",
        "Time from just before the sidecar process is spawned (nsenter into a fresh pod, the console "
        "script `beyla-sidecar run`) until its `instrumentation ready` line reaches the benchmark on the "
        "stderr pipe, on an otherwise idle pod; runs one after another. The second figure pools every "
        "sidecar start of this whole benchmark (many happen while other sidecars or load run).")
    before = len(ctx.ready_seconds)
    cold = []
    for run in range(s.runs):
        pod = Pod(f"startup-{run}", s.tmp)
        try:
            sidecar = ctx.sidecar(pod)
            cold.append(sidecar.ready_seconds)
            # Not at once: a SIGTERM that lands while the sidecar is still writing its
            # `instrumentation ready` line deadlocks it (see the note below).
            time.sleep(0.5)
            sidecar.stop()
        finally:
            pod.close()
        log(f"run {run}: ready after {cold[-1]:.3f} s")
        time.sleep(0.2)
    sec.add("ready_seconds", "Start to `instrumentation ready`", "s", cold, at_most(1.0, "<= 1 s"))
    pooled = ctx.ready_seconds[:before] + ctx.ready_seconds[before + len(cold):]
    if pooled:
        sec.add("ready_seconds_all", f"… every other start of this benchmark, under load or 10 at once ({len(pooled)})", "s", pooled,
                at_most(1.0, "<= 1 s"))
    stops = [sc for sc in ctx.sidecars if hasattr(sc, "stop_seconds")]
    clean = [sc.stop_seconds for sc in stops if not sc.stop_hung]
    hung = [sc for sc in stops if sc.stop_hung]
    if clean:
        sec.add("stop_seconds", f"SIGTERM to exit, final flush included ({len(clean)} stops)", "s", clean)
    sec.add("stop_hung", "Sidecars that did not exit within 30 s of SIGTERM (killed)", "sidecars", [len(hung)],
            at_most(0, "0"))
    if hung:
        sec.notes.append(
            f"{len(hung)} of {len(stops)} sidecars ignored SIGTERM and were killed after 30 s (no final flush). "
            "Cause (py-spy dump of one): the SIGTERM handler (beyla_sidecar/cli.py, `_stop_on_signals`) logs "
            "with structlog; when the signal lands while the main thread is inside structlog's PrintLogger.msg "
            "(which holds a non-reentrant lock), the handler's own log call waits on that lock forever.")
    sec.raw = {"runs": cold, "all_starts": ctx.ready_seconds, "stops": [sc.stop_seconds for sc in stops],
               "hung": len(hung)}
    return sec
