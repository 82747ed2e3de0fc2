/* Connections: the per-socket state (identity resolved once, the exchange in progress),
 * listening ports (which decide the server role), and close. */
#ifndef __BEYLA_CONN_H
#define __BEYLA_CONN_H

#include "gate.h"
#include "connstate.h"

#define MAX_LISTEN_PORTS 4096

/* The user buffers holding one transfer's bytes: the first at buf, then, for readv/writev/
 * recvmsg/sendmsg, the rest of the iovec array (read only for HTTP/2 framing). */
struct xfer {
	__u64 buf;      /* user address; 0: none (sendfile, splice, unknown syscall) */
	__u64 avail;    /* readable bytes at buf */
	__u64 iov;      /* user address of the next struct iovec; 0: none */
	__u64 iov_left; /* iovecs from there */
};

/* A listening TCP port of one network namespace. */
struct listen_key {
	__u32 netns; /* inode of the network namespace */
	__u16 port;  /* host byte order */
	__u16 _pad;
};

/* struct sock address -> req_start_ns of its exchange in progress, which user space has ended
 * already (found idle in conns, reported): the kernel does not send it again, so a full ring
 * cannot count it lost. Written by user space; an entry goes when its exchange ends. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, __u64);
} swept SEC(".maps");

/* Set when a response begins; user space clears it before each walk of conns for quiet
 * exchanges and walks only when it was set, when a response the last walk found under way can
 * have gone quiet, or every 5 s: an idle pod's sidecar does not walk the map's buckets four
 * times a second. Tested before it is written: the responses of every CPU would otherwise
 * write one cache line. */
__u32 responses_begun = 0;
/* Set by user space while it waits longer than its sweep period (an idle pod): the response
 * that sets responses_begun then wakes it, for its exchange to be ended within a second. */
__u32 reader_asleep = 0;

/* Never written: the zeroed value a new conns entry starts from (too big for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_state);
} conn_zero SEC(".maps");

/* Listening ports of the pod's network namespaces; seeded by user space from
 * /proc/net/tcp{,6} at start, then kept by inet_sock_set_state. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_LISTEN_PORTS);
	__type(key, struct listen_key);
	__type(value, __u8);
} listen_ports SEC(".maps");

/* A zeroed `pending` value to create entries from: it is too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pending);
} pending_blank SEC(".maps");

/* TCP over IPv4/IPv6 only: unix, UDP, MPTCP sockets are not ours. sk is a BTF pointer
 * (tp_btf argument): direct loads, no probe reads. */
static __always_inline bool is_tcp(const struct sock *sk)
{
	__u16 family;

	if (!sk || sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM)
		return false;
	family = sk->__sk_common.skc_family;
	return family == AF_INET || family == AF_INET6;
}

