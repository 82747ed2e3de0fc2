// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* TCP connection and payload probes (tracepoint strategy), OpenSSL plaintext
 * probes (uprobes) and process lifecycle.
 *
 * Needs kernel BTF and the tracepoints sock_send_length/sock_recv_length
 * (Linux 6.4+). No kprobe or fentry: works where those are unavailable.
 *
 *   connections  sys_exit_accept{,4} (server), sys_{enter,exit}_connect (client),
 *                tcp_destroy_sock (close)
 *   send         tcp_sendmsg_locked stashes the user buffer, sock_send_length emits
 *   receive      sys_enter_{read,readv,recvfrom,recvmsg} stash, sock_recv_length emits
 *   TLS          uprobes on SSL_{read,write}{,_ex} and SSL_do_handshake record the
 *                call per thread; the socket I/O the library does inside the call
 *                ties the SSL* to its struct sock and marks that socket TLS (its
 *                ciphertext is not reported); the uretprobe emits the plaintext as
 *                EVENT_DATA with FLAG_TLS on that socket
 *   processes    sched_process_{exec,fork,exit}, executable file mmaps and listen()
 *                for discover/ (which finds the libraries to probe)
 *
 * Every program running in process context first checks that the current task
 * lives in a PID namespace listed in pid_ns_filter; programs reporting traffic
 * then apply the process selection (allowed_pids) when filter_pids is set.
 * Program names start with "beyla_" and are listed in beyla_sidecar/bpf/strategy.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "beyla.h"
#include "maps.h"

/* uapi constants that vmlinux.h (types only) does not carry */
#define AF_INET 2
#define AF_INET6 10
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define MSG_PEEK 2
#define EINPROGRESS 115
#define PROT_EXEC 4

/* Payload bytes captured per event; set by user space before load (<= MAX_CAPTURE). */
const volatile __u32 capture_size = 512;
/* Unread bytes in the ring buffer above which a submit wakes the reader; below it no
 * wakeups (they would cost the traced app), user space drains on its poll timer. */
const volatile __u64 wakeup_bytes = 64 * 1024;
/* Only processes in allowed_pids report traffic (BEYLA_EXECUTABLE_NAME/BEYLA_OPEN_PORT);
 * false: every process of the pod, and the verifier drops the lookups. */
const volatile bool filter_pids = false;

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The current task as seen by the namespace filter. */
struct cur_task {
	struct task_struct *task;
	struct pid *pid;  /* task->thread_pid */
	__u32 level;      /* depth of the task's PID namespace */
};

/* Inode of the PID namespace at `level` of pid. Direct loads through BTF pointers
 * (a faulting load reads 0) cost far less than one bpf_probe_read_kernel per field,
 * and this runs for every hooked syscall of the node. The verifier accepts only
 * constant offsets into the flexible numbers[] array: hence the switch over the
 * usual nesting depths (host 0, pod 1, pod in a nested container runtime 2..3). */
static __always_inline __u32 pidns_inum(struct pid *pid, __u32 level)
{
	switch (level) {
	case 0:
		return pid->numbers[0].ns->ns.inum;
	case 1:
		return pid->numbers[1].ns->ns.inum;
	case 2:
		return pid->numbers[2].ns->ns.inum;
	case 3:
		return pid->numbers[3].ns->ns.inum;
	default:
		return BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
	}
}

/* Process-context gate: true when the current task's PID namespace (the one
 * it was created in: thread_pid, not nsproxy->pid_ns_for_children, which is
 * wrong after unshare) is in pid_ns_filter. Reads only what the check needs. */
static __always_inline bool current_filtered(struct cur_task *cur)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pid *pid = task->thread_pid;
	__u32 level = pid->level;
	__u32 inum = pidns_inum(pid, level);

	cur->task = task;
	cur->pid = pid;
	cur->level = level;
	return bpf_map_lookup_elem(&pid_ns_filter, &inum) != NULL;
}

