/* The exchange state machine of a connection: request bytes, then response bytes, then
 * the next request ends the exchange (one record). Continuation transfers only update
 * counts and times. The first bytes of each message are kept as a prefix, and the end of
 * its head (the empty line) is looked for in the kernel, so that body sizes stay exact
 * and an incoming traceparent is found however large the head is. */
#ifndef __BEYLA_EXCHANGE_H
#define __BEYLA_EXCHANGE_H

#include "h2.h"
#include "asyncio.h"

/* Head scan: 64-byte blocks read one at a time, of which 48 are scanned before the next is
 * read, so that the first 8 bytes after any line break are in the block. Heads beyond
 * MAX_HEAD_SCAN stay unknown. */
#define SCAN_BLOCK 64
#define MAX_HEAD_SCAN (64 * 1024)
#define LF_BYTES 0x0a0a0a0a0a0a0a0aULL
#define CR_BYTES 0x0d0d0d0d0d0d0d0dULL
#define LOW_BITS 0x0101010101010101ULL
#define HIGH_BITS 0x8080808080808080ULL
#define LOWER_CASE 0x2020202020202020ULL
#define TRACEPAR 0x7261706563617274ULL /* "tracepar", little-endian */
#define HTTP11 0x312e312f50545448ULL /* "HTTP/1.1" */
#define BLANK_LINE 0x0a0d0a0dU /* "\r\n\r\n" */
#define H2C_CR 0x0d633268U /* "h2c\r" */
#define H2C_LOWER 0x00200020U /* makes its letters lower case */

/* Scratch of the head scan, per CPU: the block (no variable offsets into the stack; the
 * 16 bytes of slack let a line-start check read past the last block position) and the
 * cursor. The cursor lives here, not in the bpf_loop context on the stack: the verifier
 * tracks stack values exactly and would walk every iteration apart, while map memory is
 * just "some value" to it, so one pass over the callback verifies them all. */
struct scan_block {
	__u32 pos;        /* next byte to scan, in the scanned bytes */
	__u32 blk_start;  /* position of b[0] */
	__u32 blk_usable; /* bytes of the block scanned before reading the next one */
	__u32 _pad;
	__u8 b[SCAN_BLOCK + 16];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_block);
} scan_blocks SEC(".maps");

/* One scan over the bytes of a message not looked at yet: first (klen bytes at kbuf) the
 * first transfer when the prefix held it whole and its scan was deferred, then the current
 * transfer's bytes in user memory (len - klen of them at ubuf). Word by word, each
 * bpf_loop iteration one word: loops inside the callback would make the verifier walk
 * every iteration's branches at once. */
struct scan_ctx {
	struct conn_state *st;
	struct scan_block *blk;
	__u64 kbuf;
	__u64 ubuf;
	__u32 klen;
	__u32 len;
	__u32 *head;      /* where the head length goes */
	bool request;     /* look for traceparent too */
};

/* An index re-bounded where it is used: clang may otherwise recompute it from a spilled
 * 32-bit copy whose bounds the verifier no longer knows. */
static __always_inline __u32 bound_index(__u32 v, __u32 max)
{
	barrier_var(v);
	return v > max ? max : v;
}

static __always_inline bool has_lf(__u64 w)
{
	__u64 x = w ^ LF_BYTES;

	return (x - LOW_BITS) & ~x & HIGH_BITS;
}

/* A line starting at block position q (just after a LF) is "traceparent:": keep it. Only
 * in user memory: a line in the prefix is found by user space. */
static __always_inline void check_traceparent(struct scan_ctx *c, __u32 q)
{
	struct exchange *rec = &c->st->rec;
	__u32 at = c->blk->blk_start + q, left;

	if (rec->flags & FLAG_TRACEPARENT || q > SCAN_BLOCK || at < c->klen || at >= c->len)
		return;
	if ((*(__u64 *)&c->blk->b[bound_index(q, SCAN_BLOCK)] | LOWER_CASE) != TRACEPAR)
		return;
	left = c->len - at;
	if (left > TRACEPARENT_CAPTURE)
		left = TRACEPARENT_CAPTURE;
	/* user space checks the rest of the name ("ent:") and the value; a line the transfer
	 * cuts is completed from the next one (continue_traceparent) */
	if (!bpf_probe_read_user(rec->traceparent, left, (void *)(c->ubuf + at - c->klen))) {
		rec->flags |= FLAG_TRACEPARENT;
		c->st->tp_len = left;
	}
}

