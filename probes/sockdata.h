/* Socket data: every send and receive of a pod's TCP socket, with its exact byte count,
 * from the socket-specific tracepoints sock_send_length/sock_recv_length (they fire after
 * the transfer, in the caller's context). The user buffer comes from the syscall's own
 * arguments in the task's saved registers: no generic sys_enter_* hook, which every
 * process of the node would pay for on every read and write. */
#ifndef __BEYLA_SOCKDATA_H
#define __BEYLA_SOCKDATA_H

#include "tls.h"

#if defined(__TARGET_ARCH_x86)
#define SYSCALL_NR(regs) ((regs)->orig_ax)
#define SYSCALL_ARG2(regs) ((regs)->si)
#define SYSCALL_ARG3(regs) ((regs)->dx)
#define NR_READ 0
#define NR_WRITE 1
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#elif defined(__TARGET_ARCH_arm64)
#define SYSCALL_NR(regs) ((regs)->syscallno)
#define SYSCALL_ARG2(regs) ((regs)->regs[1])
#define SYSCALL_ARG3(regs) ((regs)->regs[2])
#define NR_READ 63
#define NR_WRITE 64
#define NR_READV 65
#define NR_WRITEV 66
#define NR_SENDTO 206
#define NR_RECVFROM 207
#define NR_SENDMSG 211
#define NR_RECVMSG 212
#else
#error "syscall numbers of this architecture are not listed"
#endif

#define MSG_PEEK 2

/* First element of a user iovec array, and where the others are. */
static __always_inline void first_iovec(__u64 uiov, __u64 cnt, struct xfer *x)
{
	struct iovec iov;

	if (cnt < 1 || bpf_probe_read_user(&iov, sizeof(iov), (void *)uiov))
		return;
	x->buf = (__u64)iov.iov_base;
	x->avail = iov.iov_len;
	x->iov = uiov + sizeof(iov);
	x->iov_left = cnt - 1;
}

/* The user buffer of the syscall in progress: read/write/recvfrom/sendto pass it
 * directly, readv/writev/recvmsg/sendmsg through an iovec (the first element is kept).
 * Anything else (sendfile, splice, io_uring) has none: bytes are counted, not captured. */
static __always_inline void syscall_buffer(struct task_struct *task, struct xfer *x)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	struct user_msghdr *msg;
	struct iovec *uiov;
	__u64 cnt;
	long nr;

	if (!regs)
		return;
	nr = SYSCALL_NR(regs);
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_RECVFROM:
	case NR_SENDTO:
		x->buf = SYSCALL_ARG2(regs);
		x->avail = SYSCALL_ARG3(regs);
		break;
	case NR_READV:
	case NR_WRITEV:
		first_iovec(SYSCALL_ARG2(regs), SYSCALL_ARG3(regs), x);
		break;
	case NR_RECVMSG:
	case NR_SENDMSG:
		msg = (struct user_msghdr *)SYSCALL_ARG2(regs);
		if (bpf_probe_read_user(&uiov, sizeof(uiov), &msg->msg_iov) ||
		    bpf_probe_read_user(&cnt, sizeof(cnt), &msg->msg_iovlen))
			return;
		first_iovec((__u64)uiov, cnt, x);
		break;
	}
}

static __always_inline void socket_transfer(struct sock *sk, bool recv, int ret, const struct cur_task *cur)
{
	__u64 key = (__u64)sk;
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);
	struct ssl_call *call = tls_probed() ? ssl_call_of(cur->task) : NULL;
	struct xfer x = {};

	if (!recv)
		send_ended(sk);
	if (call) {
		tie_tls(sk, st, call->ssl, cur);
		return;
	}
	if (!st)
		st = conn_new(key, sk, socket_role(sk), 0, cur);
	if (!st || st->tls)
		return;
	syscall_buffer(cur->task, &x);
	on_transfer(st, key, recv, ret, &x);
	exchange_context(st, key, ret);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(beyla_send_len, struct sock *sk, int ret, int flags)
{
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	if (ret > 0 && is_tcp(sk))
		socket_transfer(sk, false, ret, &cur);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(beyla_recv_len, struct sock *sk, int ret, int flags)
{
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	/* a peek leaves the data queued: the real read reports it */
	if (ret > 0 && !(flags & MSG_PEEK) && is_tcp(sk))
		socket_transfer(sk, true, ret, &cur);
	return 0;
}

/* May run in softirq (after a RST or the FIN timeout): `current` is not the owner, so
 * only what the state holds is reported. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(beyla_destroy, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);
	struct conn_event e = { .type = EVENT_CONN_CLOSE, .sock_id = key };

	if (!st)
		return 0;
	if (st->tls) {
		struct ssl_key skey = { .tgid = st->rec.pid, .ssl = st->ssl };

		bpf_map_delete_elem(&ssl_socks, &skey);
	}
	e.ts_ns = bpf_ktime_get_ns();
	/* a request never answered ended now: its span lasts as long as the wait */
	if (st->phase == PHASE_REQUEST)
		st->rec.resp_end_ns = e.ts_ns;
	if (st->phase != PHASE_IDLE)
		emit_exchange(st, END_CLOSE, e.ts_ns);
	e.role = st->rec.role;
	e.pid = st->rec.pid;
	e.ns_pid = st->rec.ns_pid;
	/* user space never heard of a connection whose CONN_OPEN never went out: its close is
	 * lost with it (conn_forget counts the open) */
	if (st->announced)
		submit(&e, sizeof(e), COUNTER_EVENT_DROPS);
	else
		count(COUNTER_EVENT_DROPS);
	conn_forget(st, key);
	return 0;
}

#endif /* __BEYLA_SOCKDATA_H */
