// SPDX-License-Identifier: GPL-2.0
/* L3/L4 flow metrics of the pod: a BPF_PROG_TYPE_SOCKET_FILTER attached (SO_ATTACH_BPF) to an
 * AF_PACKET/ETH_P_ALL SOCK_DGRAM socket the sidecar opens in the pod's network namespace. Such a
 * socket sees every packet of every interface of that namespace, both directions, and nothing of
 * other namespaces: the scope is the pod by construction (no PID check needed), and the only
 * capability it adds is NET_RAW.
 *
 * Every IP packet adds its bytes and packets to its flow in `flows` (per-CPU hash, drained by user
 * space with batch lookup-and-delete every BEYLA_NETWORK_FLUSH_INTERVAL). The program returns 0
 * (the socket receives nothing) except for DNS answers, which it passes whole so that user space
 * parses names from them (bpf/netflow.py, protocols/dns.py). No DNS parsing in the kernel.
 * ICMP errors that answer one of the pod's TCP SYNs are noted for tcphealth.bpf.c (tcpfail.h). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "netflow.h"
#include "tcpfail.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define PACKET_OUTGOING 4
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define NEXTHDR_FRAGMENT 44
#define ICMP_DEST_UNREACH 3
#define ICMP_PORT_UNREACH 3
#define ICMP_FRAG_NEEDED 4
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define ICMPV6_TIME_EXCEED 3
#define ICMPV6_PARAMPROB 4
#define ICMP_HDR_LEN 8
#define IPPROTO_ICMPV6 58
#define DNS_PORT 53
#define LOOPBACK_IFINDEX 1

/* Knobs set by user space before load. */
const volatile __u32 count_loopback = 0; /* lo carries pod-internal traffic, each packet seen twice */
const volatile __u32 pass_dns = 1;       /* hand DNS answers to the socket */

/* A plain (not LRU) hash: when full, a new flow is refused and counted (CNT_MAP_FULL_*). An LRU
 * map would evict an older flow's counts instead, with no trace. Sized by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} netflow_counters SEC(".maps");

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&netflow_counters, &which);

	if (c)
		*c += n;
}

/* IPv4 as IPv4-mapped IPv6, so one key layout serves both families. */
static __always_inline void map_v4(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* Reads relative to the network header (BPF_HDR_START_NET): right whatever link layer the
 * interface has (Ethernet, none for tun/ipip) and whatever the socket type hands the filter. */
static __always_inline int load_net(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	return bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_NET);
}

/* Parses the IPv4 header into `key`; returns the L4 offset, or -1. `*ip_len`: total length. */
static __always_inline int parse_v4(struct __sk_buff *skb, struct flow_key *key, __u32 *ip_len, bool *first_frag)
{
	struct iphdr ip;

	if (load_net(skb, 0, &ip, sizeof(ip)))
		return -1;
	map_v4(key->saddr, ip.saddr);
	map_v4(key->daddr, ip.daddr);
	key->proto = ip.protocol;
	*ip_len = bpf_ntohs(ip.tot_len);
	*first_frag = !(bpf_ntohs(ip.frag_off) & IP_OFFSET);
	return ip.ihl * 4;
}

/* IPv6: the fixed header, and one fragment header if there is one (other extension headers
 * leave ports at 0: rare on pod traffic, and a bounded walk is not worth its cost per packet). */
static __always_inline int parse_v6(struct __sk_buff *skb, struct flow_key *key, __u32 *ip_len, bool *first_frag)
{
	struct ipv6hdr ip6;
	struct frag_hdr frag;
	int off = sizeof(ip6);

	if (load_net(skb, 0, &ip6, sizeof(ip6)))
		return -1;
	__builtin_memcpy(key->saddr, &ip6.saddr, 16);
	__builtin_memcpy(key->daddr, &ip6.daddr, 16);
	key->proto = ip6.nexthdr;
	*ip_len = bpf_ntohs(ip6.payload_len) + sizeof(ip6);
	*first_frag = true;
	if (ip6.nexthdr == NEXTHDR_FRAGMENT) {
		if (load_net(skb, off, &frag, sizeof(frag)))
			return -1;
		key->proto = frag.nexthdr;
		*first_frag = !(bpf_ntohs(frag.frag_off) & ~0x7);
		off += sizeof(frag);
	}
	return off;
}

/* Ports, and the transport header length (for the headers each GSO segment repeats). */
static __always_inline __u32 parse_l4(struct __sk_buff *skb, struct flow_key *key, int l4)
{
	__be16 ports[2];
	__u8 doff;

	if (key->proto != IPPROTO_TCP && key->proto != IPPROTO_UDP)
		return 0;
	if (load_net(skb, l4, ports, sizeof(ports)))
		return 0;
	key->sport = bpf_ntohs(ports[0]);
	key->dport = bpf_ntohs(ports[1]);
	if (key->proto == IPPROTO_UDP)
		return sizeof(struct udphdr);
	/* data offset: the high nibble of byte 12 of the TCP header */
	if (load_net(skb, l4 + 12, &doff, 1))
		return sizeof(struct tcphdr);
	return (doff >> 4) * 4;
}

/* What an ICMP error tells a connecting socket, as Linux's TCP reads it (tcp_v4_err,
 * tcp_v6_err): port unreachable is ECONNREFUSED; fragmentation needed and packet too big are
 * path MTU news, not errors (TCP_FAILURES: none). */