/* tgid of the current task in its own PID namespace: the key of allowed_pids. */
static __always_inline __u32 ns_tgid(const struct cur_task *cur)
{
	struct task_struct *task = cur->task;
	__u32 level = cur->level;
	struct pid *leader = BPF_CORE_READ(task, group_leader, thread_pid);

	return BPF_CORE_READ(leader, numbers[level].nr);
}

/* current_filtered, then the process selection: the gate of every program that
 * reports traffic. Lifecycle programs use current_filtered alone: discover/ must
 * see every process of the pod to select among them. */
static __always_inline bool current_selected(struct cur_task *cur)
{
	__u32 tgid;

	if (!current_filtered(cur))
		return false;
	if (!filter_pids)
		return true;
	tgid = ns_tgid(cur);
	return bpf_map_lookup_elem(&allowed_pids, &tgid) != NULL;
}

/* Host and namespace-local ids of a task that passed the filter. */
static __always_inline void task_ids(const struct cur_task *cur, struct conn_info *ids)
{
	struct task_struct *task = cur->task;
	struct pid *pid = cur->pid;
	__u32 level = cur->level;
	struct pid *leader = BPF_CORE_READ(task, group_leader, thread_pid);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	ids->pid = pid_tgid >> 32;
	ids->tid = (__u32)pid_tgid;
	ids->ns_tid = BPF_CORE_READ(pid, numbers[level].nr);
	ids->ns_pid = BPF_CORE_READ(leader, numbers[level].nr);
}

static __always_inline void count(__u32 idx)
{
	__u64 *val = bpf_map_lookup_elem(&counters, &idx);

	if (val)
		(*val)++; /* per-CPU slot: no atomic needed */
}

/* TCP over IPv4/IPv6 only: unix, UDP, MPTCP sockets are not ours. */
static __always_inline bool is_tcp(const struct sock *sk)
{
	__u16 family;

	if (!sk || BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP ||
	    BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return false;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	return family == AF_INET || family == AF_INET6;
}

/* fd of the current task -> its TCP struct sock, or NULL: walks
 * task->files->fdt->fd[fd] -> file -> socket (private_data) -> sk. */
static __always_inline struct sock *fd_to_tcp_sock(long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *file;
	struct socket *sock;
	__u32 mode;

	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return NULL;
	/* private_data is only a struct socket for socket inodes */
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return NULL;
	sock = BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	return is_tcp(sk) ? sk : NULL;
}

static __always_inline void fill_tuple(struct conn_tuple *t, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	t->family = family;
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num); /* host order already */
	t->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET6) {
		bpf_core_read(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		bpf_core_read(t->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(t->daddr, 4, &sk->__sk_common.skc_daddr);
	}
}

/* Per-CPU scratch record with a zeroed header: type, ids and sock set. */
static __always_inline struct data_event *new_event(__u8 type, const struct sock *sk,
						    const struct conn_info *ids)
{
	__u32 zero = 0;
	struct data_event *e = bpf_map_lookup_elem(&scratch, &zero);

	if (!e)
		return NULL;
	__builtin_memset(&e->hdr, 0, sizeof(e->hdr));
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->hdr.sock_id = (__u64)sk;
	e->hdr.pid = ids->pid;
	e->hdr.tid = ids->tid;
	e->hdr.ns_pid = ids->ns_pid;
	e->hdr.ns_tid = ids->ns_tid;
	e->hdr.type = type;
	return e;
}

/* Header plus capture_len payload bytes; wakes the reader only when the ring fills up. */
static __always_inline void submit(struct data_event *e)
{
	__u32 len = e->hdr.capture_len;
	__u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes ?
		      BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	/* Re-bound the length right at the call: the verifier must see
	 * size <= sizeof(*e) and does not remember it from the payload read. */
	if (len > MAX_CAPTURE)
		len = MAX_CAPTURE;
	if (bpf_ringbuf_output(&events, e, sizeof(e->hdr) + len, flags))
		count(COUNTER_RINGBUF_DROPS);
}

/* Record a new connection of the current task and report it. */
static __always_inline void track_conn(struct sock *sk, __u8 role, const struct cur_task *cur)
{
	struct conn_info info = { .role = role };
	__u64 key = (__u64)sk;
	struct data_event *e;

	task_ids(cur, &info);
	fill_tuple(&info.tuple, sk);
	bpf_map_update_elem(&conns, &key, &info, BPF_ANY);
	e = new_event(EVENT_CONN_OPEN, sk, &info);
	if (!e)
		return;
	e->hdr.role = role;
	e->hdr.tuple = info.tuple;
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));
	submit(e);
}

