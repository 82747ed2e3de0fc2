// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/* Trace context propagation (BEYLA_BPF_CONTEXT_PROPAGATION): write the context of each
 * client request of the pod's processes into what leaves the pod, read it where it arrives.
 * Attached to the pod's cgroup (v2), so only the pod's sockets are touched.
 *
 *   beyla_ctx_sockops  sockops: puts the pod's connecting (client) sockets in `client_socks`
 *                      once established; tcp: writes the option on their packets, reads it
 *                      on accepted (server) sockets
 *   beyla_ctx_msg      sk_msg on `client_socks`: at the start of a request (the exchange
 *                      probes' state says the previous one was answered, or none was sent)
 *                      picks the ids; headers: inserts `traceparent` after the request line of
 *                      a plaintext HTTP/1.x request that has none
 *
 * Never touched: server sockets (responses), HTTP/2, TLS records, any message that does not
 * start with a complete `METHOD SP target SP HTTP/1.x CRLF`, a message sent while the
 * previous request is unanswered (its body, or pipelining), any piece of a send but its first
 * (the exchange probes mark the send's end), sends of processes the exchange probes do not
 * see (their sockets stay marked busy). Every skip on doubt is counted.
 * Shares sock_ctxs, sock_ids_map, conns and serving with beyla.bpf.o (propagate.h). Needs what
 * beyla.bpf.o needs (bpf_loop: 5.17+), and header-option callbacks, sk_storage and the current
 * task's ids in sk_msg (5.10+).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "beyla.h"
#include "propagate.h"

#define SK_PASS 1
/* Bytes of a message looked at: the request line must end within them. */
#define WINDOW 512
/* "traceparent: 00-" 32 hex "-" 16 hex "-01\r\n" */
#define TP_HEADER_LEN 70
/* Bytes of a message made one piece again after the insert (copied). */
#define LINEARIZE_MAX 16384
#define MAX_CLIENT_SOCKS 65536

/* Per-CPU counters (user space sums), enum ctx_counter. */
enum ctx_counter {
	CTX_INJECTED = 0,       /* traceparent header inserted */
	CTX_NOT_HTTP = 1,       /* a request start that is no plaintext HTTP/1.x request line */
	CTX_HAS_TRACEPARENT = 2, /* the request carries its own traceparent: left alone */
	CTX_DOUBT = 3,          /* request line or a header name cut by the window: left alone */
	CTX_FAILED = 4,         /* a helper failed (pull, push, storage): left alone */
	CTX_SOCKS_FULL = 5,     /* a client socket did not fit client_socks: never touched */
	CTX_OPT_WRITTEN = 6,    /* tcp: packets that carried the option */
	CTX_OPT_READ = 7,       /* tcp: options read on server sockets */
	CTX_MAX = 8,
};

/* cgroup v2 id of the sidecar's own container: its requests (OTLP export) are left alone. */
const volatile __u64 self_cgroup = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CTX_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ctx_counters SEC(".maps");

/* Established client sockets of the pod (key: socket cookie); a socket leaves on close. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_CLIENT_SOCKS);
	__type(key, __u64);
	__type(value, __u64);
} client_socks SEC(".maps");

/* The first bytes of the message (per CPU: too big for the stack). 16 zeroed bytes of slack
 * let a header-name compare read past the window's end. */
struct msg_window {
	__u8 b[WINDOW + 16];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct msg_window);
} windows SEC(".maps");

/* An index re-bounded where it is used (clang may otherwise recompute it from an unbounded
 * copy). */
static __always_inline __u32 win_index(__u32 v)
{
	barrier_var(v);
	return v & (WINDOW - 1);
}

static __always_inline void count(__u32 idx)
{
	__u64 *val = bpf_map_lookup_elem(&ctx_counters, &idx);

	if (val)
		(*val)++;
}

enum scan_state {
	ST_METHOD = 0,
	ST_TARGET = 1,
	ST_VERSION = 2,
	ST_HEADERS = 3,
	ST_DONE = 4,   /* head end seen, or a traceparent found */
	ST_FAILED = 5, /* not a request line */
};

struct msg_scan {
	struct msg_window *w;
	__u32 len;       /* bytes in the window */
	__u32 whole;     /* the window holds the whole message */
	__u32 state;     /* enum scan_state */
	__u32 mark;      /* start of the current request-line element */
	__u32 line_end;  /* offset just after the request line's CRLF */
	__u8 line_start; /* the next byte starts a header line */
	__u8 traceparent;
	__u8 cut;        /* a header line starts too near the window's end to be judged */
};

#define LOWER_8 0x2020202020202020ULL
#define LOWER_4 0x20202020U
#define TRACEPAR 0x7261706563617274ULL /* "tracepar", little-endian */
#define ENT_COLON 0x3a746e65U          /* "ent:" */

/* The "HTTP/1." of the request line's version. */
static const char http1[] = "HTTP/1.";

static __always_inline __u32 scan_version(struct msg_scan *s, __u32 i, __u8 c)
{
	__u32 k = i - s->mark;

	if (k < 7)
		return c == http1[k & 7] ? ST_VERSION : ST_FAILED;
	if (k == 7)
		return c >= '0' && c <= '9' ? ST_VERSION : ST_FAILED;
	if (k == 8)
		return c == '\r' ? ST_VERSION : ST_FAILED;
	if (c != '\n')
		return ST_FAILED;
	s->line_end = i + 1;
	s->line_start = 1;
	return ST_HEADERS;
}

/* A header line starts at i: the head ends, it is traceparent, or neither. */
static __always_inline __u32 scan_line_start(struct msg_scan *s, __u32 i, __u8 c)
{
	__u64 name8;
	__u32 name4;

	if (c == '\r' || c == '\n')
		return ST_DONE;
	if (i + 12 > s->len) {
		if (!s->whole)
			s->cut = 1; /* its name goes on beyond what we see */
		return ST_HEADERS;
	}
	i = win_index(i);
	__builtin_memcpy(&name8, &s->w->b[i], 8);
	__builtin_memcpy(&name4, &s->w->b[i + 8], 4);
	if ((name8 | LOWER_8) == TRACEPAR && (name4 | LOWER_4) == (ENT_COLON | LOWER_4) &&
	    s->w->b[i + 11] == ':') {
		s->traceparent = 1;
		return ST_DONE;
	}
	return ST_HEADERS;
}

/* bpf_loop callback: byte i of the window through the request-line / header automaton. */
static long scan_byte(__u32 i, void *data)
{
	struct msg_scan *s = data;
	__u8 c;

	if (i >= s->len || i >= WINDOW)
		return 1;
	c = s->w->b[win_index(i)];
	switch (s->state) {
	case ST_METHOD:
		if (c >= 'A' && c <= 'Z' && i < 20)
			return 0;
		s->state = c == ' ' && i > 0 ? ST_TARGET : ST_FAILED;
		s->mark = i + 1;
		break;
	case ST_TARGET:
		if (c > ' ' && c < 0x7f)
			return 0;
		s->state = c == ' ' && i > s->mark ? ST_VERSION : ST_FAILED;
		s->mark = i + 1;
		break;
	case ST_VERSION:
		s->state = scan_version(s, i, c);
		break;
	case ST_HEADERS:
		if (s->line_start)
			s->state = scan_line_start(s, i, c);
		s->line_start = c == '\n';
		break;
	}
	return s->state == ST_DONE || s->state == ST_FAILED;
}

static const char hex_digits[] = "0123456789abcdef";

static __always_inline void put_hex(__u8 *out, const __u8 *in, __u32 n)
{
	__u32 i;

	for (i = 0; i < n && i < 16; i++) {
		out[2 * i] = hex_digits[in[i] >> 4];
		out[2 * i + 1] = hex_digits[in[i] & 15];
	}
}

/* An incoming `traceparent` of a server request, found where the exchange probes keep it: a
 * line of the request prefix, or the bytes they kept of a line beyond it. */
struct tp_find {
	struct conn_state *st;
	__u32 len; /* request prefix bytes */
	__u32 at;  /* offset of the value in rec.data; 0: not found */
};

static long find_tp_line(__u32 i, void *data)
{
	struct tp_find *f = data;
	__u8 *d = f->st->rec.data;
	__u64 name8;
	__u32 name4;

	if (i + 13 >= f->len || i >= REQ_CAPTURE_MAX)
		return 1;
	barrier_var(i);
	i &= REQ_CAPTURE_MAX - 1;
	if (d[i] != '\n')
		return 0;
	__builtin_memcpy(&name8, &d[i + 1], 8);
	__builtin_memcpy(&name4, &d[i + 9], 4);
	if ((name8 | LOWER_8) != TRACEPAR || (name4 | LOWER_4) != (ENT_COLON | LOWER_4) || d[i + 12] != ':')
		return 0;
	f->at = i + 13;
	return 1;
}

static __always_inline int hex_value(__u8 c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* `00-<32 hex>-<16 hex>-` at v + o (o a constant: one optional space) into ids; false when
 * malformed. */
static __always_inline bool parse_tp_at(const __u8 *v, const __u32 o, struct trace_ids *ids)
{
	__u32 i;
	int hi, lo;

	if (v[o] != '0' || v[o + 1] != '0' || v[o + 2] != '-' || v[o + 35] != '-' || v[o + 52] != '-')
		return false;
	for (i = 0; i < 16; i++) {
		hi = hex_value(v[o + 3 + 2 * i]);
		lo = hex_value(v[o + 4 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		ids->trace_id[i] = hi << 4 | lo;
	}
	for (i = 0; i < 8; i++) {
		hi = hex_value(v[o + 36 + 2 * i]);
		lo = hex_value(v[o + 37 + 2 * i]);
		if (hi < 0 || lo < 0)
			return false;
		ids->span_id[i] = hi << 4 | lo;
	}
	return true;
}

static __always_inline bool parse_tp_value(const __u8 *v, struct trace_ids *ids)
{
	return v[0] == ' ' ? parse_tp_at(v, 1, ids) : parse_tp_at(v, 0, ids);
}

/* A server exchange's incoming traceparent, looked for once (the first call its thread
 * makes): found, the exchange takes its ids as the caller's context (FLAG_CONTEXT_REMOTE), so
 * that its outgoing calls stay in the caller's trace. */
static __always_inline void adopt_incoming(struct conn_state *st)
{
	struct exchange *rec = &st->rec;
	struct tp_find f = { .st = st, .len = rec->req_len };
	struct trace_ids ids;
	__u8 v[64] = {};

	if (rec->flags & (FLAG_CONTEXT_REMOTE | FLAG_CONTEXT_CHECKED))
		return;
	rec->flags |= FLAG_CONTEXT_CHECKED;
	if (f.len > REQ_CAPTURE_MAX)
		f.len = REQ_CAPTURE_MAX;
	bpf_loop(REQ_CAPTURE_MAX, find_tp_line, &f, 0);
	if (f.at) {
		if (f.at + 56 > f.len) /* the value goes on beyond the prefix */
			return;
		if (bpf_probe_read_kernel(v, sizeof(v), &rec->data[f.at & (REQ_CAPTURE_MAX - 1)]))
			return;
	} else if (rec->flags & FLAG_TRACEPARENT) { /* "traceparent:" and what follows */
		__builtin_memcpy(v, &rec->traceparent[12], sizeof(v));
	} else {
		return;
	}
	if (!parse_tp_value(v, &ids))
		return;
	__builtin_memcpy(rec->trace_id, ids.trace_id, sizeof(ids.trace_id));
	__builtin_memcpy(rec->span_id, ids.span_id, sizeof(ids.span_id));
	rec->flags |= FLAG_CONTEXT_REMOTE;
}

/* The context of the request being sent: the trace of the server exchange the sending
 * thread serves, when the kernel knows it (it gave it one, or read the caller's), else a new
 * trace. */
static __always_inline void choose_ids(struct trace_ids *ids, __u64 sock)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	/* the parent the exchange probes will give this request when its send ends (start_request):
	 * the one claimed when its connection was opened, else the thread's oldest unclaimed */
	struct parent_ref *ref = bpf_map_lookup_elem(&connect_parents, &sock);
	struct pending *p;
	struct conn_state *st;

	if (!ref) {
		p = bpf_map_lookup_elem(&pending, &tid);
		ref = p ? pending_oldest(p) : NULL;
	}
	if (!ref)
		ref = served_request(tid);
	st = ref ? bpf_map_lookup_elem(&conns, &ref->sock_id) : NULL;

	if (st && st->rec.req_start_ns == ref->start_ns && (st->rec.flags & FLAG_CONTEXT)) {
		adopt_incoming(st);
		__builtin_memcpy(ids->trace_id, st->rec.trace_id, sizeof(ids->trace_id));
	} else {
		random_bytes(ids->trace_id, 4);
	}
	random_bytes(ids->span_id, 2);
}

/* The socket's sock_ids_map entry, made when missing. */
static __always_inline struct sock_ids *sock_ids_of(struct bpf_sock *sk)
{
	__u64 key = (__u64)sk;
	struct sock_ids *ids = bpf_map_lookup_elem(&sock_ids_map, &key);
	struct sock_ids blank = {};

	if (ids)
		return ids;
	bpf_map_update_elem(&sock_ids_map, &key, &blank, BPF_NOEXIST);
	return bpf_map_lookup_elem(&sock_ids_map, &key);
}

/* Does this message begin a request? The exchange probes' state of the socket says whether
 * the previous request was answered (a new connection has none yet). */
static __always_inline bool request_starts(struct bpf_sock *sk)
{
	__u64 key = (__u64)sk;
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);

	return !st || st->phase != PHASE_REQUEST;
}

/* Is the message a plaintext HTTP/1.x request without traceparent? Offset of the end of
 * its request line, or 0. */
static __always_inline __u32 http1_request_line(struct sk_msg_md *msg)
{
	__u32 zero = 0, len = msg->size;
	struct msg_scan s = {};
	void *data, *data_end;

	s.w = bpf_map_lookup_elem(&windows, &zero);
	if (!s.w)
		return 0;
	if (len > WINDOW)
		len = WINDOW;
	if (len < 16) { /* "GET / HTTP/1.1\r\n" is the shortest */
		count(CTX_NOT_HTTP);
		return 0;
	}
	if (bpf_msg_pull_data(msg, 0, len, 0)) {
		count(CTX_FAILED);
		return 0;
	}
	data = (void *)(long)msg->data;
	data_end = (void *)(long)msg->data_end;
	if (data + len > data_end || len > WINDOW) {
		count(CTX_FAILED);
		return 0;
	}
	if (bpf_probe_read_kernel(s.w->b, len, data)) {
		count(CTX_FAILED);
		return 0;
	}
	__builtin_memset(&s.w->b[WINDOW], 0, 16);
	s.len = len;
	s.whole = len == msg->size;
	bpf_loop(WINDOW, scan_byte, &s, 0);
	if (s.state == ST_FAILED || s.state < ST_HEADERS) {
		/* a request line still going on at the window's end: too long to judge */
		count(s.state == ST_FAILED || s.whole ? CTX_NOT_HTTP : CTX_DOUBT);
		return 0;
	}
	if (s.traceparent) {
		count(CTX_HAS_TRACEPARENT);
		return 0;
	}
	if (s.cut) {
		count(CTX_DOUBT);
		return 0;
	}
	return s.line_end;
}

/* Insert the header at `at`; on any failure the message is left as it was. */
static __always_inline bool insert_header(struct sk_msg_md *msg, __u32 at, const struct trace_ids *ids)
{
	__u8 line[TP_HEADER_LEN] = "traceparent: 00-";
	void *data, *data_end;
	__u32 size;

	put_hex(&line[16], ids->trace_id, 16);
	line[48] = '-';
	put_hex(&line[49], ids->span_id, 8);
	__builtin_memcpy(&line[65], "-01\r\n", 5);
	if (at > WINDOW || bpf_msg_push_data(msg, at, TP_HEADER_LEN, 0))
		return false;
	if (bpf_msg_pull_data(msg, at, at + TP_HEADER_LEN, 0))
		goto undo;
	data = (void *)(long)msg->data;
	data_end = (void *)(long)msg->data_end;
	if (data + TP_HEADER_LEN > data_end)
		goto undo;
	__builtin_memcpy(data, line, TP_HEADER_LEN);
	/* the head in one piece again: tcp_bpf_push hands each scatterlist element to TCP on its
	 * own, and the first (the request line alone) would leave Nagle holding the rest until the
	 * peer's delayed ACK, 40 ms (a failure leaves the message right, only slower) */
	size = msg->size;
	bpf_msg_pull_data(msg, 0, size < LINEARIZE_MAX ? size : LINEARIZE_MAX, 0);
	return true;
undo:
	bpf_msg_pop_data(msg, at, TP_HEADER_LEN, 0);
	return false;
}

SEC("sk_msg")
int beyla_ctx_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct trace_ids out;
	struct sock_ids *ids;
	struct sock_ctx *c;
	__u32 at = 0;

	if (!sk || bpf_get_current_cgroup_id() == self_cgroup)
		return SK_PASS;
	if (!request_starts(sk)) {
		/* the rest of a request (a body, a head in pieces) or a pipelined one: not a start
		 * we can be sure of */
		return SK_PASS;
	}
	c = bpf_sk_storage_get(&sock_ctxs, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!c) {
		count(CTX_FAILED);
		return SK_PASS;
	}
	/* a large send reaches sk_msg in pieces: only its first can begin a request */
	if (c->sending)
		return SK_PASS;
	c->sending = 1;
	if (propagation & PROPAGATE_HEADERS) {
		at = http1_request_line(msg);
		if (!at && !(propagation & PROPAGATE_TCP))
			return SK_PASS;
	}
	ids = sock_ids_of(sk);
	if (!ids) {
		count(CTX_FAILED);
		return SK_PASS;
	}
	choose_ids(&out, (__u64)sk);
	if (at) {
		if (!insert_header(msg, at, &out)) {
			count(CTX_FAILED);
			if (!(propagation & PROPAGATE_TCP))
				return SK_PASS;
		} else {
			count(CTX_INJECTED);
		}
	}
	ids->out = out;
	ids->out_ready = 1;
	ids->on_packets = (propagation & PROPAGATE_TCP) != 0;
	return SK_PASS;
}

/* tcp: the option on a client socket's packets (reserved first, written second). */
static __always_inline void write_option(struct bpf_sock_ops *skops, bool reserve)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_ids *ids;
	__u8 opt[TRACE_OPT_LEN];
	__u64 key;

	if (!sk)
		return;
	key = (__u64)sk;
	ids = bpf_map_lookup_elem(&sock_ids_map, &key);
	if (!ids || !ids->on_packets)
		return;
	if (reserve) {
		bpf_reserve_hdr_opt(skops, TRACE_OPT_LEN, 0);
		return;
	}
	opt[0] = TRACE_OPT_KIND;
	opt[1] = TRACE_OPT_LEN;
	__builtin_memcpy(&opt[2], ids->out.trace_id, 16);
	__builtin_memcpy(&opt[18], ids->out.span_id, 8);
	if (!bpf_store_hdr_opt(skops, opt, sizeof(opt), 0))
		count(CTX_OPT_WRITTEN);
}