/* One byte of the head automaton; true when the head ends at block position q. */
static __always_inline bool scan_byte(struct scan_ctx *c, __u32 q)
{
	struct conn_state *st = c->st;
	__u8 b;

	if (q >= SCAN_BLOCK)
		return false;
	b = c->blk->b[bound_index(q, SCAN_BLOCK - 1)];
	if (b == '\n') {
		if (st->nl) {
			*c->head = st->scanned + c->blk->blk_start + q + 1;
			return true;
		}
		st->nl = 1;
		if (c->request)
			check_traceparent(c, q + 1);
	} else if (b != '\r') {
		st->nl = 0;
	}
	return false;
}

/* Read the block at c->pos: up to SCAN_BLOCK bytes of the segment (prefix or user buffer)
 * it lies in. A full block keeps its last 16 bytes as lookahead for line starts. */
static __always_inline bool next_block(struct scan_ctx *c, __u32 pos)
{
	struct scan_block *blk = c->blk;
	bool kernel = pos < c->klen;
	__u32 seg_end = kernel ? c->klen : c->len;
	__u32 n;
	long err;

	if (pos >= seg_end)
		return false;
	n = seg_end - pos;
	if (n > SCAN_BLOCK)
		n = SCAN_BLOCK;
	err = kernel ? bpf_probe_read_kernel(blk->b, n, (void *)(c->kbuf + pos)) :
		       bpf_probe_read_user(blk->b, n, (void *)(c->ubuf + pos - c->klen));
	if (err) {
		count(COUNTER_READ_FAILS);
		return false;
	}
	blk->blk_start = pos;
	blk->blk_usable = pos + n < seg_end ? SCAN_BLOCK - 16 : n;
	return true;
}

/* bpf_loop callback: one word (fewer at a segment's end). */
static long scan_one_word(__u32 i, void *data)
{
	struct scan_ctx *c = data;
	struct scan_block *blk = c->blk;
	__u32 pos = blk->pos, q, k, avail;
	__u64 word;

	if (pos >= c->len)
		return 1;
	if (pos >= blk->blk_start + blk->blk_usable && !next_block(c, pos)) {
		c->st->scanning = SCAN_DONE;
		return 1;
	}
	/* the bytes before ended a line (the previous transfer, or the deferred prefix): this
	 * transfer's first byte starts one */
	if (c->request && pos == c->klen && c->st->nl)
		check_traceparent(c, pos - blk->blk_start);
	q = pos - blk->blk_start;
	avail = blk->blk_usable - q;
	if (q > SCAN_BLOCK - 8 || avail > SCAN_BLOCK)
		return 1; /* cannot happen (blk_usable <= SCAN_BLOCK): bounds the loads below */
	if (avail >= 8) {
		word = *(__u64 *)&blk->b[bound_index(q, SCAN_BLOCK - 8)];
		blk->pos = pos + 8;
		if (!has_lf(word)) {
			if (word != CR_BYTES)
				c->st->nl = 0;
			return 0;
		}
		avail = 8;
	} else {
		blk->pos = pos + avail;
	}
	for (k = 0; k < 8; k++) {
		if (k >= avail)
			break;
		if (scan_byte(c, q + k)) {
			c->st->scanning = SCAN_DONE;
			return 1;
		}
	}
	return 0;
}

/* Bytes of the transfer readable at x->buf. */
static __always_inline __u32 readable(const struct xfer *x, __u32 moved)
{
	if (!x->buf)
		return 0;
	return x->avail < moved ? x->avail : moved;
}

/* The head scan of a message whose first transfer was captured whole (all its readable
 * bytes: a writev's first iovec is often the head alone): when they end with an empty line,
 * the head ended in them and user space finds it in the prefix; else the scan is deferred
 * to a second transfer, if one comes (most heads never need it). */
