/* Process lifecycle for discover/: exec, fork, exit. No syscall tracepoint: enabling any
 * sends every syscall of the node through the tracing slow path; discover/ reads new
 * mappings (TLS libraries to probe) from /proc after exec and on its periodic sweep. */
#ifndef __BEYLA_PROCESS_H
#define __BEYLA_PROCESS_H

#include "tls.h"

/* The selection is user space's decision for the new executable: until it is made, the
 * process reports nothing. */
SEC("tp/sched/sched_process_exec")
int beyla_exec(void *ctx)
{
	struct cur_task cur;
	__u32 tgid;

	if (!current_filtered(&cur))
		return 0;
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		bpf_map_delete_elem(&allowed_pids, &tgid);
	}
	task_event(EVENT_PROCESS_EXEC, &cur);
	return 0;
}

/* Runs in the parent. A forked child runs the parent's executable: it inherits the
 * parent's selection at once, before user space hears of it. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(beyla_fork, struct task_struct *parent, struct task_struct *child)
{
	struct conn_event e = { .type = EVENT_PROCESS_FORK };
	struct cur_task cur;
	struct pid *pid;
	__u32 level, tgid;
	__u8 one = 1;

	if (!current_filtered(&cur))
		return 0;
	/* threads are clones too: only a new thread group is a new process */
	if (child->pid != child->tgid)
		return 0;
	pid = child->thread_pid;
	level = pid->level;
	if (level != cur.level)
		return 0; /* CLONE_NEWPID: the child is in a namespace of its own, not the pod's */
	e.pid = e.tid = child->tgid;
	e.ns_pid = e.ns_tid = BPF_CORE_READ(pid, numbers[level].nr);
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		if (bpf_map_lookup_elem(&allowed_pids, &tgid))
			bpf_map_update_elem(&allowed_pids, &e.ns_pid, &one, BPF_ANY);
	}
	e.ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(e.comm, sizeof(e.comm)); /* the child's, copied from the parent */
	submit(&e, sizeof(e));
	return 0;
}

/* Per thread: a thread that dies inside an SSL_* call or while serving leaves state
 * behind. The last thread of a process reports the process's exit. */
SEC("tp/sched/sched_process_exit")
int beyla_task_exit(void *ctx)
{
	struct task_struct *task;
	struct cur_task cur;
	__u32 tid, tgid;

	if (!current_filtered(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&ssl_calls, &tid);
	bpf_map_delete_elem(&serving, &tid);
	/* do_exit() decrements signal->live before this tracepoint: 0 for the last thread */
	task = cur.task;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		bpf_map_delete_elem(&allowed_pids, &tgid);
	}
	task_event(EVENT_PROCESS_EXIT, &cur);
	return 0;
}

#endif /* __BEYLA_PROCESS_H */