/* tcp: a server socket's received option becomes the context of its next request. */
static __always_inline void read_option(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_ids *ids;
	__u8 opt[TRACE_OPT_LEN] = { TRACE_OPT_KIND };

	if (!sk || bpf_load_hdr_opt(skops, opt, sizeof(opt), 0) != TRACE_OPT_LEN || opt[1] != TRACE_OPT_LEN)
		return;
	ids = sock_ids_of(sk);
	if (!ids)
		return;
	__builtin_memcpy(ids->in.trace_id, &opt[2], 16);
	__builtin_memcpy(ids->in.span_id, &opt[18], 8);
	ids->in_ready = 1;
	count(CTX_OPT_READ);
}

/* A socket just established: what an earlier socket at its address left goes. */
static __always_inline void forget_address(struct bpf_sock_ops *skops)
{
	__u64 key;

	if (skops->sk) {
		key = (__u64)skops->sk;
		bpf_map_delete_elem(&sock_ids_map, &key);
	}
}

SEC("sockops")
int beyla_ctx_sockops(struct bpf_sock_ops *skops)
{
	__u64 cookie;

	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		forget_address(skops);
		cookie = bpf_get_socket_cookie(skops);
		if (bpf_sock_hash_update(skops, &client_socks, &cookie, BPF_NOEXIST))
			count(CTX_SOCKS_FULL);
		if (propagation & PROPAGATE_TCP)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						  BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		forget_address(skops);
		if (propagation & PROPAGATE_TCP)
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
						  BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		write_option(skops, true);
		break;
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		write_option(skops, false);
		break;
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		read_option(skops);
		break;
	}
	return 1;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