/* Copy up to min(moved, avail, capture_size) bytes of user memory as payload. */
static __always_inline void read_payload(struct data_event *e, __u64 ubuf, __u64 avail,
					 __u32 moved)
{
	__u32 len = capture_size;

	if (!ubuf)
		return;
	if (len > moved)
		len = moved;
	if (len > avail)
		len = avail;
	/* capture_size is only known at load time; this bound is what lets the
	 * verifier accept a variable-size read into the fixed payload array. */
	if (len > MAX_CAPTURE)
		len = MAX_CAPTURE;
	if (bpf_probe_read_user(e->payload, len, (const void *)ubuf)) {
		count(COUNTER_READ_FAILS);
		return;
	}
	e->hdr.capture_len = len;
}

/* sk carries the TLS session `ssl` of the current process: remember the pair for
 * the plaintext probes, and mark the socket so that its ciphertext is not reported. */
static __always_inline void tie_tls(struct sock *sk, __u64 ssl, struct conn_info *conn,
				   const struct cur_task *cur)
{
	struct ssl_key skey = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = ssl };
	struct conn_info info = { .role = ROLE_UNKNOWN, .tls = 1, .ssl = ssl };
	__u64 key = (__u64)sk;
	__u64 *known = bpf_map_lookup_elem(&ssl_socks, &skey);

	if (!known || *known != key)
		bpf_map_update_elem(&ssl_socks, &skey, &key, BPF_ANY);
	if (conn) {
		conn->tls = 1;
		conn->ssl = ssl;
		return;
	}
	/* a socket from before the probes: tracked now, so that its close is reported */
	task_ids(cur, &info);
	fill_tuple(&info.tuple, sk);
	bpf_map_update_elem(&conns, &key, &info, BPF_ANY);
}

/* Emit one EVENT_DATA for `moved` bytes on sk; payload from stash when it is sk's.
 * Nothing for TLS sockets: their plaintext comes from the uprobes. */
static __always_inline void emit_data(struct sock *sk, __u8 dir, int moved,
				      const struct buf_stash *st, const struct cur_task *cur)
{
	struct conn_info ids = {};
	__u64 key = (__u64)sk;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
	struct ssl_call *call = bpf_map_lookup_elem(&ssl_calls, &tid);
	struct data_event *e;

	if (call) {
		tie_tls(sk, call->ssl, conn, cur);
		return;
	}
	if (conn && conn->tls)
		return;
	task_ids(cur, &ids);
	e = new_event(EVENT_DATA, sk, &ids);
	if (!e)
		return;
	e->hdr.role = conn ? conn->role : ROLE_UNKNOWN;
	fill_tuple(&e->hdr.tuple, sk);
	e->hdr.direction = dir;
	e->hdr.bytes = moved;
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));
	if (st->sk == key)
		read_payload(e, st->buf, st->len, moved);
	submit(e);
}

/* Take (copy and delete) the current thread's stash from map; zeroed if none. */
static __always_inline void take_stash(void *map, __u32 tid, struct buf_stash *out)
{
	struct buf_stash *st = bpf_map_lookup_elem(map, &tid);

	if (!st)
		return;
	*out = *st;
	bpf_map_delete_elem(map, &tid);
}

