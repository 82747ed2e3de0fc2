"""Attach strategies: which programs of http.bpf.o to load, and what the kernel must offer.

This table is the extension point for kernels with kprobes or fentry: add the programs
to probes/ under new `beyla_*` names, then add a row here *before* the tracepoint row
(rows are in preference order). `Probes` autoloads only the chosen row's programs.
Every program in the object must belong to some row, so a forgotten entry fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

OBJECT_NAME = "http.bpf.o"


@dataclass(frozen=True)
class Strategy:
    name: str
    programs: tuple[str, ...]        # BPF program names (<= 15 chars: the kernel's limit)
    btf_tracepoints: tuple[str, ...]  # tp_btf targets; exist when vmlinux BTF has btf_trace_<name>
    needs_tracefs: bool               # tp/ sections resolve their id through tracefs
    needs_kprobes: bool = False
    needs_fentry: bool = False


TRACEPOINT = Strategy(
    name="tracepoint",
    programs=(
        "beyla_accept4_x", "beyla_accept_x", "beyla_connect_e", "beyla_connect_x",
        "beyla_destroy", "beyla_task_exit", "beyla_tcp_send", "beyla_send_len",
        "beyla_read_e", "beyla_readv_e", "beyla_recvfrm_e", "beyla_recvmsg_e", "beyla_recv_len",
    ),
    btf_tracepoints=("tcp_sendmsg_locked", "sock_send_length", "sock_recv_length",
                     "tcp_destroy_sock"),
    needs_tracefs=True,
)

# Preference order.
STRATEGIES: tuple[Strategy, ...] = (TRACEPOINT,)


def by_name(name: str) -> Strategy:
    for strategy in STRATEGIES:
        if strategy.name == name:
            return strategy
    known = ", ".join(s.name for s in STRATEGIES)
    raise ValueError(f"unknown attach strategy {name!r} (known: {known})")