static __always_inline void first_transfer_captured(struct conn_state *st, __u32 at, __u16 len,
						   bool whole)
{
	__u32 end = bound_index(at + len, sizeof(st->rec.data));

	if (end < 4)
		return;
	if ((st->rec.data[end - 1] == '\n' && st->rec.data[end - 2] == '\n') ||
	    (st->rec.data[end - 1] == '\n' && st->rec.data[end - 2] == '\r' &&
	     st->rec.data[end - 3] == '\n' && st->rec.data[end - 4] == '\r'))
		st->scanning = SCAN_DONE;
	else if (whole)
		st->scanning = SCAN_DEFERRED;
	else { /* the head goes on in bytes that were not readable (a later iovec) */
		st->scanning = SCAN_DONE;
		st->rec.flags |= FLAG_TRUNCATED;
	}
}

/* Continue the head scan of the current message over this transfer (and, when deferred,
 * over the first transfer, held whole at rec.data[at..at+captured]). */
static __always_inline void scan_head(struct conn_state *st, const struct xfer *x, __u32 moved,
				      __u32 at, __u16 captured, __u32 *head, bool request)
{
	__u32 zero = 0;
	struct scan_ctx c = { .st = st, .ubuf = x->buf, .head = head, .request = request };
	__u64 ulen = readable(x, moved);

	if (st->scanning == SCAN_DEFERRED) {
		if (at > REQ_CAPTURE_MAX)
			at = REQ_CAPTURE_MAX;
		c.kbuf = (__u64)&st->rec.data[at];
		c.klen = captured;
		st->scanning = SCAN_RUNNING;
	}
	c.blk = bpf_map_lookup_elem(&scan_blocks, &zero);
	if (!c.blk || st->scanned >= MAX_HEAD_SCAN) {
		st->scanning = SCAN_DONE;
		return;
	}
	c.blk->pos = c.blk->blk_start = c.blk->blk_usable = 0;
	if (ulen > MAX_HEAD_SCAN - st->scanned)
		ulen = MAX_HEAD_SCAN - st->scanned;
	c.len = c.klen + ulen;
	/* a word per iteration, plus the short words at the end of each segment */
	bpf_loop(c.len / 8 + 2, scan_one_word, &c, 0);
	if (st->scanning == SCAN_RUNNING) {
		st->scanned += c.len;
		if (ulen < moved) { /* the rest was not readable, or the head is too long */
			st->scanning = SCAN_DONE;
			st->rec.flags |= FLAG_TRUNCATED;
		}
	}
}

/* A traceparent line cut by the end of the previous transfer: its rest starts this one. */
static __always_inline void continue_traceparent(struct conn_state *st, const struct xfer *x, __u32 moved)
{
	__u32 have = st->tp_len, n = TRACEPARENT_CAPTURE - have, ready = readable(x, moved);

	if (have >= TRACEPARENT_CAPTURE)
		return;
	if (n > ready)
		n = ready;
	/* the verifier only knows have <= TRACEPARENT_CAPTURE - 1 and n <= TRACEPARENT_CAPTURE: the
	 * data[] that follows in the record keeps that bound inside the map value */
	have &= 127;
	if (have >= TRACEPARENT_CAPTURE || n > TRACEPARENT_CAPTURE || !n)
		return;
	if (!bpf_probe_read_user(&st->rec.traceparent[have], n, (void *)x->buf))
		st->tp_len = have + n;
}

/* Copy up to `cap` (<= max, a constant) first bytes of the transfer to rec.data[at..]
 * (at <= REQ_CAPTURE_MAX); returns the count. */
static __always_inline __u16 capture(struct conn_state *st, __u32 at, __u32 cap, __u32 max,
				     const struct xfer *x, __u32 moved)
{
	__u32 len = readable(x, moved);

	if (len > cap)
		len = cap;
	/* the knobs are only known at load time: these bounds let the verifier accept a
	 * variable-size read at a variable offset of data[] */
	if (at > REQ_CAPTURE_MAX)
		at = REQ_CAPTURE_MAX;
	if (len > max)
		len = max;
	if (!len)
		return 0;
	if (bpf_probe_read_user(&st->rec.data[at], len, (void *)x->buf)) {
		count(COUNTER_READ_FAILS);
		st->rec.flags |= FLAG_TRUNCATED;
		return 0;
	}
	return len;
}