/* ---- connections ---------------------------------------------------------- */

static __always_inline int on_accept_exit(long ret)
{
	struct cur_task cur;
	struct sock *sk;

	if (!current_selected(&cur) || ret < 0)
		return 0;
	sk = fd_to_tcp_sock(ret);
	if (sk)
		track_conn(sk, ROLE_SERVER, &cur);
	return 0;
}

SEC("tp/syscalls/sys_exit_accept4")
int beyla_accept4_x(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tp/syscalls/sys_exit_accept")
int beyla_accept_x(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tp/syscalls/sys_enter_connect")
int beyla_connect_e(struct trace_event_raw_sys_enter *ctx)
{
	struct cur_task cur;
	__u32 tid;
	__s32 fd;

	if (!current_selected(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	fd = ctx->args[0];
	bpf_map_update_elem(&connect_fds, &tid, &fd, BPF_ANY);
	return 0;
}

/* The local port is bound by now, also for a non-blocking connect (-EINPROGRESS). */
SEC("tp/syscalls/sys_exit_connect")
int beyla_connect_x(struct trace_event_raw_sys_exit *ctx)
{
	struct cur_task cur;
	struct sock *sk;
	__s32 *fdp, fd;
	__u32 tid;

	if (!current_selected(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	fdp = bpf_map_lookup_elem(&connect_fds, &tid);
	if (!fdp)
		return 0;
	fd = *fdp;
	bpf_map_delete_elem(&connect_fds, &tid);
	if (ctx->ret != 0 && ctx->ret != -EINPROGRESS)
		return 0;
	sk = fd_to_tcp_sock(fd);
	if (sk)
		track_conn(sk, ROLE_CLIENT, &cur);
	return 0;
}

/* May run in softirq (e.g. after a RST or the FIN timeout): `current` is not
 * the owner, so only the opener stored in conns is reported. */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(beyla_destroy, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct conn_info *conn = bpf_map_lookup_elem(&conns, &key);
	struct data_event *e;

	if (!conn)
		return 0;
	if (conn->tls) {
		struct ssl_key skey = { .tgid = conn->pid, .ssl = conn->ssl };

		bpf_map_delete_elem(&ssl_socks, &skey);
	}
	e = new_event(EVENT_CONN_CLOSE, sk, conn);
	if (e) {
		e->hdr.role = conn->role;
		e->hdr.tuple = conn->tuple;
		submit(e);
	}
	bpf_map_delete_elem(&conns, &key);
	return 0;
}

/* ---- processes ------------------------------------------------------------ */

/* Report a lifecycle event of the current process (ids and comm only). */
static __always_inline void process_event(__u8 type, const struct cur_task *cur)
{
	struct conn_info ids = {};
	struct data_event *e;

	task_ids(cur, &ids);
	e = new_event(type, NULL, &ids);
	if (!e)
		return;
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));
	submit(e);
}

/* The selection is user space's decision for the new executable: until it is
 * made, the process reports nothing. */
SEC("tp/sched/sched_process_exec")
int beyla_exec(void *ctx)
{
	struct cur_task cur;
	__u32 tgid;

	if (!current_filtered(&cur))
		return 0;
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		bpf_map_delete_elem(&allowed_pids, &tgid);
	}
	process_event(EVENT_PROCESS_EXEC, &cur);
	return 0;
}

/* Runs in the parent. A forked child runs the parent's executable: it inherits
 * the parent's selection at once, before user space hears of it. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(beyla_fork, struct task_struct *parent, struct task_struct *child)
{
	struct conn_info ids = {};
	struct cur_task cur;
	struct data_event *e;
	struct pid *pid;
	__u32 level, tgid;
	__u8 one = 1;

	if (!current_filtered(&cur))
		return 0;
	/* threads are clones too: only a new thread group is a new process */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	pid = BPF_CORE_READ(child, thread_pid);
	level = BPF_CORE_READ(pid, level);
	if (level != cur.level)
		return 0; /* CLONE_NEWPID: the child is in a namespace of its own, not the pod's */
	ids.pid = ids.tid = BPF_CORE_READ(child, tgid);
	ids.ns_pid = ids.ns_tid = BPF_CORE_READ(pid, numbers[level].nr);
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		if (bpf_map_lookup_elem(&allowed_pids, &tgid))
			bpf_map_update_elem(&allowed_pids, &ids.ns_pid, &one, BPF_ANY);
	}
	e = new_event(EVENT_PROCESS_FORK, NULL, &ids);
	if (!e)
		return 0;
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm)); /* the child's, copied from the parent */
	submit(e);
	return 0;
}

