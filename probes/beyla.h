/* Event records shared by the probes and beyla_sidecar/bpf/events.py.
 * Every field has a fixed size and offset; Python decodes them with struct.
 * Change both sides together. */
#ifndef __BEYLA_H
#define __BEYLA_H

/* Compile-time upper bound of the payload capture; the runtime knob
 * `capture_size` (.rodata) picks a value up to this. Power of two so the
 * verifier can bound lengths with a mask. */
#define MAX_CAPTURE 1024

enum event_type {
	EVENT_DATA = 1,       /* bytes sent or received on a TCP socket */
	EVENT_CONN_OPEN = 2,  /* accept() or connect() returned a TCP socket */
	EVENT_CONN_CLOSE = 3, /* the kernel destroyed one of our sockets */
	/* Process lifecycle (discover/): ids are the process's; no tuple, no payload. */
	EVENT_PROCESS_EXEC = 4,   /* execve() succeeded: new executable */
	EVENT_PROCESS_FORK = 5,   /* a new process (not a thread) was forked */
	EVENT_PROCESS_EXIT = 6,   /* the last thread of a process exited */
	EVENT_PROCESS_MMAP = 7,   /* a file was mapped executable: maybe a library to probe */
	EVENT_PROCESS_LISTEN = 8, /* listen() succeeded: the process has a new open port */
};

/* event_header.flags */
enum event_flags {
	FLAG_TLS = 1, /* EVENT_DATA: plaintext seen by the TLS library probes */
};

enum direction {
	DIR_SEND = 0,
	DIR_RECV = 1,
};

enum conn_role {
	ROLE_UNKNOWN = 0, /* socket existed before the probes, or opened another way */
	ROLE_SERVER = 1,  /* came out of accept() */
	ROLE_CLIENT = 2,  /* went through connect() */
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

/* Common header of every record: 104 bytes. */
struct event_header {
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 sock_id;   /* kernel address of struct sock: connection identity while it lives */
	__u32 pid;       /* host tgid */
	__u32 tid;       /* host tid */
	__u32 ns_pid;    /* tgid in the task's own PID namespace */
	__u32 ns_tid;    /* tid in the task's own PID namespace */
	__u32 bytes;     /* EVENT_DATA: bytes really moved by the call (may exceed capture_len) */
	__u16 capture_len; /* payload bytes that follow the header */
	__u8 type;       /* enum event_type */
	__u8 direction;  /* enum direction (EVENT_DATA) */
	__u8 role;       /* enum conn_role */
	__u8 flags;      /* enum event_flags */
	__u8 _pad[6];
	struct conn_tuple tuple;
	char comm[16];   /* current->comm in process context; empty on EVENT_CONN_CLOSE */
};

struct data_event {
	struct event_header hdr;
	__u8 payload[MAX_CAPTURE];
};

/* Per-CPU counters in the `counters` array map, read by user space. */
enum counter_index {
	COUNTER_RINGBUF_DROPS = 0, /* bpf_ringbuf_output failed: ring buffer full */
	COUNTER_READ_FAILS = 1,    /* bpf_probe_read_user of a payload failed */
	COUNTER_MAX = 8,
};

#endif /* __BEYLA_H */
