/* The per-connection state and the thread -> server exchange reference: the types of the
 * `conns` and `serving` maps, which propagate.bpf.c shares with the exchange probes. */
#ifndef __BEYLA_CONNSTATE_H
#define __BEYLA_CONNSTATE_H

#include "beyla.h"

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
 * the oldest. A request answered unclaimed leaves a hole (sock_id 0); a full queue forgets its
 * oldest. */
struct pending {
	__u32 head;  /* index of the oldest entry, modulo PENDING_MAX */
	__u32 count; /* entries from head, holes included */
	struct parent_ref refs[PENDING_MAX];
};

/* Drop the holes at the queue's head; the oldest live entry, or NULL. */
static __always_inline struct parent_ref *pending_oldest(struct pending *p)
{
	for (int i = 0; i < PENDING_MAX && p->count; i++) {
		struct parent_ref *ref = &p->refs[p->head % PENDING_MAX];

		if (ref->sock_id)
			return ref;
		p->head++;
		p->count--;
	}
	return NULL;
}

#endif /* __BEYLA_CONNSTATE_H */
