/* The pod gate every process-context program passes first, the knobs set before load,
 * and the output channel (ring buffer and loss counters). */
#ifndef __BEYLA_GATE_H
#define __BEYLA_GATE_H

#include "beyla.h"

#define MAX_POD_NAMESPACES 16
#define MAX_PROCESSES 8192

/* Request/response prefix bytes an exchange keeps (<= REQ/RESP_CAPTURE_MAX). */
const volatile __u32 req_capture = 256;
const volatile __u32 resp_capture = 256;
/* Unread bytes in the ring buffer above which a submit wakes the reader; below it no
 * wakeups (they would cost the traced app), user space drains on its poll timer. */
const volatile __u64 wakeup_bytes = 64 * 1024;
/* Inode of the pod's PID namespace when known before load: one compare instead of a
 * pid_ns_filter lookup in every hooked call, which other pods' processes pay for too.
 * 0: the namespaces are in pid_ns_filter (filled after load). */
const volatile __u32 pod_pidns = 0;
/* Only processes in allowed_pids report traffic (BEYLA_EXECUTABLE_NAME/BEYLA_OPEN_PORT);
 * false: every process of the pod, and the verifier drops the lookups. */
const volatile bool filter_pids = false;

/* PID namespace inodes to observe (inode -> 1). Filled by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_POD_NAMESPACES);
	__type(key, __u32);
	__type(value, __u8);
} pid_ns_filter SEC(".maps");

/* Processes selected by BEYLA_EXECUTABLE_NAME / BEYLA_OPEN_PORT (tgid in its own PID
 * namespace -> 1). Consulted only when filter_pids is set; filled by user space,
 * inherited on fork and dropped on exec and exit by the probes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PROCESSES);
	__type(key, __u32);
	__type(value, __u8);
} allowed_pids SEC(".maps");

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

/* current_filtered, then the process selection: the gate of every program that
 * reports traffic. Lifecycle programs use current_filtered alone: discover/ must
 * see every process of the pod to select among them. */
static __always_inline bool current_selected(struct cur_task *cur)
{
	__u32 tgid;

	if (!current_filtered(cur))
		return false;
	if (!filter_pids)
		return true;
	tgid = ns_tgid(cur);
	return bpf_map_lookup_elem(&allowed_pids, &tgid) != NULL;
}

static __always_inline void count(__u32 idx)
{
	__u64 *val = bpf_map_lookup_elem(&counters, &idx);

	if (val)
		(*val)++; /* per-CPU slot: no atomic needed */
}

/* Wakes the reader only when the ring fills up; a full ring is counted, never silent. */
static __always_inline void submit(void *data, __u64 size)
{
	__u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes ?
		      BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_output(&events, data, size, flags))
		count(COUNTER_RINGBUF_DROPS);
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

/* A conn_event of the current task, ids and comm filled, sent at once. */
static __always_inline void task_event(__u8 type, const struct cur_task *cur)
{
	struct conn_event e = { .type = type, .ts_ns = bpf_ktime_get_ns() };

	task_ids(cur, &e);
	bpf_get_current_comm(e.comm, sizeof(e.comm));
	submit(&e, sizeof(e));
}

#endif /* __BEYLA_GATE_H */
