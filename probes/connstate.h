/* The per-connection state, the thread -> server exchange reference and the maps holding them
 * (`conns`, `serving`, `pending`, `connect_parents`), which propagate.bpf.c shares with the
 * exchange probes. */
#ifndef __BEYLA_CONNSTATE_H
#define __BEYLA_CONNSTATE_H

#include "beyla.h"

#define MAX_CONNS 8192
#define MAX_THREADS 16384

enum phase {
	PHASE_IDLE = 0,     /* no exchange in progress */
	PHASE_REQUEST = 1,  /* request bytes seen, no response yet */
	PHASE_RESPONSE = 2, /* response bytes seen: the next request ends the exchange */
};

enum scan {
	SCAN_DONE = 0,     /* head end found, or given up */
	SCAN_RUNNING = 1,  /* looking for the head end in each transfer */
	SCAN_DEFERRED = 2, /* the first transfer is in the prefix whole: scan it only if another comes */
};

/* Where the framing of one direction of an HTTP/2 connection stands between transfers. */
struct h2_dir {
	__u32 skip;     /* payload bytes of a frame that is not kept (DATA) still to come */
	__u32 copy;     /* payload bytes of a kept frame still to come */
	__u32 seq;      /* the next chunk's sequence number */
	__u32 hidden;   /* bytes to pass over unreported: the client preface, frames of no use */
	__u8 hdr_have;  /* bytes of the frame header being read, gathered in hdr[] */
	__u8 lost;      /* bytes were unreadable: the framing is unknown from here on */
	__u8 _pad[2];
	__u8 hdr[32];   /* the frame header being read: 9 bytes; the rest bounds a read at any offset */
};

struct conn_state {
	__u8 phase;     /* enum phase */
	__u8 tls;       /* a TLS library drives it: its socket bytes are ciphertext, not reported */
	__u8 nl;        /* head scan: the last byte other than CR was LF */
	__u8 scanning;  /* enum scan, for the current message */
	__u32 scanned;  /* bytes of the current message scanned so far */
	__u64 ssl;      /* tls: the SSL* last seen on it, to delete its ssl_socks entry on close */
	__u8 tp_len;    /* bytes in rec.traceparent so far; short of TRACEPARENT_CAPTURE: the line
			 * went on in the next transfer, which completes it */
	__u8 announced; /* its CONN_OPEN went out; until then it is sent again before each of the
			 * connection's exchanges, and an exchange never goes without it */
	__u8 filling;   /* the current message's prefix holds every byte of it so far and has room:
			 * its next transfer goes on filling it */
	__u8 h2;        /* it began with the HTTP/2 client preface: chunks (h2.h), no exchanges */
	__u8 _pad[4];
	struct exchange rec; /* the exchange in progress, exactly as it will be sent */
	struct conn_event open; /* its CONN_OPEN, for a send the ring refused */
	struct h2_dir h2dir[2]; /* HTTP/2 framing: [0] what the process sends, [1] what it receives */
};

/* The server exchange a thread is serving: (sock_id, req_start_ns) of its request. */
struct parent_ref {
	__u64 sock_id;
	__u64 start_ns;
};

#define PENDING_MAX 32

/* Server requests a thread read that no call of the thread has claimed yet, oldest first. An
 * event loop reads several requests before their handlers run, and the handlers then send their
 * calls in that order (asyncio runs ready tasks first in, first out): a client request claims
 * the oldest claimable (claimable()). A claimed request leaves a hole (sock_id 0); a full queue
 * forgets its oldest. */
struct pending {
	__u32 head;  /* index of the oldest entry, modulo PENDING_MAX */
	__u32 count; /* entries from head, holes included */
	struct parent_ref refs[PENDING_MAX];
};

/* The maps of connection state, declared once for beyla.bpf.o and propagate.bpf.o (which reuses
 * their fds before its load: its copies of the definitions only give the types). */
/* struct sock address (or SSL* of a socket-less TLS session) -> state. User space reads
 * it to end exchanges that went idle; its size is set by the loader before load. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct conn_state);
} conns SEC(".maps");

/* host tid -> the server exchange it is serving: the one its latest call claimed from `pending`,
 * while claimable() (its response has not begun). Plain hashes: an LRU's list upkeep costs
 * more; entries go with their thread (sched_process_exit), and a full map only costs parent
 * links. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct parent_ref);
} serving SEC(".maps");

/* host tid -> the server requests it read that no call of its own claimed yet (event loops).
 * Not preallocated: ~0.5 KiB per entry, and only threads that serve have one. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct pending);
} pending SEC(".maps");

/* struct sock address -> the request its thread was handling when it connect()ed: a call that
 * opens a connection is claimed then, in order, not when the connection is up (an event loop
 * sends calls in the order their connections complete). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct parent_ref);
} connect_parents SEC(".maps");

/* A server request a call of its thread may still claim as its parent: not answered yet (its
 * response has not begun) and its connection still known. Checked by the calls, not undone by the
 * response: a server that makes no calls, most of them, pays nothing for its calls' parents. */
static __always_inline bool claimable(const struct parent_ref *ref)
{
	struct conn_state *st = bpf_map_lookup_elem(&conns, &ref->sock_id);

	return st && st->phase == PHASE_REQUEST && st->rec.req_start_ns == ref->start_ns;
}

/* The request the thread serves (`serving`), while it is claimable. */
static __always_inline struct parent_ref *served_request(__u32 tid)
{
	struct parent_ref *ref = bpf_map_lookup_elem(&serving, &tid);

	return ref && claimable(ref) ? ref : NULL;
}

/* Drop the holes and the requests no longer claimable at the queue's head; the oldest claimable
 * entry, or NULL. */
static __always_inline struct parent_ref *pending_oldest(struct pending *p)
{
	for (int i = 0; i < PENDING_MAX && p->count; i++) {
		struct parent_ref *ref = &p->refs[p->head % PENDING_MAX];

		if (ref->sock_id && claimable(ref))
			return ref;
		p->head++;
		p->count--;
	}
	return NULL;
}

#endif /* __BEYLA_CONNSTATE_H */
