/* Trace context propagation (BEYLA_BPF_CONTEXT_PROPAGATION): what propagate.bpf.c (sockops,
 * sk_msg) and the exchange probes (beyla.bpf.c) share.
 *
 * The loader creates the maps with beyla.bpf.o and hands their fds to propagate.bpf.o before
 * its load (bpf_map__reuse_fd): no pinning. Flow of one call from a server thread:
 *   server request received  -> the exchange probes give the server exchange a trace id
 *                               (the caller's from a TCP option, else a random one)
 *   client request sent      -> sk_msg finds that trace id (serving -> conns), draws a span id,
 *                               writes the context (header and/or option) and leaves the ids in
 *                               the socket's sock_ctx
 *   same send, after TCP     -> the exchange probes copy them into the client exchange's record
 *                               (sock_send_length fires when sendmsg returns, after sk_msg). */
#ifndef __BEYLA_PROPAGATE_H
#define __BEYLA_PROPAGATE_H

#include "connstate.h"

/* OBI's TCP option: kind, length, 16-byte trace id, 8-byte span id. */
#define TRACE_OPT_KIND 25
#define TRACE_OPT_LEN 26

/* Bits of the `propagation` knob. */
enum propagation_mode {
	PROPAGATE_HEADERS = 1, /* traceparent header in plaintext HTTP/1.x requests */
	PROPAGATE_TCP = 2,     /* TCP header option on the client's data packets */
};

/* 0: off (the exchange probes skip all of this). Set by the loader in both objects. */
const volatile __u8 propagation = 0;

struct trace_ids {
	__u8 trace_id[16];
	__u8 span_id[8];
};

/* Per socket (sk_storage, goes with the socket). */
struct sock_ctx {
	__u8 sending; /* sk_msg saw the start of a send the exchange probes have not seen end:
		       * the next sk_msg run of it is a later piece of the same send */
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_ctx);
} sock_ctxs SEC(".maps");

/* A socket's contexts. Keyed by the struct sock address, not sk_storage: the TLS probes know
 * their socket only by that address. sockops drops the entry when a socket is established
 * (an address reused). Sized by the loader (BEYLA_MAX_CONNECTIONS; 1 when propagation is off). */
struct sock_ids {
	struct trace_ids out; /* client: the context written into its latest request */
	struct trace_ids in;  /* server (tcp): the caller's, from the option of a received packet */
	__u8 out_ready;       /* out is for a send the exchange probes have not taken yet */
	__u8 on_packets;      /* tcp: out goes on the socket's packets */
	__u8 in_ready;        /* in arrived since the socket's last request began */
	__u8 _pad[5];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_ids);
} sock_ids_map SEC(".maps");

static __always_inline void random_bytes(__u8 *out, __u32 words)
{
	__u32 i, r;

	for (i = 0; i < words && i < 4; i++) {
		r = bpf_get_prandom_u32();
		__builtin_memcpy(&out[i * 4], &r, 4);
	}
	/* an all-zero id is invalid in W3C: a 2^-32 chance, made impossible */
	out[0] |= 1;
}

/* Exchange probes, a send of a socket ended: sk_msg's next run on it is a new send. */
static __always_inline void send_ended(struct sock *sk)
{
	struct sock_ctx *c;

	if (!propagation)
		return;
	c = bpf_sk_storage_get(&sock_ctxs, sk, 0, 0);
	if (c)
		c->sending = 0;
}

/* Exchange probes, after a transfer: the context of an exchange that began with it. A client
 * request takes the ids sk_msg wrote into it; a server request the caller's from a TCP option,
 * else a new trace id, which its thread's outgoing calls carry. */
static __always_inline void exchange_context(struct conn_state *st, __u64 key, __u32 moved)
{
	struct exchange *rec = &st->rec;
	struct sock_ids *ids;

	if (!propagation || st->phase != PHASE_REQUEST || rec->req_bytes != moved)
		return; /* off, or not the first transfer of a request */
	if (rec->role != ROLE_CLIENT && rec->role != ROLE_SERVER)
		return;
	ids = bpf_map_lookup_elem(&sock_ids_map, &key);
	if (rec->role == ROLE_CLIENT) {
		if (ids && ids->out_ready) {
			__builtin_memcpy(rec->trace_id, ids->out.trace_id, sizeof(rec->trace_id));
			__builtin_memcpy(rec->span_id, ids->out.span_id, sizeof(rec->span_id));
			rec->flags |= FLAG_CONTEXT;
			ids->out_ready = 0;
		}
		return;
	}
	rec->flags |= FLAG_CONTEXT;
	if (ids && ids->in_ready) {
		__builtin_memcpy(rec->trace_id, ids->in.trace_id, sizeof(rec->trace_id));
		__builtin_memcpy(rec->span_id, ids->in.span_id, sizeof(rec->span_id));
		rec->flags |= FLAG_CONTEXT_REMOTE;
		ids->in_ready = 0;
		return;
	}
	random_bytes(rec->trace_id, 4);
}

#endif /* __BEYLA_PROPAGATE_H */
