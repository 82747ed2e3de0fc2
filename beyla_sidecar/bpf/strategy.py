"""Attach strategies: which programs of beyla.bpf.o to load, and what the kernel must offer.

This table is the extension point for kernels with kprobes or fentry: add the programs
to probes/ under new `beyla_*` names, then add a row here *before* the tracepoint row
(rows are in preference order). `Probes` autoloads only the chosen row's programs, plus
the uprobe programs of OPENSSL_UPROBES and ASYNCIO_UPROBES, which every strategy shares and
which are attached per library file (discover/), not by section name.
Every program in the object must belong to some row or to those tables, so a forgotten
entry fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

OBJECT_NAME = "beyla.bpf.o"


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
        "beyla_send_len", "beyla_recv_len", "beyla_destroy", "beyla_sk_state",
        "beyla_exec", "beyla_fork", "beyla_task_exit",
    ),
    btf_tracepoints=("sock_send_length", "sock_recv_length", "tcp_destroy_sock",
                     "inet_sock_set_state", "sched_process_fork"),
    needs_tracefs=True,
)


@dataclass(frozen=True)
class Uprobe:
    program: str
    symbol: str
    retprobe: bool


# OpenSSL 1.1.1/3.x (and BoringSSL/LibreSSL where they export these names): entry probes
# remember the call, one return probe emits the plaintext. SSL_do_handshake only marks
# the thread, so that the handshake's socket I/O ties the SSL* to its socket early.
_RET = "beyla_ssl_ret"
OPENSSL_UPROBES: tuple[Uprobe, ...] = (
    Uprobe("beyla_ssl_hs_e", "SSL_do_handshake", False), Uprobe(_RET, "SSL_do_handshake", True),
    Uprobe("beyla_ssl_rd_e", "SSL_read", False), Uprobe(_RET, "SSL_read", True),
    Uprobe("beyla_ssl_rdx_e", "SSL_read_ex", False), Uprobe(_RET, "SSL_read_ex", True),
    Uprobe("beyla_ssl_wr_e", "SSL_write", False), Uprobe(_RET, "SSL_write", True),
    Uprobe("beyla_ssl_wrx_e", "SSL_write_ex", False), Uprobe(_RET, "SSL_write_ex", True),
)
# CPython's _asyncio (probes/asyncio.h; functions found by discover/asyncio_hooks.py, named by
# the hook they serve). The return probe comes first: attached before the entries and detached
# after them, no step is entered without its return being seen.
ASYNCIO_UPROBES: tuple[Uprobe, ...] = (
    Uprobe("beyla_aio_ret", "task_step", True), Uprobe("beyla_aio_ret", "task_wakeup", True),
    Uprobe("beyla_aio_init", "task_init", False), Uprobe("beyla_aio_step", "task_step", False),
    Uprobe("beyla_aio_wake", "task_wakeup", False),
)
UPROBE_PROGRAMS = tuple(sorted({u.program for u in OPENSSL_UPROBES + ASYNCIO_UPROBES}))
OPENSSL_SYMBOLS = tuple(sorted({u.symbol for u in OPENSSL_UPROBES}))
# Without these a library's plaintext cannot be seen at all; the others are optional
# (SSL_*_ex: OpenSSL 1.1.1+; a missing SSL_do_handshake only delays the socket tie).
OPENSSL_REQUIRED = ("SSL_read", "SSL_write")

# Preference order.
STRATEGIES: tuple[Strategy, ...] = (TRACEPOINT,)


def by_name(name: str) -> Strategy:
    for strategy in STRATEGIES:
        if strategy.name == name:
            return strategy
    known = ", ".join(s.name for s in STRATEGIES)
    raise ValueError(f"unknown attach strategy {name!r} (known: {known})")