/* Per thread: a thread that dies inside a syscall or an SSL_* call leaves its
 * stashes behind. The last thread of a process reports the process's exit. */
SEC("tp/sched/sched_process_exit")
int beyla_task_exit(void *ctx)
{
	struct task_struct *task;
	struct cur_task cur;
	__u32 tid, tgid;

	if (!current_filtered(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&connect_fds, &tid);
	bpf_map_delete_elem(&send_bufs, &tid);
	bpf_map_delete_elem(&recv_bufs, &tid);
	bpf_map_delete_elem(&ssl_calls, &tid);
	/* do_exit() decrements signal->live before this tracepoint: 0 for the last thread */
	task = cur.task;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		bpf_map_delete_elem(&allowed_pids, &tgid);
	}
	process_event(EVENT_PROCESS_EXIT, &cur);
	return 0;
}

/* The dynamic loader maps a library's code with PROT_EXEC from an fd (also at
 * dlopen() long after exec): discover/ then looks for TLS libraries to probe. */
SEC("tp/syscalls/sys_enter_mmap")
int beyla_mmap_e(struct trace_event_raw_sys_enter *ctx)
{
	struct cur_task cur;

	if (!current_filtered(&cur))
		return 0;
	if ((ctx->args[2] & PROT_EXEC) && (__s32)ctx->args[4] >= 0)
		process_event(EVENT_PROCESS_MMAP, &cur);
	return 0;
}

/* A new open port can make a process match BEYLA_OPEN_PORT. */
SEC("tp/syscalls/sys_exit_listen")
int beyla_listen_x(struct trace_event_raw_sys_exit *ctx)
{
	struct cur_task cur;

	if (!current_filtered(&cur))
		return 0;
	if (ctx->ret == 0)
		process_event(EVENT_PROCESS_LISTEN, &cur);
	return 0;
}

/* ---- send ----------------------------------------------------------------- */

/* User buffer at the iterator's current position, or buf = 0 for kernel-backed
 * iterators (BVEC from sendfile/splice, KVEC). */
static __always_inline void iter_user_buffer(const struct msghdr *msg, struct buf_stash *st)
{
	/* enum iter_type was reordered across kernels: compare relocated values */
	__u8 type = BPF_CORE_READ(msg, msg_iter.iter_type);
	__u64 off = BPF_CORE_READ(msg, msg_iter.iov_offset);
	__u64 left = BPF_CORE_READ(msg, msg_iter.count);
	const struct iovec *iov;
	__u64 iov_len;

	if (type == bpf_core_enum_value(enum iter_type, ITER_UBUF)) {
		st->buf = (__u64)BPF_CORE_READ(msg, msg_iter.ubuf) + off;
		st->len = left;
	} else if (type == bpf_core_enum_value(enum iter_type, ITER_IOVEC)) {
		/* the iovec array was copied into the kernel by the syscall */
		iov = BPF_CORE_READ(msg, msg_iter.__iov);
		iov_len = BPF_CORE_READ(iov, iov_len);
		if (iov_len <= off)
			return;
		st->buf = (__u64)BPF_CORE_READ(iov, iov_base) + off;
		st->len = iov_len - off < left ? iov_len - off : left;
	}
}

