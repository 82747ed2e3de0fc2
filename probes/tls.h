/* OpenSSL plaintext (uprobes, shared or statically linked library). Attached by user space
 * (discover/) to each library file that has the symbols, for every process mapping it;
 * the gate is checked here. While an SSL_* call runs on a thread, the socket I/O the
 * library does on that thread ties the SSL* to its struct sock and marks the socket TLS:
 * its ciphertext is then not reported, and the plaintext feeds the socket's exchange.
 * BPF_KPROBE/BPF_KRETPROBE: the same pt_regs argument access serves uprobes. */
#ifndef __BEYLA_TLS_H
#define __BEYLA_TLS_H

#include "exchange.h"

#define MAX_TLS_CONNS 16384

enum ssl_op {
	SSL_OP_HANDSHAKE = 0,
	SSL_OP_READ = 1,
	SSL_OP_WRITE = 2,
};

/* A TLS library call in progress on a thread, between uprobe and uretprobe. */
struct ssl_call {
	__u64 ssl;  /* SSL* */
	__u64 buf;  /* plaintext buffer (read/write) */
	__u64 out;  /* size_t * of the _ex variants (bytes moved); 0: the return value is the count */
	__u8 op;    /* enum ssl_op */
	__u8 _pad[7];
};

/* Key 0: OpenSSL files probed now (user space keeps it). While 0, the socket probes skip
 * the ssl_calls lookup: an array lookup is inlined, a hash lookup is not. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} tls_files SEC(".maps");

static __always_inline bool tls_probed(void)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&tls_files, &zero);

	return n && *n;
}

/* SSL* is a user address: only unique within one process. */
struct ssl_key {
	__u32 tgid; /* host tgid */
	__u32 _pad;
	__u64 ssl;
};

/* Per thread: the SSL_* call it is in (ssl 0: none). Task storage, not a hash by tid: the socket
 * probes look it up on every transfer of every thread of a process that maps OpenSSL, and for a
 * thread that never made an SSL call the lookup is one pointer test instead of a hash miss. It
 * goes with its thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ssl_call);
} ssl_calls SEC(".maps");

/* The SSL_* call the current thread is in, or NULL. */
static __always_inline struct ssl_call *ssl_call_of(struct task_struct *task)
{
	struct ssl_call *call = bpf_task_storage_get(&ssl_calls, task, NULL, 0);

	return call && call->ssl ? call : NULL;
}

/* (tgid, SSL*) -> struct sock address, learnt from the socket I/O the library does inside
 * an SSL_* call; deleted with the socket (tcp_destroy_sock). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_TLS_CONNS);
	__type(key, struct ssl_key);
	__type(value, __u64);
} ssl_socks SEC(".maps");

/* sk carries the TLS session `ssl` of the current process: remember the pair for the
 * plaintext probes and mark the socket TLS. A socket that turns TLS now drops what its
 * ciphertext started and is reported again (CONN_OPEN with FLAG_TLS). */
static __always_inline void tie_tls(struct sock *sk, struct conn_state *st, __u64 ssl,
				   const struct cur_task *cur)
{
	struct ssl_key skey = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = ssl };
	__u64 key = (__u64)sk;
	__u64 *known = bpf_map_lookup_elem(&ssl_socks, &skey);

	if (!known || *known != key)
		bpf_map_update_elem(&ssl_socks, &skey, &key, BPF_ANY);
	if (st && st->tls) {
		st->ssl = ssl;
		return;
	}
	if (st)
		conn_forget(st, key);
	st = conn_new(key, sk, socket_role(sk), 1, cur);
	if (st)
		st->ssl = ssl;
}

/* Entry of an SSL_* call: remember it for the socket probes and the return. */
static __always_inline int ssl_enter(__u64 ssl, __u64 buf, __u64 out, __u8 op)
{
	struct ssl_call *call;
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	call = bpf_task_storage_get(&ssl_calls, cur.task, NULL, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!call)
		return 0;
	call->ssl = ssl;
	call->buf = buf;
	call->out = out;
	call->op = op;
	return 0;
}

/* Plaintext of a finished read/write into the exchange of the session's socket. No socket
 * I/O seen for this session (a memory BIO): the SSL* stands for the connection (a user
 * address never equals a struct sock's), and whoever reads first is the server. */
static __always_inline void tls_transfer(const struct ssl_call *call, __u32 moved,
					 const struct cur_task *cur)
{
	struct ssl_key skey = { .tgid = bpf_get_current_pid_tgid() >> 32, .ssl = call->ssl };
	__u64 *sk = bpf_map_lookup_elem(&ssl_socks, &skey);
	__u64 key = sk ? *sk : call->ssl;
	struct xfer x = { .buf = call->buf, .avail = moved };
	bool recv = call->op == SSL_OP_READ;
	struct conn_state *st = bpf_map_lookup_elem(&conns, &key);

	if (!st)
		st = conn_new(key, NULL, recv ? ROLE_SERVER : ROLE_CLIENT, 1, cur);
	if (st) {
		on_transfer(st, key, recv, moved, &x);
		exchange_context(st, key, moved);
	}
}

SEC("uprobe")
int BPF_KPROBE(beyla_ssl_hs_e, void *ssl)
{
	return ssl_enter((__u64)ssl, 0, 0, SSL_OP_HANDSHAKE);
}

/* int SSL_read(SSL *ssl, void *buf, int num): returns the bytes read */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_rd_e, void *ssl, void *buf)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, SSL_OP_READ);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes): returns 1 */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_rdx_e, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)readbytes, SSL_OP_READ);
}

/* int SSL_write(SSL *ssl, const void *buf, int num): returns the bytes written */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_wr_e, void *ssl, const void *buf)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, SSL_OP_WRITE);
}

/* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written): returns 1 */
SEC("uprobe")
int BPF_KPROBE(beyla_ssl_wrx_e, void *ssl, const void *buf, size_t num, size_t *written)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)written, SSL_OP_WRITE);
}

/* Return of any of the above. */
SEC("uretprobe")
int BPF_KRETPROBE(beyla_ssl_ret, int ret)
{
	struct ssl_call *found, call;
	struct cur_task cur;
	__u64 moved;

	if (!current_selected(&cur))
		return 0;
	found = ssl_call_of(cur.task);
	if (!found)
		return 0;
	call = *found;
	found->ssl = 0;
	if (call.op == SSL_OP_HANDSHAKE || ret <= 0)
		return 0;
	moved = ret;
	if (call.out && bpf_probe_read_user(&moved, sizeof(moved), (const void *)call.out))
		return 0;
	if (moved > 0 && moved <= 0x7fffffff)
		tls_transfer(&call, moved, &cur);
	return 0;
}

#endif /* __BEYLA_TLS_H */
