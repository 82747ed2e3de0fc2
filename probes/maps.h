/* Maps of the HTTP probes, declared once. User space (beyla_sidecar/bpf/loader.py)
 * finds them by these names. */
#ifndef __BEYLA_MAPS_H
#define __BEYLA_MAPS_H

#include "beyla.h"

#define MAX_POD_NAMESPACES 16
#define MAX_CONNS 16384
#define MAX_THREADS 16384

/* Who opened a tracked connection and its 4-tuple: reported again on close,
 * which may run in softirq where `current` is unrelated and after the local
 * port was released (inet_num is 0 by then). */
struct conn_info {
	__u32 pid;
	__u32 tid;
	__u32 ns_pid;
	__u32 ns_tid;
	__u8 role; /* enum conn_role */
	__u8 _pad[7];
	struct conn_tuple tuple;
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
