// SPDX-License-Identifier: GPL-2.0
/* TCP health of the pod per destination: connection attempts that failed (by reason), resets
 * sent and received, retransmitted segments, and each connection's smoothed RTT at its close.
 *
 * The hooks are TCP tracepoints (kprobes and fentry are not available everywhere); they fire for
 * every socket of the node, so each program first drops what is not of the pod's network
 * namespace: the socket's netns inode against `netns_ino`, the sidecar's own (it shares the
 * pod's). Socket fields are read with CO-RE. What remains is added to its destination in
 * `tcp_dests` (tcphealth.h), which user space drains with batch lookup-and-delete every
 * BEYLA_NETWORK_FLUSH_INTERVAL (beyla_sidecar/bpf/tcphealth.py).
 *
 *   inet_sock_set_state   X -> CLOSE only: SYN_SENT -> CLOSE is a failed attempt (reason from
 *                         sk_err, set before the state changes, else from an ICMP error the
 *                         packet filter saw answer it: tcpfail.h); any other state that had
 *                         been established gives one RTT sample (srtt_us at the close)
 *   tcp_receive_reset     an RST accepted by a socket (SYN_SENT: the refusal itself)
 *   tcp_send_reset        an RST sent: active (abort, SO_LINGER 0: sk, no skb) or in answer to
 *                         a segment (skb; sk may be a listener, a request or TIME_WAIT socket,
 *                         or NULL when no socket matched, e.g. a SYN to a closed port)
 *   tcp_retransmit_skb    retransmitted segments that went out
 *   tcp_retransmit_synack SYN-ACKs of half-open inbound connections sent again
 *
 * A destination is (pod address, peer address, server port): the client's ephemeral port is
 * zeroed when the socket's role is known, so that many connections make one entry. Role: a
 * socket accepted from a listener keeps the listener's sk_max_ack_backlog (listen()'s backlog,
 * copied when the kernel clones the listener) and is the server side; a connect()ed socket never
 * listened, its backlog is 0: the client side.
 * Connections within the pod (loopback, or to its own address) are left out. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "tcphealth.h"

/* uapi constants that vmlinux.h (types only) does not carry */
#define AF_INET6 10
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define TCPHDR_SYN 0x02
#define TCPHDR_ACK 0x10

/* Knobs set by user space before load. */
const volatile __u32 netns_ino = 0;                   /* inode of the pod's network namespace */
const volatile __u32 rtt_bounds_us[RTT_BOUNDS] = {}; /* ascending bucket bounds */

/* Recent kernels gave tcp_retransmit_skb a third argument, err (it then fires for failed
 * attempts too); the field of its trace event tells whether the running kernel has it. */
struct trace_event_raw_tcp_retransmit_skb___err {
	int err;
} __attribute__((preserve_access_index));

static __always_inline void count(__u32 which)
{
	__u64 *c = bpf_map_lookup_elem(&tcphealth_counters, &which);

	if (c)
		*c += 1; /* per-CPU: no atomics */
}

/* tp_btf programs: sk is a BTF pointer, read directly (a load, no helper call: this test runs
 * for sockets of the whole node). */
static __always_inline __u32 netns_of(const struct sock *sk)
{
	return sk->__sk_common.skc_net.net->ns.inum;
}

/* raw_tp: sk is a plain number, read through probe reads. */
static __always_inline __u32 netns_probed(const struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

static __always_inline void map_v4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* The client's port goes: it differs per connection and says nothing of the destination. */
static __always_inline void set_ports(struct tcph_key *k, __u16 lport, __u16 rport, __u8 role)
{
	k->role = role;
	k->lport = role == TCP_ROLE_CLIENT ? 0 : lport;
	k->rport = role == TCP_ROLE_SERVER ? 0 : rport;
}

/* Full sockets only (request and TIME_WAIT sockets have no sk_max_ack_backlog). */
static __always_inline __u8 full_sock_role(const struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_max_ack_backlog) ? TCP_ROLE_SERVER : TCP_ROLE_CLIENT;
}

/* The local port. A full socket in CLOSE has given it back (inet_put_port zeroes skc_num),
 * but still has it in inet_sport; request sockets have only skc_num. */
static __always_inline __u16 local_port(const struct sock *sk)
{
	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);

	return port ? port : bpf_ntohs(BPF_CORE_READ((struct inet_sock *)sk, inet_sport));
}

/* A full or request socket: the addresses are in sock_common. */
static __always_inline void key_from_sock(struct tcph_key *k, const struct sock *sk, __u8 role)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&k->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&k->raddr, sk, __sk_common.skc_v6_daddr);
	} else {
		map_v4(k->laddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		map_v4(k->raddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	}
	set_ports(k, local_port(sk), bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport)), role);
}

/* The segment an RST answers, reversed: it came in, so its destination is the pod. Returns
 * false when its headers cannot be read. */
