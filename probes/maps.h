/* Maps of the probes (sockets, TLS, processes), declared once. User space (beyla_sidecar/bpf/loader.py)
 * finds them by these names. */
#ifndef __BEYLA_MAPS_H
#define __BEYLA_MAPS_H

#include "beyla.h"

#define MAX_POD_NAMESPACES 16
#define MAX_CONNS 16384
#define MAX_THREADS 16384
#define MAX_PROCESSES 8192
#define MAX_TLS_CONNS 16384

/* Who opened a tracked connection and its 4-tuple: reported again on close,
 * which may run in softirq where `current` is unrelated and after the local
 * port was released (inet_num is 0 by then). */
struct conn_info {
	__u32 pid;
	__u32 tid;
	__u32 ns_pid;
	__u32 ns_tid;
	__u8 role; /* enum conn_role */
	__u8 tls;  /* a TLS library drives this socket: its bytes are ciphertext */
	__u8 _pad[6];
	struct conn_tuple tuple;
	__u64 ssl; /* the SSL* last seen on it (tls), to delete its ssl_socks entry on close */
};

/* A TLS library call in progress on a thread, between uprobe and uretprobe. */
enum ssl_op {
	SSL_OP_HANDSHAKE = 0,
	SSL_OP_READ = 1,
	SSL_OP_WRITE = 2,
};

struct ssl_call {
	__u64 ssl;  /* SSL* */
	__u64 buf;  /* plaintext buffer (read/write) */
	__u64 out;  /* size_t * of the _ex variants (bytes moved); 0: the return value is the count */
	__u8 op;    /* enum ssl_op */
	__u8 _pad[7];
};

/* SSL* is a user address: only unique within one process. */
struct ssl_key {
	__u32 tgid; /* host tgid */
	__u32 _pad;
	__u64 ssl;
};

/* A user buffer seen on the way into a send/receive, consumed by the
 * sock_*_length tracepoint of the same thread. `sk` ties it to one socket:
 * a stash left by another socket or path is never read as payload. */
struct buf_stash {
	__u64 sk;
	__u64 buf; /* user address; 0: no user buffer (sendfile/splice) */
	__u64 len; /* readable bytes at buf */
};

/* PID namespace inodes to observe (inode -> 1). Filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POD_NAMESPACES);
	__type(key, __u32);
	__type(value, __u8);
} pid_ns_filter SEC(".maps");

/* Processes selected by BEYLA_EXECUTABLE_NAME / BEYLA_OPEN_PORT (tgid in its own PID
 * namespace -> 1). Consulted only when the filter_pids knob is set; filled by user space,
 * inherited on fork and dropped on exec and exit by the probes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u8);
} allowed_pids SEC(".maps");

/* struct sock address -> opener, for sockets from accept()/connect(). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64);
	__type(value, struct conn_info);
} conns SEC(".maps");

/* tid -> fd between sys_enter_connect and sys_exit_connect. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, __s32);
} connect_fds SEC(".maps");

/* tid -> user buffer of the send in progress. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct buf_stash);
} send_bufs SEC(".maps");

/* tid -> user buffer of the receive in progress. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct buf_stash);
} recv_bufs SEC(".maps");

/* host tid -> the SSL_* call it is in (TLS uprobes). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct ssl_call);
} ssl_calls SEC(".maps");

/* (tgid, SSL*) -> struct sock address, learnt from the socket I/O the library does
 * inside an SSL_* call; deleted with the socket (tcp_destroy_sock). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_TLS_CONNS);
	__type(key, struct ssl_key);
	__type(value, __u64);
} ssl_socks SEC(".maps");

/* Event assembly area: too big for the 512-byte BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct data_event);
} scratch SEC(".maps");

/* enum counter_index -> count, per CPU; user space sums. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Variable-length records to user space; size set by the loader before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

#endif /* __BEYLA_MAPS_H */
