/* HTTP/2 connections: frames walked in the kernel so that every header block reaches user space
 * (HPACK decodes a connection's header blocks in order: one missed block desynchronises every
 * later stream), while DATA payloads are only counted. A connection is HTTP/2 when its first
 * request bytes are the client preface (prior knowledge, or TLS after ALPN h2): from then on its
 * transfers send chunks (struct h2_chunk), never exchanges, and user space (protocols/http2.py)
 * makes the streams. Frames cross transfers and iovecs anywhere: the walk keeps its place per
 * direction (struct h2_dir). */
#ifndef __BEYLA_H2_H
#define __BEYLA_H2_H

#include "conn.h"

#define H2_PREFACE_LEN 24
#define H2_FRAME_HEADER 9
#define H2_TYPE_DATA 0
#define H2_TYPE_PRIORITY 2
#define H2_TYPE_PING 6
#define H2_TYPE_WINDOW_UPDATE 8
#define H2_TYPE_CONTINUATION 9
/* The largest frame payload copied (protocols/http2.py MAX_HEADER_BLOCK): a larger one gives the
 * framing up, instead of filling the ring with what user space would drop. */
#define H2_KEPT_MAX (256 * 1024)
/* Steps (a piece of a segment each) one transfer may take; more, and the framing is given up. */
#define H2_MAX_STEPS 8192
#define H2_PREFACE_A 0x5448202a20495250ULL /* "PRI * HT", little-endian */
#define H2_PREFACE_B 0x0a0d302e322f5054ULL /* "TP/2.0\r\n" */

/* The walk of one transfer, per CPU: its cursor (in map memory, not the bpf_loop context on the
 * stack: see struct scan_block) and the chunk being filled. */
struct h2_scratch {
	__u64 buf;      /* user address of the current segment's next byte; 0: not readable */
	__u64 iov;      /* user address of the next struct iovec */
	__u64 iov_left; /* iovecs from there */
	__u32 seg_left; /* bytes left in the current segment */
	__u32 left;     /* bytes of the transfer not walked yet */
	__u64 now;
	struct h2_chunk rec;
	/* a copy of up to H2_CHUNK_MAX bytes at any offset below H2_CHUNK_MAX stays in the value */
	__u8 slack[H2_CHUNK_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct h2_scratch);
} h2_scratches SEC(".maps");

struct h2_walk {
	struct conn_state *st;
	struct h2_dir *d;
	struct h2_scratch *s;
};

/* Do the transfer's first bytes start the HTTP/2 client preface? */
static __always_inline bool h2_preface(const struct xfer *x, __u32 moved)
{
	__u64 head[2];

	if (!x->buf || x->avail < sizeof(head) || moved < sizeof(head) ||
	    bpf_probe_read_user(head, sizeof(head), (void *)x->buf))
		return false;
	return head[0] == H2_PREFACE_A && head[1] == H2_PREFACE_B;
}

/* Send the chunk so far and start the next one. A chunk the ring refuses leaves a gap in seq. */
static __always_inline void h2_flush(struct h2_walk *w)
{
	struct h2_chunk *rec = &w->s->rec;
	__u32 len = rec->len;

	if (len > H2_CHUNK_MAX)
		len = H2_CHUNK_MAX;
	rec->seq = w->d->seq++;
	rec->ts_ns = w->s->now;
	if (announce(w->st))
		submit(rec, offsetof(struct h2_chunk, data) + len, COUNTER_H2_DROPS);
	else
		count(COUNTER_H2_DROPS);
	rec->len = 0;
	rec->moved = 0;
}

/* The walk cannot go on (unreadable bytes, too many steps, a kept frame too large): what is known
 * goes out marked, and the direction sends nothing more. */
static __always_inline void h2_lose(struct h2_walk *w)
{
	w->d->lost = 1;
	w->s->rec.flags |= FLAG_TRUNCATED;
	count(COUNTER_READ_FAILS);
	h2_flush(w);
}

static __always_inline void h2_advance(struct h2_scratch *s, __u32 k)
{
	if (s->buf)
		s->buf += k;
	s->seg_left -= k;
	s->left -= k;
}

/* Copy k bytes of the current segment to the end of the chunk's data (k <= its room). */
static __always_inline bool h2_copy(struct h2_scratch *s, __u32 k)
{
	__u32 at = s->rec.len;

	/* the verifier bounds the copy's end by at's and k's largest values apart: both below
	 * H2_CHUNK_MAX keep it inside data[] and slack[] */
	if (!s->buf || at >= H2_CHUNK_MAX || k > H2_CHUNK_MAX)
		return false;
	if (bpf_probe_read_user(&s->rec.data[at & (H2_CHUNK_MAX - 1)], k, (void *)s->buf))
		return false;
	s->rec.len = at + k;
	s->rec.moved += k;
	h2_advance(s, k);
	return true;
}

/* The next iovec, when the current one is used up. */
static __always_inline bool h2_next_segment(struct h2_scratch *s)
{
	struct iovec iov;

	if (!s->iov_left || bpf_probe_read_user(&iov, sizeof(iov), (void *)s->iov))
		return false;
	s->buf = (__u64)iov.iov_base;
	s->seg_left = iov.iov_len < s->left ? iov.iov_len : s->left;
	s->iov += sizeof(iov);
	s->iov_left--;
	return true;
}

/* Frame types user space has no use for (flow control, liveness, priorities): left out whole. */
static __always_inline bool h2_unused(__u8 type)
{
	return type == H2_TYPE_PRIORITY || type == H2_TYPE_PING || type == H2_TYPE_WINDOW_UPDATE;
}