static __always_inline bool key_from_skb(struct tcph_key *k, const struct sk_buff *skb, bool *syn,
					 __u16 *lport, __u16 *rport)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	unsigned char *nh = head + BPF_CORE_READ(skb, network_header);
	unsigned char *th = head + BPF_CORE_READ(skb, transport_header);
	__be16 ports[2];
	__u8 version, flags;

	if (bpf_probe_read_kernel(&version, 1, nh))
		return false;
	if (version >> 4 == 4) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), nh))
			return false;
		map_v4(k->laddr, ip.daddr);
		map_v4(k->raddr, ip.saddr);
	} else if (version >> 4 == 6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), nh))
			return false;
		__builtin_memcpy(k->laddr, &ip6.daddr, 16);
		__builtin_memcpy(k->raddr, &ip6.saddr, 16);
	} else {
		return false;
	}
	/* flags: byte 13 of the TCP header */
	if (bpf_probe_read_kernel(ports, sizeof(ports), th) || bpf_probe_read_kernel(&flags, 1, th + 13))
		return false;
	*rport = bpf_ntohs(ports[0]);
	*lport = bpf_ntohs(ports[1]);
	*syn = (flags & (TCPHDR_SYN | TCPHDR_ACK)) == TCPHDR_SYN;
	return true;
}

/* A connection within the pod: to 127.0.0.0/8, ::1, or its own address (both ends are the
 * pod's, each would count it; the flow metrics leave loopback out too). */
static __always_inline bool within_pod(const struct tcph_key *k)
{
	static const __u8 v4_loopback[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	static const __u8 v6_loopback[16] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };

	if (!__builtin_memcmp(k->raddr, k->laddr, 16) || !__builtin_memcmp(k->raddr, v6_loopback, 16))
		return true;
	return !__builtin_memcmp(k->raddr, v4_loopback, 12) && k->raddr[12] == 127;
}

/* The destination's entry, created zeroed if new; NULL when the connection is within the pod,
 * or (counted) when the map is full. */
static __always_inline struct tcph_dest *dest_of(const struct tcph_key *key)
{
	struct tcph_dest fresh = { .rtt_min_us = ~0U };
	struct tcph_dest *d;

	if (within_pod(key))
		return NULL;
	d = bpf_map_lookup_elem(&tcp_dests, key);
	if (d)
		return d;
	/* BPF_NOEXIST: when another CPU created it meanwhile, the lookup below finds theirs */
	bpf_map_update_elem(&tcp_dests, key, &fresh, BPF_NOEXIST);
	d = bpf_map_lookup_elem(&tcp_dests, key);
	if (!d)
		count(TCP_CNT_MAP_FULL);
	return d;
}

static __always_inline __u32 rtt_bucket(__u32 us)
{
	__u32 i;

	for (i = 0; i < RTT_BOUNDS; i++)
		if (us <= rtt_bounds_us[i])
			break;
	return i;
}

/* Lower (or raise) *p to v. Another CPU may change it between the read and the exchange (two
 * connections to the destination closing at once): then again, with what it wrote. */
static __always_inline void store_min(__u32 *p, __u32 v)
{
	__u32 seen, old = *p;

	for (int i = 0; i < 8 && v < old; i++) {
		seen = __sync_val_compare_and_swap(p, old, v);
		if (seen == old)
			break;
		old = seen;
	}
}

static __always_inline void store_max(__u32 *p, __u32 v)
{
	__u32 seen, old = *p;

	for (int i = 0; i < 8 && v > old; i++) {
		seen = __sync_val_compare_and_swap(p, old, v);
		if (seen == old)
			break;
		old = seen;
	}
}

static __always_inline void add_rtt(const struct tcph_key *key, __u32 us)
{
	struct tcph_dest *d = dest_of(key);
	__u32 b = rtt_bucket(us);

	/* the verifier cannot tell that the loop's exit bounds b: say it */
	if (!d || b >= RTT_BUCKETS)
		return;
	__sync_fetch_and_add(&d->rtt_buckets[b], 1);
	__sync_fetch_and_add(&d->rtt_sum_us, us);
	store_min(&d->rtt_min_us, us);
	store_max(&d->rtt_max_us, us);
}

/* Why the attempt on sk failed: its error, else an ICMP error that answered its SYN while the
 * application held the socket (see tcpfail.h), else no answer came. */
static __always_inline __u32 failure(const struct sock *sk, const struct tcph_key *key)
{
	int err = BPF_CORE_READ(sk, sk_err);
	struct icmp_fail_key k = {};
	__u32 *found, reason;

	if (err == ECONNREFUSED)
		return TCP_FAIL_REFUSED;
	if (err && err != ETIMEDOUT)
		return TCP_FAIL_UNREACHABLE;
	if (err)
		return TCP_FAIL_TIMEOUT;
	__builtin_memcpy(k.laddr, key->laddr, 16);
	__builtin_memcpy(k.raddr, key->raddr, 16);
	k.lport = local_port(sk); /* the key has none: a client's */
	k.rport = key->rport;
	found = bpf_map_lookup_elem(&icmp_failures, &k);
	if (!found)
		return TCP_FAIL_TIMEOUT;
	reason = *found;
	bpf_map_delete_elem(&icmp_failures, &k);
	return reason;
}