/* Append the transfer's first bytes to the request's (or response's) prefix, which holds all
 * of its message so far, as far as the capture size leaves room. The verifier bounds each
 * copy's end by its offset's largest value plus its length's, but the offset and the length
 * vary independently (their sum only holds together): so the copy goes in pieces of constant
 * sizes, the binary digits of the length, each at an offset re-bounded to leave room for it.
 * popcount(len) reads, only for a message's later transfers while its prefix has room.
 * A global function (not inlined): the verifier checks it once, instead of walking the rest
 * of each caller once per combination of pieces (that tripled the probes' load time). */
__noinline int append_prefix(struct conn_state *st, const struct xfer *x, __u32 moved, bool response)
{
	__u32 want, done = 0, off, piece, at, room;
	__u16 *len;

	if (!st || !x) /* a global function's pointers may be NULL for the verifier */
		return 0;
	len = response ? &st->rec.resp_len : &st->rec.req_len;
	at = response ? st->rec.resp_off + *len : *len;
	room = (response ? resp_capture : req_capture) - *len;
	want = readable(x, moved);

	if (want > room)
		want = room;
#pragma unroll
	for (piece = 256; piece; piece >>= 1) {
		if (!(want & piece))
			continue;
		off = bound_index(at + done, sizeof(st->rec.data) - piece);
		if (off != at + done) /* cannot happen: prefixes end inside data[] */
			break;
		if (bpf_probe_read_user(&st->rec.data[off], piece, (void *)(x->buf + done))) {
			count(COUNTER_READ_FAILS);
			st->rec.flags |= FLAG_TRUNCATED;
			break;
		}
		done += piece;
	}
	/* bytes not appended (unreadable, no room): later ones would not follow on in the prefix */
	st->filling = done == moved && done < room;
	*len += done;
	return 0;
}

/* A later transfer of a message whose prefix is filling: one without a user buffer (sendfile)
 * ends the filling without the call. */
static __always_inline void append_more(struct conn_state *st, const struct xfer *x, __u32 moved,
					bool response)
{
	if (x->buf)
		append_prefix(st, x, moved, response);
	else
		st->filling = false;
}

/* Has user space ended this exchange already (its idle sweep)? Only an exchange quiet for
 * swept_after_ns can be: the lookup is skipped for all others. */
static __always_inline bool was_swept(const struct exchange *rec, __u64 now)
{
	__u64 *start;
	bool same;

	if (!swept_after_ns || !rec->resp_start_ns || now - rec->resp_end_ns < swept_after_ns)
		return false;
	start = bpf_map_lookup_elem(&swept, &rec->sock_id);
	if (!start)
		return false;
	same = *start == rec->req_start_ns;
	bpf_map_delete_elem(&swept, &rec->sock_id); /* ended now, or a mark left by an older one */
	return same;
}

/* Send the finished exchange and clear it (the connection's identity stays). Never before
 * its connection's CONN_OPEN: one the ring refused goes first, and without it the exchange
 * counts as lost (user space could not say whose it is). Not at all when user space has
 * reported it already. */
static __always_inline void emit_exchange(struct conn_state *st, __u8 end, __u64 now)
{
	struct exchange *rec = &st->rec;
	/* up to the end of what the response prefix holds: no unused capture room is copied */
	__u64 size = offsetof(struct exchange, data) + rec->resp_off + rec->resp_len;

	if (size > sizeof(*rec))
		size = sizeof(*rec);
	rec->end = end;
	if (!was_swept(rec, now)) {
		if (announce(st))
			submit(rec, size, COUNTER_EXCHANGE_DROPS);
		else
			count(COUNTER_EXCHANGE_DROPS);
	}
	st->phase = PHASE_IDLE;
}

/* A "HTTP/1.1 101" response prefix (3 byte loads for every response transfer: the guard of the
 * h2c check below). */
static __always_inline bool switching_protocols(const struct exchange *rec)
{
	__u32 off = bound_index(rec->resp_off, REQ_CAPTURE_MAX);

	return rec->data[off + 9] == '1' && rec->data[off + 10] == '0' && rec->data[off + 11] == '1' &&
	       *(__u64 *)&rec->data[off] == HTTP11;
}