/* Fires once per loop iteration of tcp_sendmsg_locked, the iterator advancing
 * each time: only the first firing of a syscall points at the start. */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(beyla_tcp_send, const struct sock *sk, const struct msghdr *msg,
	     const struct sk_buff *skb, int size_goal)
{
	struct buf_stash st = { .sk = (__u64)sk };
	struct cur_task cur;
	__u32 tid;

	if (!current_selected(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	/* Look up rather than update with BPF_NOEXIST: on an LRU map the update
	 * takes a free node (possibly evicting another thread's stash) before it
	 * checks for the existing key. */
	if (bpf_map_lookup_elem(&send_bufs, &tid))
		return 0;
	iter_user_buffer(msg, &st);
	bpf_map_update_elem(&send_bufs, &tid, &st, BPF_ANY);
	return 0;
}

/* After every sendmsg on any socket, with the bytes really sent. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(beyla_send_len, struct sock *sk, int ret, int flags)
{
	struct buf_stash st = {};
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	take_stash(&send_bufs, (__u32)bpf_get_current_pid_tgid(), &st);
	if (ret > 0 && is_tcp(sk))
		emit_data(sk, DIR_SEND, ret, &st, &cur);
	return 0;
}

/* ---- receive -------------------------------------------------------------- */

/* Remember buf for the receive about to happen on fd, when fd is a TCP socket:
 * resolving it here keeps stashes off files and pipes and names the socket. */
static __always_inline void stash_recv(long fd, __u64 buf, __u64 len)
{
	struct buf_stash st = { .buf = buf, .len = len };
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	st.sk = (__u64)fd_to_tcp_sock(fd);
	if (st.sk)
		bpf_map_update_elem(&recv_bufs, &tid, &st, BPF_ANY);
}

/* First element of a user iovec array. */
static __always_inline void stash_recv_iov(long fd, const struct iovec *uiov, __u64 cnt)
{
	struct iovec iov;

	if (cnt < 1 || bpf_probe_read_user(&iov, sizeof(iov), uiov))
		return;
	stash_recv(fd, (__u64)iov.iov_base, iov.iov_len);
}

SEC("tp/syscalls/sys_enter_read")
int beyla_read_e(struct trace_event_raw_sys_enter *ctx)
{
	struct cur_task cur;

	if (current_selected(&cur))
		stash_recv(ctx->args[0], ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tp/syscalls/sys_enter_recvfrom")
int beyla_recvfrm_e(struct trace_event_raw_sys_enter *ctx)
{
	struct cur_task cur;

	if (current_selected(&cur))
		stash_recv(ctx->args[0], ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tp/syscalls/sys_enter_readv")
int beyla_readv_e(struct trace_event_raw_sys_enter *ctx)
{
	struct cur_task cur;

	if (current_selected(&cur))
		stash_recv_iov(ctx->args[0], (const struct iovec *)ctx->args[1], ctx->args[2]);
	return 0;
}

SEC("tp/syscalls/sys_enter_recvmsg")
int beyla_recvmsg_e(struct trace_event_raw_sys_enter *ctx)
{
	struct user_msghdr *umsg = (struct user_msghdr *)ctx->args[1];
	struct iovec *uiov;
	__u64 cnt;
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	/* the msghdr is still in user memory at syscall entry */
	if (bpf_probe_read_user(&uiov, sizeof(uiov), &umsg->msg_iov) ||
	    bpf_probe_read_user(&cnt, sizeof(cnt), &umsg->msg_iovlen))
		return 0;
	stash_recv_iov(ctx->args[0], uiov, cnt);
	return 0;
}

/* After every recvmsg on any socket, with the bytes really received. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(beyla_recv_len, struct sock *sk, int ret, int flags)
{
	struct buf_stash st = {};
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	take_stash(&recv_bufs, (__u32)bpf_get_current_pid_tgid(), &st);
	/* a peek leaves the data queued: the real read reports it */
	if (ret > 0 && !(flags & MSG_PEEK) && is_tcp(sk))
		emit_data(sk, DIR_RECV, ret, &st, &cur);
	return 0;
}

/* ---- TLS: OpenSSL, shared or linked statically ------------------------------
 * Attached by user space (discover/) to each library file that has the symbols,
 * for every process mapping it; selection and namespace are checked here.
 * BPF_KPROBE/BPF_KRETPROBE: the same pt_regs argument access serves uprobes
 * (libbpf 1.1 has no BPF_UPROBE spelling). */

/* Entry of an SSL_* call: remember it for the socket probes and the return. */
static __always_inline int ssl_enter(__u64 ssl, __u64 buf, __u64 out, __u8 op)
{
	struct ssl_call call = { .ssl = ssl, .buf = buf, .out = out, .op = op };
	struct cur_task cur;
	__u32 tid;

	if (!current_selected(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&ssl_calls, &tid, &call, BPF_ANY);
	return 0;
}

/* Plaintext of a finished read/write as EVENT_DATA on the session's socket: same
 * sock_id, role and tuple as the socket probes would give, plus FLAG_TLS. */
static __always_inline void emit_tls(const struct ssl_call *call, __u32 moved,
				     const struct cur_task *cur)
{
	struct ssl_key skey = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = call->ssl };
	__u64 *sk = bpf_map_lookup_elem(&ssl_socks, &skey);
	/* no socket I/O seen for this session (e.g. a memory BIO): the SSL* stands
	 * for the connection; a user address never equals a struct sock's */
	__u64 sock_id = sk ? *sk : call->ssl;
	struct conn_info *conn = sk ? bpf_map_lookup_elem(&conns, sk) : NULL;
	struct conn_info ids = {};
	struct data_event *e;

	task_ids(cur, &ids);
	e = new_event(EVENT_DATA, (const struct sock *)sock_id, &ids);
	if (!e)
		return;
	e->hdr.flags = FLAG_TLS;
	e->hdr.direction = call->op == SSL_OP_READ ? DIR_RECV : DIR_SEND;
	e->hdr.bytes = moved;
	if (conn) {
		e->hdr.role = conn->role;
		e->hdr.tuple = conn->tuple;
	}
	bpf_get_current_comm(e->hdr.comm, sizeof(e->hdr.comm));
	read_payload(e, call->buf, moved, moved);
	submit(e);
}

SEC("uprobe")
int BPF_KPROBE(beyla_ssl_hs_e, void *ssl)
{
	return ssl_enter((__u64)ssl, 0, 0, SSL_OP_HANDSHAKE);
}

/* int SSL_read(SSL *ssl, void *buf, int num): returns the bytes read */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_rd_e, void *ssl, void *buf)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, SSL_OP_READ);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): returns 1 */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_rdx_e, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)readbytes, SSL_OP_READ);
}

/* int SSL_write(SSL *ssl, const void *buf, int num): returns the bytes written */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_wr_e, void *ssl, const void *buf)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, SSL_OP_WRITE);
}

/* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written): returns 1 */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_wrx_e, void *ssl, const void *buf, size_t num, size_t *written)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)written, SSL_OP_WRITE);
}

/* Return of any of the above. */
SEC("uretprobe")
int BPF_KRETPROBE(beyla_ssl_ret, int ret)
{
	struct ssl_call *found, call;
	struct cur_task cur;
	__u64 moved;
	__u32 tid;

	if (!current_selected(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	found = bpf_map_lookup_elem(&ssl_calls, &tid);
	if (!found)
		return 0;
	call = *found;
	bpf_map_delete_elem(&ssl_calls, &tid);
	if (call.op == SSL_OP_HANDSHAKE || ret <= 0)
		return 0;
	moved = ret;
	if (call.out && bpf_probe_read_user(&moved, sizeof(moved), (const void *)call.out))
		return 0;
	if (moved > 0 && moved <= 0x7fffffff)
		emit_tls(&call, moved, &cur);
	return 0;
}