static __always_inline __u32 icmp_failure(__u8 proto, __u8 type, __u8 code)
{
	if (proto == IPPROTO_ICMP) {
		if (type == ICMP_DEST_UNREACH)
			return code == ICMP_PORT_UNREACH ? TCP_FAIL_REFUSED :
			       code == ICMP_FRAG_NEEDED ? TCP_FAILURES : TCP_FAIL_UNREACHABLE;
		return type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB ? TCP_FAIL_UNREACHABLE : TCP_FAILURES;
	}
	if (type == ICMPV6_DEST_UNREACH)
		return code == ICMPV6_PORT_UNREACH ? TCP_FAIL_REFUSED : TCP_FAIL_UNREACHABLE;
	return type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB ? TCP_FAIL_UNREACHABLE : TCP_FAILURES;
}

/* An ICMP error the pod received about a TCP segment it sent: the quoted headers give the
 * connection's 4-tuple as the pod sent it. Only ICMP packets come here. */
static __always_inline void note_icmp_error(struct __sk_buff *skb, __u8 proto, int l4)
{
	struct icmp_fail_key k = {};
	__u8 head[2]; /* type, code */
	__be16 ports[2];
	__u32 failure;
	int inner = l4 + ICMP_HDR_LEN;

	if (load_net(skb, l4, head, sizeof(head)))
		return;
	failure = icmp_failure(proto, head[0], head[1]);
	if (failure == TCP_FAILURES)
		return;
	if (proto == IPPROTO_ICMP) {
		struct iphdr ip;

		if (load_net(skb, inner, &ip, sizeof(ip)) || ip.protocol != IPPROTO_TCP)
			return;
		map_v4(k.laddr, ip.saddr);
		map_v4(k.raddr, ip.daddr);
		inner += ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (load_net(skb, inner, &ip6, sizeof(ip6)) || ip6.nexthdr != IPPROTO_TCP)
			return;
		__builtin_memcpy(k.laddr, &ip6.saddr, 16);
		__builtin_memcpy(k.raddr, &ip6.daddr, 16);
		inner += sizeof(ip6);
	}
	if (load_net(skb, inner, ports, sizeof(ports)))
		return;
	k.lport = bpf_ntohs(ports[0]);
	k.rport = bpf_ntohs(ports[1]);
	bpf_map_update_elem(&icmp_failures, &k, &failure, BPF_ANY);
}

static __always_inline void account(struct flow_key *key, __u64 bytes, __u64 packets)
{
	struct flow_value *v = bpf_map_lookup_elem(&flows, key);
	struct flow_value init = { .bytes = bytes, .packets = packets };

	if (v) {
		/* per-CPU value: only this CPU writes it, no atomics needed */
		v->bytes += bytes;
		v->packets += packets;
		return;
	}
	/* BPF_NOEXIST: another CPU may have created it meanwhile; then add to ours through it */
	if (bpf_map_update_elem(&flows, key, &init, BPF_NOEXIST) == 0)
		return;
	v = bpf_map_lookup_elem(&flows, key);
	if (v) {
		v->bytes += bytes;
		v->packets += packets;
		return;
	}
	count(CNT_MAP_FULL_PACKETS, packets);
	count(CNT_MAP_FULL_BYTES, bytes);
}

SEC("socket")
int netflow(struct __sk_buff *skb)
{
	struct flow_key key = {};
	__u32 ip_len = 0, l4_hdr = 0, segs;
	__u16 proto = bpf_ntohs(skb->protocol);
	bool first_frag = true;
	__u64 bytes;
	int l4;

	if (!count_loopback && skb->ifindex == LOOPBACK_IFINDEX)
		return 0;
	if (proto == ETH_P_IP)
		l4 = parse_v4(skb, &key, &ip_len, &first_frag);
	else if (proto == ETH_P_IPV6)
		l4 = parse_v6(skb, &key, &ip_len, &first_frag);
	else
		return 0;
	if (l4 < 0) {
		count(CNT_MALFORMED, 1);
		return 0;
	}
	if (first_frag)
		l4_hdr = parse_l4(skb, &key, l4);
	key.direction = skb->pkt_type == PACKET_OUTGOING ? FLOW_EGRESS : FLOW_INGRESS;
	key.ifindex = skb->ifindex;

	/* A GSO packet (TSO/GRO, one skb for many wire packets) is counted as the wire sees it: its
	 * segments, each with its own IP and transport headers. Otherwise the IP header's length,
	 * which leaves out Ethernet padding of short frames (skb->len still has it here). */
	segs = skb->gso_segs > 1 ? skb->gso_segs : 1;
	if (segs > 1 || ip_len == 0 || ip_len > skb->len)
		bytes = skb->len + (__u64)(segs - 1) * (l4 + l4_hdr);
	else
		bytes = ip_len;
	account(&key, bytes, segs);
	if (key.direction == FLOW_INGRESS && first_frag && (key.proto == IPPROTO_ICMP || key.proto == IPPROTO_ICMPV6))
		note_icmp_error(skb, key.proto, l4);

	/* DNS answers (UDP or TCP from port 53) reach the socket whole; everything else is dropped
	 * here, so the socket's queue only ever holds DNS answers. */
	if (pass_dns && key.sport == DNS_PORT && key.direction == FLOW_INGRESS && first_frag) {
		count(CNT_DNS_PASSED, 1);
		return skb->len;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