static __always_inline void fill_tuple(struct conn_tuple *t, const struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;

	t->family = family;
	t->sport = sk->__sk_common.skc_num; /* host order already */
	t->dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (family == AF_INET6) {
		bpf_core_read(t->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(t->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	} else {
		bpf_core_read(t->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(t->daddr, 4, &sk->__sk_common.skc_daddr);
	}
}

static __always_inline void listen_key_of(const struct sock *sk, struct listen_key *key)
{
	key->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	key->port = BPF_CORE_READ(sk, __sk_common.skc_num);
}

/* Role of a socket seen for the first time: accepted sockets keep the listener's
 * local port, which no connecting socket of the same namespace can have. */
static __always_inline __u8 socket_role(const struct sock *sk)
{
	struct listen_key key = {};

	listen_key_of(sk, &key);
	return bpf_map_lookup_elem(&listen_ports, &key) ? ROLE_SERVER : ROLE_CLIENT;
}

/* State of a connection seen for the first time (sk may be NULL for a socket-less TLS
 * session): identity resolved here, once, and reported in an EVENT_CONN_OPEN. */
static __always_inline struct conn_state *conn_new(__u64 key, const struct sock *sk, __u8 role,
						   __u8 tls, const struct cur_task *cur)
{
	struct conn_event *e;
	struct conn_state *st;
	__u32 zero = 0;
	void *blank = bpf_map_lookup_elem(&conn_zero, &zero);

	if (!blank || bpf_map_update_elem(&conns, &key, blank, BPF_NOEXIST))
		return NULL;
	st = bpf_map_lookup_elem(&conns, &key);
	if (!st)
		return NULL;
	e = &st->open; /* built in place: it stays for a send the ring refuses */
	e->type = EVENT_CONN_OPEN;
	e->role = role;
	e->sock_id = key;
	e->ts_ns = bpf_ktime_get_ns();
	e->flags = (tls ? FLAG_TLS : 0) | (cur->pending ? FLAG_PENDING : 0);
	task_ids(cur, e);
	if (sk)
		fill_tuple(&e->tuple, sk);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	st->tls = tls;
	st->rec.type = EVENT_EXCHANGE;
	st->rec.role = role;
	st->rec.pid = e->pid;
	st->rec.ns_pid = e->ns_pid;
	st->rec.sock_id = key;
	/* not a loss yet: announce() tries again with the connection's first exchange */
	st->announced = submit(e, sizeof(*e), COUNTER_NONE);
	return st;
}

/* Before one of the connection's records: its CONN_OPEN, if the ring refused it so far. */
static __always_inline bool announce(struct conn_state *st)
{
	if (!st->announced)
		st->announced = submit(&st->open, sizeof(st->open), COUNTER_NONE);
	return st->announced;
}

/* A server request read by thread `tid`: it waits for a call of the thread to claim it. */
static __always_inline void queue_request(__u32 tid, const struct parent_ref *ref)
{
	struct pending *p = bpf_map_lookup_elem(&pending, &tid);
	__u32 zero = 0;

	if (!p) {
		struct pending *blank = bpf_map_lookup_elem(&pending_blank, &zero);

		if (!blank)
			return;
		bpf_map_update_elem(&pending, &tid, blank, BPF_NOEXIST);
		p = bpf_map_lookup_elem(&pending, &tid);
		if (!p)
			return;
	}
	if (p->count >= PENDING_MAX) { /* full: the oldest goes */
		p->head++;
		p->count--;
	}
	p->refs[(p->head + p->count) % PENDING_MAX] = *ref;
	p->count++;
}

/* The parent of a client request `tid` begins: the oldest request the thread read and no call
 * claimed (it becomes the one served), else the one it serves while that is unanswered. */
static __always_inline struct parent_ref *claim_request(__u32 tid)
{
	struct pending *p = bpf_map_lookup_elem(&pending, &tid);
	struct parent_ref *oldest = p ? pending_oldest(p) : NULL;
	struct parent_ref claimed;

	if (!oldest)
		return served_request(tid);
	claimed = *oldest;
	oldest->sock_id = 0;
	bpf_map_update_elem(&serving, &tid, &claimed, BPF_ANY);
	return bpf_map_lookup_elem(&serving, &tid);
}

/* The connection's state goes: a CONN_OPEN that never went out is lost for good. */
static __always_inline void conn_forget(struct conn_state *st, __u64 key)
{
	if (!st->announced)
		count(COUNTER_EVENT_DROPS);
	bpf_map_delete_elem(&conns, &key);
}

/* Listening ports come and go; a new one is also news for discover/ (BEYLA_OPEN_PORT).
 * TCP_LISTEN is entered in listen()'s process context; other transitions may run in
 * softirq, where `current` is unrelated: they only delete by key. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(beyla_sk_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct listen_key key = {};
	struct cur_task cur;
	__u8 one = 1;

	if (newstate == TCP_LISTEN) {
		if (!current_filtered(&cur))
			return 0;
		listen_key_of(sk, &key);
		bpf_map_update_elem(&listen_ports, &key, &one, BPF_ANY);
		task_event(EVENT_PROCESS_LISTEN, &cur, false);
	} else if (newstate == TCP_SYN_SENT) {
		/* connect() runs this in the connecting thread's context */
		struct parent_ref *parent;
		__u64 sock = (__u64)sk;

		if (!current_filtered(&cur))
			return 0;
		parent = claim_request((__u32)bpf_get_current_pid_tgid());
		if (parent)
			bpf_map_update_elem(&connect_parents, &sock, parent, BPF_ANY);
	} else if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		/* not LISTEN -> SYN_RECV: that is a new child socket cloned from the listener */
		listen_key_of(sk, &key);
		bpf_map_delete_elem(&listen_ports, &key);
	}
	return 0;
}

#endif /* __BEYLA_CONN_H */
