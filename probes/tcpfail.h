/* ICMP errors that answered the pod's TCP connection attempts: written by netflow.bpf.c (its
 * packet socket sees them arrive), read by tcphealth.bpf.c when the attempt closes. User space
 * gives tcphealth's object netflow's map (bpf_map__reuse_fd).
 *
 * Why: an ICMP error that arrives while the connecting thread holds the socket (the usual case
 * when the node itself answers, e.g. a REJECT rule: the answer is processed within the connect()
 * call) only sets sk_err_soft, and the application's SO_ERROR read clears it. The attempt then
 * ends with the application's close(), and the socket keeps no trace of why. */
#ifndef __TCPFAIL_H
#define __TCPFAIL_H

#define MAX_ICMP_FAILURES 1024

/* Why a connection attempt (SYN_SENT -> CLOSE) failed: what the application was told. */
enum tcp_failure {
	TCP_FAIL_REFUSED = 0,     /* ECONNREFUSED: a reset answered the SYN, or an ICMP port
				   * unreachable (Linux reports both the same way) */
	TCP_FAIL_TIMEOUT = 1,     /* no answer: the SYN retries ran out (ETIMEDOUT), or the
				   * application gave up first */
	TCP_FAIL_UNREACHABLE = 2, /* another ICMP error: host or network unreachable,
				   * administratively prohibited, time exceeded */
	TCP_FAILURES = 3,
};

/* The attempt's 4-tuple as the pod sent it (the ICMP error quotes the SYN). 40 bytes. */
struct icmp_fail_key {
	__u8 laddr[16]; /* IPv4-mapped for IPv4 */
	__u8 raddr[16];
	__u16 lport;    /* host byte order */
	__u16 rport;
	__u32 _pad;     /* zeroed: part of the hash key */
};

/* -> enum tcp_failure. An LRU: most entries are never read (the error reached the
 * socket directly and sk_err says it), and the oldest may go. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_ICMP_FAILURES);
	__type(key, struct icmp_fail_key);
	__type(value, __u32);
} icmp_failures SEC(".maps");

#endif /* __TCPFAIL_H */