/* k bytes of a frame header (k <= 9 - hdr_have), gathered in hdr[]; once all 9 are in, they go
 * into the chunk (the chunk has room for 9) and say how the payload is walked, or the frame is
 * left out whole. A header cut by a transfer's end is reported with the transfer that ends it. */
static __always_inline bool h2_header_bytes(struct h2_dir *d, struct h2_scratch *s, __u32 k)
{
	__u32 at = s->rec.len, have = d->hdr_have, length;
	__u8 type;

	if (!s->buf || have >= H2_FRAME_HEADER || at > H2_CHUNK_MAX - H2_FRAME_HEADER)
		return false;
	/* have <= 8 and k <= 9: masked so that the verifier sees the read inside hdr[] */
	if (bpf_probe_read_user(&d->hdr[have & 15], k & 15, (void *)s->buf))
		return false;
	h2_advance(s, k);
	d->hdr_have = have + k;
	if (d->hdr_have < H2_FRAME_HEADER)
		return true;
	d->hdr_have = 0;
	length = (__u32)d->hdr[0] << 16 | (__u32)d->hdr[1] << 8 | d->hdr[2];
	type = d->hdr[3];
	if (h2_unused(type)) {
		d->hidden = length;
		return true;
	}
	/* a kept frame larger than user space decodes: not HTTP/2 after all, or nothing to follow */
	if (type != H2_TYPE_DATA && type <= H2_TYPE_CONTINUATION && length > H2_KEPT_MAX)
		return false;
	if (bpf_probe_read_kernel(&s->rec.data[at & (H2_CHUNK_MAX - 1)], H2_FRAME_HEADER, d->hdr))
		return false;
	s->rec.len = at + H2_FRAME_HEADER;
	s->rec.moved += H2_FRAME_HEADER;
	if (type == H2_TYPE_DATA || type > H2_TYPE_CONTINUATION)
		d->skip = length;
	else
		d->copy = length;
	return true;
}

/* bpf_loop callback: one piece of the current segment (bytes passed over, a skipped payload, a
 * kept payload, or header bytes), as much as the segment and the chunk's room allow. */
static long h2_step(__u32 i, void *data)
{
	struct h2_walk *w = data;
	struct h2_scratch *s = w->s;
	struct h2_dir *d = w->d;
	__u32 n, k;

	if (!s->left)
		return 1;
	if (!s->seg_left && !h2_next_segment(s)) {
		h2_lose(w); /* fewer buffer bytes than the transfer moved */
		return 1;
	}
	n = s->seg_left < s->left ? s->seg_left : s->left;
	if (d->hidden) {
		k = n < d->hidden ? n : d->hidden;
		d->hidden -= k;
		h2_advance(s, k);
		return 0;
	}
	if (d->skip) {
		k = n < d->skip ? n : d->skip;
		d->skip -= k;
		s->rec.moved += k;
		h2_advance(s, k);
		return 0;
	}
	if (d->copy) {
		if (s->rec.len >= H2_CHUNK_MAX) {
			h2_flush(w);
			return 0;
		}
		k = n < d->copy ? n : d->copy;
		if (k > H2_CHUNK_MAX - s->rec.len)
			k = H2_CHUNK_MAX - s->rec.len;
		if (!h2_copy(s, k)) {
			h2_lose(w);
			return 1;
		}
		d->copy -= k;
		return 0;
	}
	if (s->rec.len > H2_CHUNK_MAX - H2_FRAME_HEADER) {
		h2_flush(w);
		return 0;
	}
	k = H2_FRAME_HEADER - d->hdr_have;
	if (k > n)
		k = n;
	if (!h2_header_bytes(d, s, k)) {
		h2_lose(w);
		return 1;
	}
	return 0;
}

/* `moved` bytes of an HTTP/2 connection went one way: walk their frames into chunks. */
static __always_inline void h2_transfer(struct conn_state *st, __u64 key, bool recv, __u32 moved,
					const struct xfer *x)
{
	__u32 zero = 0;
	struct h2_walk w = { .st = st, .d = &st->h2dir[recv ? 1 : 0] };
	struct h2_scratch *s = bpf_map_lookup_elem(&h2_scratches, &zero);

	if (!s || w.d->lost)
		return;
	w.s = s;
	s->now = bpf_ktime_get_ns();
	s->buf = x->buf;
	s->seg_left = x->buf ? (x->avail < moved ? x->avail : moved) : moved;
	s->iov = x->iov;
	s->iov_left = x->iov_left;
	s->left = moved;
	s->rec.type = EVENT_H2_CHUNK;
	s->rec.flags = st->tls ? FLAG_TLS : 0;
	s->rec.role = st->rec.role;
	s->rec.recv = recv;
	s->rec.pid = st->rec.pid;
	s->rec.ns_pid = st->rec.ns_pid;
	s->rec.tid = (__u32)bpf_get_current_pid_tgid();
	s->rec.sock_id = key;
	s->rec.len = 0;
	s->rec.moved = 0;
	bpf_loop(H2_MAX_STEPS, h2_step, &w, 0);
	if (w.d->lost)
		return;
	if (s->left)
		h2_lose(&w);
	else if (s->rec.moved)
		h2_flush(&w);
}

/* The connection's first request starts with the client preface: it is HTTP/2 from now on. */
static __always_inline void h2_begin(struct conn_state *st, bool recv)
{
	st->h2 = 1;
	st->h2dir[recv ? 1 : 0].hidden = H2_PREFACE_LEN;
}

#endif /* __BEYLA_H2_H */
