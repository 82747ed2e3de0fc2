/* TCP health records of tcphealth.bpf.c, decoded by beyla_sidecar/bpf/tcphealth.py. Fixed sizes
 * and offsets: keep both sides in step. The maps are declared here, once (libbpf-tools style). */
#ifndef __TCPHEALTH_H
#define __TCPHEALTH_H

#include "tcpfail.h"

/* Upper bounds (microseconds) of the RTT histogram's buckets, set by user space in
 * `rtt_bounds_us`; one more bucket counts what is above the last bound. */
#define RTT_BOUNDS 16
#define RTT_BUCKETS (RTT_BOUNDS + 1)
/* Destinations with events between two drains; user space sizes it (BEYLA_NETWORK_TCP_MAP_SIZE). */
#define MAX_TCP_DESTS 4096

enum tcp_role {
	TCP_ROLE_UNKNOWN = 0, /* both ports kept: user space picks the server's */
	TCP_ROLE_CLIENT = 1,  /* the pod connected: lport is zeroed (ephemeral) */
	TCP_ROLE_SERVER = 2,  /* the pod accepted: rport is zeroed (the client's ephemeral port) */
};

/* A destination of the pod: one entry however many connections go to it. IPv4 addresses are
 * stored IPv4-mapped (::ffff:a.b.c.d). 40 bytes. */
struct tcph_key {
	__u8 laddr[16]; /* the pod's side */
	__u8 raddr[16]; /* the peer's side */
	__u16 lport;    /* host byte order; 0 when the role says it is the client's */
	__u16 rport;
	__u8 role;      /* enum tcp_role */
	__u8 _pad[3];   /* zeroed: part of the hash key */
};

/* What one destination saw since the last drain. Shared by all CPUs: updated with atomics. */
struct tcph_dest {
	__u64 rtt_sum_us;               /* sum of the RTT samples */
	__u32 failed[TCP_FAILURES];     /* connection attempts that failed, by enum tcp_failure */
	__u32 resets_sent;
	__u32 resets_received;
	__u32 retransmits;              /* retransmitted segments (a TSO packet counts its segments) */
	__u32 rtt_min_us;               /* ~0 when there is no sample */
	__u32 rtt_max_us;
	__u32 rtt_buckets[RTT_BUCKETS]; /* samples <= rtt_bounds_us[i]; the last: above them all */
};

/* Indexes of the per-CPU `tcphealth_counters` array: losses, never silent. */
enum tcphealth_counter {
	TCP_CNT_MAP_FULL = 0,   /* events of a new destination the full `tcp_dests` map refused */
	TCP_CNT_UNREADABLE = 1, /* events whose addresses could not be read */
	TCP_CNT_MAX = 2,
};

/* A plain hash, not per-CPU: events are rare next to packets, and per-CPU copies of a 112-byte
 * value would cost that times the CPUs per entry. Not an LRU: a full map refuses a new
 * destination and counts it, where an LRU would drop another's counts without a trace. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_TCP_DESTS);
	__type(key, struct tcph_key);
	__type(value, struct tcph_dest);
} tcp_dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCP_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tcphealth_counters SEC(".maps");

#endif /* __TCPHEALTH_H */