/* Every state change of every TCP socket of the node comes here: the cheapest test first (most
 * are not to CLOSE), then the protocol (MPTCP's own sockets use the same tracepoint) and the
 * namespace. May run in softirq: nothing here depends on the current task. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcphealth_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct tcph_key key = {};
	struct tcph_dest *d;
	__u32 srtt, reason;

	if (newstate != TCP_CLOSE || sk->sk_protocol != IPPROTO_TCP || netns_of(sk) != netns_ino)
		return 0;
	if (oldstate == TCP_SYN_SENT) {
		key_from_sock(&key, sk, TCP_ROLE_CLIENT);
		d = dest_of(&key);
		if (!d)
			return 0;
		reason = failure(sk, &key);
		/* reason may come from a map: any number to the verifier, so bound it before indexing */
		if (reason < TCP_FAILURES)
			__sync_fetch_and_add(&d->failed[reason], 1);
		return 0;
	}
	/* never established: a listener, a half-open child, a socket closed twice */
	if (oldstate == TCP_LISTEN || oldstate == TCP_SYN_RECV || oldstate == TCP_CLOSE)
		return 0;
	/* srtt_us is 8 times the smoothed RTT; 0 when the connection never had a sample */
	srtt = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
	if (!srtt)
		return 0;
	key_from_sock(&key, sk, full_sock_role(sk));
	add_rtt(&key, srtt);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tcphealth_receive_reset, struct sock *sk)
{
	struct tcph_key key = {};
	struct tcph_dest *d;

	if (netns_of(sk) != netns_ino)
		return 0;
	key_from_sock(&key, sk, full_sock_role(sk));
	d = dest_of(&key);
	if (d)
		__sync_fetch_and_add(&d->resets_received, 1);
	return 0;
}

/* raw_tp, not tp_btf: sk and skb may each be NULL here, and some kernels take tp_btf arguments
 * for trusted, never-NULL pointers, so that the verifier prunes the NULL checks away. Raw
 * arguments are plain numbers: the checks stay, and every read is a probe read. */
SEC("raw_tp/tcp_send_reset")
int BPF_PROG(tcphealth_send_reset, const struct sock *sk, const struct sk_buff *skb)
{
	struct tcph_key key = {};
	struct tcph_dest *d;
	__u16 lport, rport;
	bool syn = false;
	__u8 role, state;

	if (!sk && !skb)
		return 0;
	if ((sk ? netns_probed(sk) : BPF_CORE_READ(skb, dev, nd_net.net, ns.inum)) != netns_ino)
		return 0;
	if (!skb) { /* an active reset: the socket's own connection */
		key_from_sock(&key, sk, full_sock_role(sk));
	} else if (key_from_skb(&key, skb, &syn, &lport, &rport)) {
		state = sk ? BPF_CORE_READ(sk, __sk_common.skc_state) : 0;
		if (!sk)
			role = syn ? TCP_ROLE_SERVER : TCP_ROLE_UNKNOWN; /* a SYN to a closed port */
		else if (state == TCP_LISTEN || state == TCP_NEW_SYN_RECV)
			role = TCP_ROLE_SERVER;
		else if (state == TCP_TIME_WAIT)
			role = TCP_ROLE_UNKNOWN;
		else
			role = full_sock_role(sk);
		set_ports(&key, lport, rport, role);
	} else {
		count(TCP_CNT_UNREADABLE);
		return 0;
	}
	d = dest_of(&key);
	if (d)
		__sync_fetch_and_add(&d->resets_sent, 1);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcphealth_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	struct tcph_key key = {};
	struct tcph_dest *d;
	__u16 segs;

	/* Only where the kernel has the argument: elsewhere CO-RE makes the condition a constant 0
	 * and the verifier never sees the read of a third argument that does not exist. */
	if (bpf_core_field_exists(struct trace_event_raw_tcp_retransmit_skb___err, err) && ctx[2] != 0)
		return 0;
	if (netns_of(sk) != netns_ino)
		return 0;
	/* tcp_skb_pcount(): the segments of a TSO packet, as TCP's RetransSegs counts them */
	segs = BPF_CORE_READ((struct tcp_skb_cb *)skb->cb, tcp_gso_segs);
	key_from_sock(&key, sk, full_sock_role(sk));
	d = dest_of(&key);
	if (d)
		__sync_fetch_and_add(&d->retransmits, segs ? segs : 1);
	return 0;
}

/* sk is the listener; the connection is the request socket's. */
SEC("tp_btf/tcp_retransmit_synack")
int BPF_PROG(tcphealth_retransmit_synack, const struct sock *sk, const struct request_sock *req)
{
	struct tcph_key key = {};
	struct tcph_dest *d;

	if (netns_of(sk) != netns_ino)
		return 0;
	key_from_sock(&key, (const struct sock *)req, TCP_ROLE_SERVER);
	d = dest_of(&key);
	if (d)
		__sync_fetch_and_add(&d->retransmits, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
