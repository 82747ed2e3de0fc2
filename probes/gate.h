/* The pod gate every process-context program passes first, the knobs set before load,
 * and the output channel (ring buffer and loss counters). */
#ifndef __BEYLA_GATE_H
#define __BEYLA_GATE_H

#include "beyla.h"
#include "ringwake.h"

#define MAX_POD_NAMESPACES 16
#define MAX_PROCESSES 8192
#define MAX_EXECUTABLES 1024

/* Request/response prefix bytes an exchange keeps (<= REQ/RESP_CAPTURE_MAX). */
const volatile __u32 req_capture = 256;
const volatile __u32 resp_capture = 256;
/* Unread bytes in the ring buffer above which a submit wakes the reader; below it no
 * wakeups (they would cost the traced app), user space drains on its poll timer. */
const volatile __u64 wakeup_bytes = 64 * 1024;
/* Above wakeup_bytes, one wakeup per wakeup_step bytes (a power of two; ringwake.h). */
const volatile __u64 wakeup_step = 16 * 1024;
/* Inode of the pod's PID namespace when known before load: one compare instead of a
 * pid_ns_filter lookup in every hooked call, which other pods' processes pay for too.
 * 0: the namespaces are in pid_ns_filter (filled after load). */
const volatile __u32 pod_pidns = 0;
/* Only processes in allowed_pids report traffic (BEYLA_EXECUTABLE_NAME/BEYLA_OPEN_PORT);
 * false: every process of the pod, and the verifier drops the lookups. */
const volatile bool filter_pids = false;
/* filter_pids by the executable alone (BEYLA_EXECUTABLE_NAME without BEYLA_OPEN_PORT): a new
 * executable is judged at exec from exe_verdicts, so that short-lived processes are seen from
 * their first byte. Else the selection of a new executable waits for user space. */
const volatile bool select_at_exec = false;
/* User space ends exchanges whose response has been quiet this long (its idle sweep) and
 * marks them in `swept`; 0: no sweep. */
const volatile __u64 swept_after_ns = 0;

/* PID namespace inodes to observe (inode -> 1). Filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POD_NAMESPACES);
	__type(key, __u32);
	__type(value, __u8);
} pid_ns_filter SEC(".maps");

enum selection {
	SELECTED = 1,
	PENDING = 2, /* select_at_exec: its executable has no verdict yet; it reports traffic
		      * (CONN_OPEN marked FLAG_PENDING) until one comes */
};

/* Processes selected by BEYLA_EXECUTABLE_NAME / BEYLA_OPEN_PORT (tgid in its own PID
 * namespace -> enum selection). Consulted only when filter_pids is set; filled by user
 * space (processes found running), set by the probes at exec (select_at_exec) and fork, and
 * dropped at exec (otherwise) and at the exit of the process's last thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u8);
} allowed_pids SEC(".maps");

/* select_at_exec: user space's verdict on each executable it has judged (1 selected, 0 not),
 * written when a PENDING process's exec event reaches it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_EXECUTABLES);
	__type(key, struct exe_id);
	__type(value, __u8);
} exe_verdicts SEC(".maps");

/* enum counter_index -> count, per CPU; user space sums. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Records to user space; size set by the loader before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events SEC(".maps");

/* The current task as seen by the namespace gate. */
struct cur_task {
	struct task_struct *task;
	struct pid *pid;  /* task->thread_pid */
	__u32 level;      /* depth of the task's PID namespace */
	bool pending;     /* current_selected: selection PENDING (its connections say so) */
};

/* Inode of the PID namespace at `level` of pid. Direct loads through BTF pointers
 * (a faulting load reads 0) cost far less than one bpf_probe_read_kernel per field.
 * The verifier accepts only constant offsets into the flexible numbers[] array: hence
 * the switch over the usual nesting depths (host 0, pod 1, nested runtimes 2..3). */
static __always_inline __u32 pidns_inum(struct pid *pid, __u32 level)
{
	switch (level) {
	case 0:
		return pid->numbers[0].ns->ns.inum;
	case 1:
		return pid->numbers[1].ns->ns.inum;
	case 2:
		return pid->numbers[2].ns->ns.inum;
	case 3:
		return pid->numbers[3].ns->ns.inum;
	default:
		return BPF_CORE_READ(pid, numbers[level].ns, ns.inum);
	}
}

/* Process-context gate: true when the current task's PID namespace (the one it was
 * created in: thread_pid, not nsproxy->pid_ns_for_children, which is wrong after
 * unshare) is in pid_ns_filter. Reads only what the check needs. */
