"""The figures issue 9 starts from, at commit 520cfc3 (2 vCPU, Linux 6.18), shown next to the new
ones in results/latest.md. Sources: issue 9's "Where it stands" (nginx's worker pinned to cpu 1, wrk
-c16 on cpu 0) and the README's Performance section at 520cfc3. The data path did not change between
a9e6719, where the README's sidecar CPU was measured, and 520cfc3; its probe time (~6.5 µs) predates
d23fed8's cheaper namespace check (~0.1 µs less per call it filters out, a few per request).

Keys are "<section>.<figure key>", as the measurements name their figures."""

from __future__ import annotations

COMMIT = "520cfc3"

OLD: dict[str, str] = {
    # 1. App: nginx's own CPU per request (CPU time of its pinned worker), full-speed wrk
    "app_overhead.nginx.full.cpu_ratio": "×1.4–1.8",
    "app_overhead.nginx.full.without.cpu_us": "14.6",
    "app_overhead.nginx.full.with.cpu_us": "26–27",
    "app_overhead.nginx.full.throughput_ratio": "0.23–0.51",
    # 2. Probe time per exchange, all programs (README: per request, nginx + wrk traced)
    "sidecar_cost.bpf_us.otlp.1000": "~6.5",
    "sidecar_cost.bpf_us.otlp.5000": "~6.5",
    "sidecar_cost.bpf_us.otlp.10000": "~6.5",
    "sidecar_cost.bpf_us.otlp.30000": "~6.5",
    # 3. Sidecar CPU per exchange
    "sidecar_cost.cpu_us.otlp.1000": "90",
    "sidecar_cost.cpu_us.otlp.5000": "61",
    "sidecar_cost.cpu_us.otlp.10000": "61",
    "sidecar_cost.cpu_main_us.otlp.5000": "48",
    "sidecar_cost.cpu_main_us.otlp.10000": "48",
    "sidecar_cost.cpu_export_us.otlp.5000": "12",
    "sidecar_cost.cpu_export_us.otlp.10000": "12",
    "sidecar_cost.cpu_us.metrics.5000": "36–48 (no exporter)",
    "sidecar_cost.cpu_us.metrics.10000": "36–48 (no exporter)",
    # 4. Loss and the no-loss ceiling
    "sidecar_cost.lost.otlp.1000": "0",
    "sidecar_cost.lost.otlp.5000": "0",
    "sidecar_cost.lost.otlp.10000": "0",
    "sidecar_cost.highest_sustainable": "20 000",
    "sidecar_cost.highest_sustainable_limited": "10 000",
    "sidecar_cost.no_loss_limited": "12 500",
    "sidecar_cost.loss_begins_limited": "15 000",
    # 5. The rest of the node: an unrelated nginx + wrk's throughput with N idle sidecars / none
    "node_cost.socket_rps.ratio.1": "0.86",
    "node_cost.socket_rps.ratio.10": "0.67",
}

# Per program: the hooks' names at 520cfc3 (programs are being renamed, so this stays text).
OLD_PROBES = (f"At {COMMIT}, per call (issue 9; nginx and wrk both traced): `sock_send_length` 3.7 µs and "
              "`sock_recv_length` 3.6 µs (the emitting programs), `tcp_sendmsg_locked` 0.6 µs, `sys_enter_read` "
              "and `sys_enter_recvfrom` 0.85 µs. Per request (README, this harness): `sock_send_length` 2.4, "
              "`sock_recv_length` 1.6, `tcp_sendmsg_locked` 1.5, `recvfrom` 0.8, ~6.5 µs in all.")
