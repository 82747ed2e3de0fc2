/* Records the probes put on the ring buffer, decoded by beyla_sidecar/bpf/events.py.
 * Every field has a fixed size and offset; tests/bpf/test_layout.py checks the Python
 * side against this header's BTF in the built object. */
#ifndef __BEYLA_H
#define __BEYLA_H

/* Compile-time bounds of the prefixes an exchange keeps; the runtime knobs
 * req_capture/resp_capture (.rodata) pick values up to these. */
#define REQ_CAPTURE_MAX 512
#define RESP_CAPTURE_MAX 256
/* Bytes kept after a "traceparent:" found beyond the request prefix. */
#define TRACEPARENT_CAPTURE 80
#define TASK_CHAIN 4 /* asyncio Tasks an exchange record names (probes/asyncio.h) */
/* Bytes of an HTTP/2 connection's frames one chunk record carries at most. */
#define H2_CHUNK_MAX 4096
/* Longest executable path an exec event carries (a longer one is not sent). */
#define EXE_PATH_MAX 256

enum event_type {
	EVENT_EXCHANGE = 1,   /* one request and its response on a connection (struct exchange) */
	EVENT_CONN_OPEN = 2,  /* a connection seen for the first time (struct conn_event) */
	EVENT_CONN_CLOSE = 3, /* the kernel destroyed a connection we saw */
	/* Process lifecycle (discover/): struct conn_event with ids and comm only. */
	EVENT_PROCESS_EXEC = 4,   /* execve() succeeded: new executable */
	EVENT_PROCESS_FORK = 5,   /* a new process (not a thread) was forked */
	EVENT_PROCESS_EXIT = 6,   /* the last thread of a process exited */
	EVENT_PROCESS_LISTEN = 7, /* a TCP socket of the process started listening */
	EVENT_H2_CHUNK = 8,       /* bytes of an HTTP/2 connection, DATA payloads left out (struct h2_chunk) */
};

enum record_flags {
	FLAG_TLS = 1,         /* plaintext seen by the TLS library probes */
	FLAG_TRACEPARENT = 2, /* exchange.traceparent holds the bytes after "traceparent:" */
	FLAG_TRUNCATED = 4,   /* a transfer's bytes were not all readable: prefix or head scan incomplete */
	/* CONN_OPEN, PROCESS_EXEC/FORK: the process ran an executable the kernel has no verdict for
	 * (BEYLA_EXECUTABLE_NAME): it reports traffic until user space judges the executable, which
	 * drops what a process it does not select sent meanwhile */
	FLAG_PENDING = 8,
	/* exchange.trace_id/span_id hold the context the kernel gave it (BEYLA_BPF_CONTEXT_PROPAGATION):
	 * a client request's, as written into it; a server request's trace id when no context came */
	FLAG_CONTEXT = 16,
	/* with FLAG_CONTEXT, server: the caller's context from a TCP option (span_id: the caller's) */
	FLAG_CONTEXT_REMOTE = 32,
	/* kernel-internal (propagate.bpf.c): the server request's traceparent was looked for */
	FLAG_CONTEXT_CHECKED = 64,
};

/* Why the kernel emitted an exchange (user space also ends idle ones: END_SWEEP there). */
enum exchange_end {
	END_NEXT_REQUEST = 1, /* the next request began on the connection */
	END_CLOSE = 2,        /* the connection closed */
};

enum conn_role {
	ROLE_UNKNOWN = 0,
	ROLE_SERVER = 1, /* its local port is a listening port of its network namespace */
	ROLE_CLIENT = 2,
};

/* Addresses are IPv6-sized; IPv4 sits in the first 4 bytes (family says which). */
struct conn_tuple {
	__u8 saddr[16]; /* local */
	__u8 daddr[16]; /* remote */
	__u16 sport;    /* local, host byte order */
	__u16 dport;    /* remote, host byte order */
	__u16 family;   /* AF_INET or AF_INET6 */
	__u16 _pad;
};

/* Connection and process events: rare, so they carry everything about their task.
 * EVENT_PROCESS_FORK: pid/ns_pid are the child's, tid/ns_tid the parent's tgid. */
struct conn_event {
	__u8 type;       /* enum event_type */
	__u8 role;       /* enum conn_role (connections) */
	__u8 flags;      /* FLAG_TLS: the connection is driven by a TLS library */
	__u8 _pad;
	__u32 pid;       /* host tgid */
	__u32 tid;       /* host tid */
	__u32 ns_pid;    /* tgid in the task's own PID namespace */
	__u32 ns_tid;    /* tid in the task's own PID namespace */
	__u32 _pad2;
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 sock_id;   /* struct sock address (or SSL* of a socket-less TLS session) */
	struct conn_tuple tuple;
	char comm[16];
};

/* Identity of an executable file: key of the kernel's selection verdicts. dev is the kernel's
 * dev_t (major << 20 | minor); gen tells apart files that reuse an inode number. */