static __always_inline bool current_filtered(struct cur_task *cur)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pid *pid = task->thread_pid;
	__u32 level = pid->level;
	__u32 inum = pidns_inum(pid, level);

	cur->task = task;
	cur->pid = pid;
	cur->level = level;
	cur->pending = false;
	if (pod_pidns)
		return inum == pod_pidns;
	return bpf_map_lookup_elem(&pid_ns_filter, &inum) != NULL;
}

/* tgid of the current task in its own PID namespace: the key of allowed_pids. */
static __always_inline __u32 ns_tgid(const struct cur_task *cur)
{
	/* locals: a CO-RE read must not start from a field of our own struct */
	struct task_struct *task = cur->task;
	__u32 level = cur->level;
	struct pid *leader = BPF_CORE_READ(task, group_leader, thread_pid);

	return BPF_CORE_READ(leader, numbers[level].nr);
}

/* The executable the task runs (NULL fields read 0: a kernel thread has no mm). */
static __always_inline bool exe_of(struct task_struct *task, struct exe_id *id)
{
	struct inode *inode = task->mm->exe_file->f_inode;

	id->ino = inode->i_ino;
	id->dev = inode->i_sb->s_dev;
	id->gen = inode->i_generation;
	return id->ino != 0;
}

/* A PENDING process: apply its executable's verdict once user space has given it. */
static __always_inline bool resolve_pending(struct cur_task *cur, __u32 tgid, __u8 *state)
{
	struct exe_id id = {};
	__u8 *verdict;

	if (!exe_of(cur->task, &id) || !(verdict = bpf_map_lookup_elem(&exe_verdicts, &id))) {
		cur->pending = true;
		return true;
	}
	if (*verdict) {
		*state = SELECTED;
		return true;
	}
	bpf_map_delete_elem(&allowed_pids, &tgid);
	return false;
}

/* current_filtered, then the process selection: the gate of every program that
 * reports traffic. Lifecycle programs use current_filtered alone: discover/ must
 * see every process of the pod to select among them. */
static __always_inline bool current_selected(struct cur_task *cur)
{
	__u32 tgid;
	__u8 *state;

	if (!current_filtered(cur))
		return false;
	if (!filter_pids)
		return true;
	tgid = ns_tgid(cur);
	state = bpf_map_lookup_elem(&allowed_pids, &tgid);
	if (!state)
		return false;
	return *state == SELECTED || resolve_pending(cur, tgid, state);
}

static __always_inline void count(__u32 idx)
{
	__u64 *val = bpf_map_lookup_elem(&counters, &idx);

	if (val)
		(*val)++; /* per-CPU slot: no atomic needed */
}

/* A full ring is counted (in `lost`, enum counter_index or COUNTER_NONE), never silent.
 * True when the record went out. */
static __always_inline bool ring_output(void *data, __u64 size, __u32 lost, __u64 flags)
{
	if (!bpf_ringbuf_output(&events, data, size, flags))
		return true;
	if (lost != COUNTER_NONE)
		count(lost);
	return false;
}

/* Wakes the reader only when the ring fills up. */
static __always_inline bool submit(void *data, __u64 size, __u32 lost)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);

	return ring_output(data, size, lost, wakeup_flags(avail, size, wakeup_bytes, wakeup_step));
}

/* Wakes the reader at once: for rare events user space must act on before the next poll
 * (an exec, whose short-lived process may be gone from /proc by then). */
static __always_inline bool submit_now(void *data, __u64 size, __u32 lost)
{
	return ring_output(data, size, lost, BPF_RB_FORCE_WAKEUP);
}

/* Wakes the reader with no record: an empty one, discarded (the reader skips it). */
static __always_inline void wake_reader(void)
{
	void *rec = bpf_ringbuf_reserve(&events, 8, 0);

	if (rec)
		bpf_ringbuf_discard(rec, BPF_RB_FORCE_WAKEUP);
}

/* Host and namespace-local ids of a task that passed the gate. */
static __always_inline void task_ids(const struct cur_task *cur, struct conn_event *e)
{
	struct task_struct *task = cur->task;
	struct pid *pid = cur->pid;
	__u32 level = cur->level;
	struct pid *leader = BPF_CORE_READ(task, group_leader, thread_pid);
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->ns_tid = BPF_CORE_READ(pid, numbers[level].nr);
	e->ns_pid = BPF_CORE_READ(leader, numbers[level].nr);
}

/* A conn_event of the current task, ids and comm filled, sent at once (`wake`: submit_now). */
static __always_inline void task_event(__u8 type, const struct cur_task *cur, bool wake)
{
	struct conn_event e = { .type = type, .ts_ns = bpf_ktime_get_ns() };

	task_ids(cur, &e);
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	if (wake)
		submit_now(&e, sizeof(e), COUNTER_EVENT_DROPS);
	else
		submit(&e, sizeof(e), COUNTER_EVENT_DROPS);
}

#endif /* __BEYLA_GATE_H */