/* The end of a 101 head in the response prefix, and whether it says "h2c". */
struct head_find {
	struct exchange *rec;
	__u32 from;   /* the response prefix in data[] */
	__u32 len;
	__u32 end;    /* bytes of the head (0: not in the prefix) */
	bool h2c;
};

static long find_head_end(__u32 i, void *data)
{
	struct head_find *h = data;
	__u32 at, word;

	if (i + 4 > h->len)
		return 1;
	at = bound_index(h->from + i, sizeof(h->rec->data) - 4);
	word = *(__u32 *)&h->rec->data[at];
	if (word == BLANK_LINE) {
		h->end = i + 4;
		return 1;
	}
	if ((word | H2C_LOWER) == H2C_CR) /* either case */
		h->h2c = true;
	return 0;
}

/* A 101 answer to an `Upgrade: h2c` request (RFC 7540 3.2): HTTP/2 follows its head on both sides,
 * the server's frames right after it, the client's preface next. The 101 exchange goes out now with
 * its head alone, and the rest of this transfer is walked as frames. The head must be in the
 * response prefix (a 101 head is ~70 bytes). */
static __always_inline void h2c_upgrade(struct conn_state *st, __u64 key, bool recv, __u32 moved,
					const struct xfer *x, __u64 now)
{
	struct exchange *rec = &st->rec;
	struct head_find h = { .rec = rec, .from = rec->resp_off, .len = rec->resp_len };
	__u64 before = rec->resp_bytes - moved; /* response bytes of earlier transfers */

	bpf_loop(RESP_CAPTURE_MAX, find_head_end, &h, 0);
	if (!h.h2c || !h.end || h.end > rec->resp_bytes || h.end < before)
		return; /* another upgrade (websocket), or the head goes on */
	rec->resp_bytes = h.end;
	emit_exchange(st, END_NEXT_REQUEST, now);
	h2_begin(st, !recv);
	st->h2dir[recv ? 1 : 0].hidden = h.end - before;
	h2_transfer(st, key, recv, moved, x);
}

static __always_inline void start_request(struct conn_state *st, __u64 key, const struct xfer *x,
					  __u32 moved, __u64 now)
{
	struct exchange *rec = &st->rec;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct parent_ref ref = { .sock_id = key, .start_ns = now };
	struct parent_ref *parent;

	st->phase = PHASE_REQUEST;
	st->scanning = SCAN_RUNNING;
	st->tp_len = 0;
	st->nl = 0;
	st->scanned = 0;
	rec->flags = st->tls ? FLAG_TLS : 0;
	rec->tid = tid;
	rec->req_start_ns = now;
	rec->resp_start_ns = rec->resp_end_ns = 0;
	rec->req_bytes = rec->resp_bytes = 0;
	rec->req_head = rec->resp_head = 0;
	rec->resp_len = 0;
	rec->resp_off = req_capture;
	rec->parent_sock = rec->parent_start = 0;
	__builtin_memset(rec->tasks, 0, sizeof(rec->tasks));
	if (rec->role == ROLE_SERVER) {
		queue_request(tid, &ref); /* served from the first call that claims it */
	} else {
		/* only a thread that serves has requests for its Tasks' calls to belong to */
		if (asyncio_probed() && bpf_map_lookup_elem(&pending, &tid))
			task_chain(bpf_get_current_pid_tgid() >> 32, tid, rec->tasks);
		parent = bpf_map_lookup_elem(&connect_parents, &key);
		if (parent) { /* claimed when it connected */
			bpf_map_update_elem(&serving, &tid, parent, BPF_ANY);
			bpf_map_delete_elem(&connect_parents, &key);
			parent = bpf_map_lookup_elem(&serving, &tid);
		} else {
			parent = claim_request(tid);
		}
		if (parent) {
			rec->parent_sock = parent->sock_id;
			rec->parent_start = parent->start_ns;
		}
	}
	rec->req_len = capture(st, 0, req_capture, REQ_CAPTURE_MAX, x, moved);
	st->filling = rec->req_len == moved && moved < req_capture;
}

