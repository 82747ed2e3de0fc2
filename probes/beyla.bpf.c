// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* beyla-sidecar probes (tracepoint strategy): per-connection exchanges of the pod's TCP
 * sockets and OpenSSL sessions, and process lifecycle. Needs kernel BTF and the
 * tracepoints sock_send_length/sock_recv_length (Linux 6.4+); no kprobe or fentry.
 *
 *   gate.h      the PID-namespace gate every process-context program passes first,
 *               knobs, ring buffer and loss counters
 *   conn.h      per-socket state (identity resolved once), listening ports
 *               (inet_sock_set_state), the thread -> server exchange being served
 *   exchange.h  request/response state machine, prefixes, head scan; one record
 *               per exchange
 *   asyncio.h   CPython asyncio uprobes: which Task runs on a thread, for parents
 *   propagate.h the trace context of an exchange when propagation is on (its other
 *               half is propagate.bpf.c)
 *   tls.h       OpenSSL uprobes: plaintext into the same exchanges
 *   sockdata.h  sock_send_length/sock_recv_length (data), tcp_destroy_sock (close)
 *   process.h   exec, fork, exit for discover/
 *
 * Program names start with "beyla_" and are listed in beyla_sidecar/bpf/strategy.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

/* uapi constants that vmlinux.h (types only) does not carry */
#define AF_INET 2
#define AF_INET6 10

#include "beyla.h"
#include "gate.h"
#include "conn.h"
#include "exchange.h"
#include "propagate.h"
#include "tls.h"
#include "sockdata.h"
#include "process.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
