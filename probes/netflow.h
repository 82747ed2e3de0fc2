/* Flow records of the packet-socket filter (netflow.bpf.c), decoded by
 * beyla_sidecar/bpf/netflow.py. Fixed sizes and offsets: keep both sides in step. */
#ifndef __NETFLOW_H
#define __NETFLOW_H

enum flow_direction {
	FLOW_INGRESS = 0, /* received by the pod (any pkt_type but PACKET_OUTGOING) */
	FLOW_EGRESS = 1,  /* sent by the pod (PACKET_OUTGOING) */
};

/* One flow: a packet's own source and destination (not local/remote), per direction and
 * interface. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d). 44 bytes. */
struct flow_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u32 ifindex;   /* interface index in the pod's network namespace */
	__u16 sport;     /* host byte order; 0 for protocols without ports and IP fragments */
	__u16 dport;
	__u8 proto;      /* IPPROTO_TCP, IPPROTO_UDP, ... */
	__u8 direction;  /* enum flow_direction */
	__u16 _pad;      /* zeroed: part of the hash key */
};

/* Per-CPU value of a flow: what the interval saw. */
struct flow_value {
	__u64 bytes;   /* IP bytes (headers included, link layer excluded), GSO packets as on the wire */
	__u64 packets; /* wire packets (a GSO packet counts its segments) */
};

/* Indexes of the per-CPU `netflow_counters` array: losses, never silent. */
enum netflow_counter {
	CNT_MAP_FULL_PACKETS = 0, /* packets of a new flow the full `flows` map refused */
	CNT_MAP_FULL_BYTES = 1,   /* their bytes */
	CNT_DNS_PASSED = 2,       /* DNS answers handed to the socket */
	CNT_MALFORMED = 3,        /* IP packets whose headers could not be read */
	CNT_MAX = 4,
};

#endif /* __NETFLOW_H */