static __always_inline void start_response(struct conn_state *st, const struct xfer *x, __u32 moved,
					   __u64 now)
{
	struct exchange *rec = &st->rec;

	/* answering: later calls of this thread are not children of this request (claimable()) */
	st->phase = PHASE_RESPONSE;
	if (!responses_begun) {
		/* a locked add (XADD): the flag is out before reader_asleep is read. Two CPUs
		 * may both add; any value but 0 says it. */
		__sync_fetch_and_add(&responses_begun, 1);
		if (reader_asleep) {
			reader_asleep = 0;
			wake_reader();
		}
	}
	st->scanning = SCAN_RUNNING;
	st->nl = 0;
	st->scanned = 0;
	rec->resp_start_ns = now;
	if (rec->role == ROLE_SERVER && asyncio_probed())
		rec->tasks[0] = running_task((__u32)bpf_get_current_pid_tgid());
	/* right after the request prefix, which is complete now: the record sent ends there */
	rec->resp_off = rec->req_len;
	rec->resp_len = capture(st, rec->resp_off, resp_capture, RESP_CAPTURE_MAX, x, moved);
	st->filling = rec->resp_len == moved && moved < resp_capture;
}

/* `moved` bytes went through the connection in one direction (recv: into the process). */
static __always_inline void on_transfer(struct conn_state *st, __u64 key, bool recv, __u32 moved,
					const struct xfer *x)
{
	struct exchange *rec = &st->rec;
	bool request = (rec->role == ROLE_SERVER) == recv;
	__u64 now;

	if (st->h2) {
		h2_transfer(st, key, recv, moved, x);
		return;
	}
	/* only a connection's first request can start with the preface: one 16-byte read each */
	if (request && !rec->req_start_ns && st->phase == PHASE_IDLE && h2_preface(x, moved)) {
		h2_begin(st, recv);
		h2_transfer(st, key, recv, moved, x);
		return;
	}
	now = bpf_ktime_get_ns();
	if (request) {
		if (st->phase == PHASE_RESPONSE)
			emit_exchange(st, END_NEXT_REQUEST, now);
		if (st->phase == PHASE_IDLE) {
			start_request(st, key, x, moved, now);
			if (rec->req_len && rec->req_len == readable(x, moved))
				first_transfer_captured(st, 0, rec->req_len, rec->req_len == moved);
		} else if (rec->flags & FLAG_TRACEPARENT) {
			continue_traceparent(st, x, moved);
		}
		rec->req_bytes += moved;
		rec->req_end_ns = now;
		/* a deferred scan takes rec.req_len as the first transfer's size: before the append */
		if (st->scanning == SCAN_RUNNING || (st->scanning == SCAN_DEFERRED && rec->req_bytes > moved))
			scan_head(st, x, moved, 0, rec->req_len, &rec->req_head, true);
		if (st->filling && rec->req_bytes > moved) /* a later transfer: the prefix goes on */
			append_more(st, x, moved, false);
		return;
	}
	if (st->phase == PHASE_IDLE) {
		count(COUNTER_ORPHAN_RESPONSES); /* e.g. the rest of an answer begun before we attached */
		return;
	}
	if (st->phase == PHASE_REQUEST) {
		start_response(st, x, moved, now);
		if (rec->resp_len && rec->resp_len == readable(x, moved))
			first_transfer_captured(st, rec->resp_off, rec->resp_len, rec->resp_len == moved);
	}
	rec->resp_bytes += moved;
	rec->resp_end_ns = now;
	if (st->scanning == SCAN_RUNNING || (st->scanning == SCAN_DEFERRED && rec->resp_bytes > moved))
		scan_head(st, x, moved, rec->resp_off, rec->resp_len, &rec->resp_head, false);
	if (st->filling && rec->resp_bytes > moved)
		append_more(st, x, moved, true);
	/* only while the transfer starts inside the prefix: the 101 head must be in it, and the
	 * server's first frames often come in the same transfer */
	if (rec->resp_len >= 16 && rec->resp_bytes - moved < RESP_CAPTURE_MAX && switching_protocols(rec))
		h2c_upgrade(st, key, recv, moved, x, now);
}

#endif /* __BEYLA_EXCHANGE_H */