struct exe_id {
	__u64 ino;
	__u32 dev;
	__u32 gen;
};

/* EVENT_PROCESS_EXEC when the selection is decided at exec (BEYLA_EXECUTABLE_NAME alone). */
struct exec_event {
	struct conn_event ev; /* flags: FLAG_PENDING when no verdict for the executable was known */
	struct exe_id exe;
	__u16 path_len;       /* bytes in path: FLAG_PENDING only; 0 when the path was not found */
	__u16 _pad[3];
	char path[EXE_PATH_MAX]; /* the executable's path in its mount namespace, as /proc/<pid>/exe says */
};

/* One request and its response, emitted once, when the next request begins or the
 * connection closes (user space ends exchanges that went idle from the conns map).
 * Followed by req_len bytes of request prefix, then resp_len bytes of response prefix
 * starting at offset sizeof(struct exchange) + req_capture. */
struct exchange {
	__u8 type;           /* EVENT_EXCHANGE */
	__u8 flags;          /* enum record_flags */
	__u8 role;           /* enum conn_role */
	__u8 end;            /* enum exchange_end */
	__u32 pid;           /* host tgid of the connection's process */
	__u32 ns_pid;        /* its tgid in its own PID namespace */
	__u32 tid;           /* host tid that received (server) or sent (client) the request */
	__u64 sock_id;
	__u64 req_start_ns;  /* first and last request transfer */
	__u64 req_end_ns;
	__u64 resp_start_ns; /* first and last response transfer; 0: no response yet */
	__u64 resp_end_ns;   /* without a response: when the connection closed (END_CLOSE), else 0 */
	__u64 req_bytes;     /* exact bytes moved, captured or not */
	__u64 resp_bytes;
	__u64 parent_sock;   /* client: the server exchange its thread was serving when the */
	__u64 parent_start;  /* request began, as (sock_id, req_start_ns); 0: none */
	__u32 req_head;      /* head length (up to the empty line) found by the kernel; 0: not found */
	__u32 resp_head;
	__u16 req_len;       /* request prefix bytes */
	__u16 resp_len;      /* response prefix bytes */
	__u16 resp_off;      /* offset of the response prefix in data[] (= req_len) */
	__u16 _pad;
	__u8 trace_id[16];   /* FLAG_CONTEXT: W3C ids, in their text order (big-endian) */
	__u8 span_id[8];
	/* asyncio (else 0): client, the Task that sent the request and the Tasks that created
	 * it, innermost first; server, tasks[0] the Task that began the response */
	__u64 tasks[TASK_CHAIN];
	__u8 traceparent[TRACEPARENT_CAPTURE];
	__u8 data[REQ_CAPTURE_MAX + RESP_CAPTURE_MAX];
};

/* A stretch of one direction of an HTTP/2 connection (probes/h2.h): every byte the transfers moved
 * except the payloads of DATA frames and of extension frame types (above CONTINUATION), which their
 * frame header's length accounts for; the client preface and PRIORITY, PING and WINDOW_UPDATE
 * frames are left out whole (not covered either). One or more per transfer with frames to report;
 * each direction's first chunk starts at a frame header, and frame headers are never cut. */
struct h2_chunk {
	__u8 type;   /* EVENT_H2_CHUNK */
	__u8 flags;  /* FLAG_TLS; FLAG_TRUNCATED: bytes could not be read, the framing is lost after data[] */
	__u8 role;   /* enum conn_role */
	__u8 recv;   /* 1: the bytes went into the process */
	__u32 pid;   /* host tgid of the connection's process */
	__u32 ns_pid;
	__u32 tid;   /* host tid of the transfer */
	__u64 sock_id;
	__u64 ts_ns; /* the transfer */
	__u32 seq;   /* per connection and direction, from 0: a gap is a chunk the full ring refused */
	__u32 moved; /* bytes of the direction's stream covered, skipped payloads included */
	__u16 len;   /* bytes in data[] */
	__u16 _pad[3];
	__u8 data[H2_CHUNK_MAX];
};

/* Per-CPU counters in the `counters` array map, read by user space. A record that never
 * reaches the ring is counted once, in one of the first two. */
enum counter_index {
	COUNTER_EVENT_DROPS = 0,   /* a connection or process event the full ring refused (a
				    * CONN_OPEN counts when its connection closes unannounced) */
	COUNTER_READ_FAILS = 1,    /* bpf_probe_read_user of a prefix failed */
	COUNTER_ORPHAN_RESPONSES = 2, /* response bytes with no request seen on the connection */
	COUNTER_EXCHANGE_DROPS = 3,   /* an exchange record the full ring refused: one request
				       * and its response lost */
	COUNTER_H2_DROPS = 4,         /* an HTTP/2 chunk the full ring refused: its connection's
				       * streams are lost from then on */
	COUNTER_MAX = 8,
};
#define COUNTER_NONE COUNTER_MAX /* submit(): a refusal is not a loss (yet) */

#endif /* __BEYLA_H */
