/* Process lifecycle for discover/: exec, fork, exit. No syscall tracepoint: enabling any
 * sends every syscall of the node through the tracing slow path; discover/ reads new
 * mappings (TLS libraries to probe) from /proc after exec and on its periodic sweep. */
#ifndef __BEYLA_PROCESS_H
#define __BEYLA_PROCESS_H

#include "tls.h"

#define PATH_DEPTH 32

/* An exec event and the path walk's scratch, per CPU (too big for the stack). */
struct exec_scratch {
	struct exec_event e;
	char walk[EXE_PATH_MAX * 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} exec_scratch SEC(".maps");

/* The path of `file` in its mount namespace, as d_path() makes /proc/<pid>/exe's: the names
 * of its dentries up to the root of their mount, then on from the mountpoint in the parent
 * mount, up to the namespace's root mount (no bpf_d_path in tracepoints). Built backwards
 * from walk[EXE_PATH_MAX], then copied to e.path; 0 when longer than EXE_PATH_MAX or deeper
 * than PATH_DEPTH (user space then reads /proc, if the process is still there). Probe reads
 * throughout: the container_of() from a vfsmount to its mount is arithmetic the verifier
 * would refuse on a BTF pointer. */
static __always_inline __u16 exe_path(struct file *file, struct exec_scratch *s)
{
	__u64 mnt_off = bpf_core_field_offset(struct mount, mnt);
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry), *root, *parent;
	struct vfsmount *vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	struct mount *mnt = (void *)vfsmnt - mnt_off, *up;
	const unsigned char *name;
	__u32 off = EXE_PATH_MAX, len, i;

	for (i = 0; i < PATH_DEPTH; i++) {
		root = BPF_CORE_READ(vfsmnt, mnt_root);
		if (dentry == root) {
			up = BPF_CORE_READ(mnt, mnt_parent);
			if (up == mnt)
				goto whole; /* the root of its mount namespace */
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = up;
			vfsmnt = (void *)mnt + mnt_off;
			continue;
		}
		parent = BPF_CORE_READ(dentry, d_parent);
		if (dentry == parent)
			goto whole; /* the root of a filesystem mounted nowhere */
		len = BPF_CORE_READ(dentry, d_name.len);
		name = BPF_CORE_READ(dentry, d_name.name);
		if (len + 1 > off)
			return 0; /* longer than EXE_PATH_MAX */
		off -= len + 1;
		/* the verifier bounds off and len apart, not their sum: walk[] is twice the longest
		 * path so that off (< EXE_PATH_MAX) + 1 + len (< EXE_PATH_MAX) stays inside */
		off = bound_index(off, EXE_PATH_MAX - 1);
		len = bound_index(len, EXE_PATH_MAX - 1);
		if (bpf_probe_read_kernel(&s->walk[off + 1], len, name))
			return 0;
		s->walk[off] = '/';
		dentry = parent;
	}
	return 0; /* deeper than PATH_DEPTH */
whole:
	len = EXE_PATH_MAX - off;
	if (len < 2 || len > EXE_PATH_MAX) /* "" or "/": not an executable's */
		return 0;
	if (bpf_probe_read_kernel(s->e.path, len, &s->walk[off]))
		return 0;
	return len;
}

/* select_at_exec: the verdict on the new executable, if user space gave one, else PENDING
 * with the executable's identity and path, which user space judges when the event reaches it. */
static __always_inline void exec_selection(struct cur_task *cur, __u32 tgid)
{
	struct task_struct *task = cur->task;
	struct exec_scratch *s;
	struct exec_event *e;
	__u8 *verdict, state;
	__u32 zero = 0;
	__u64 size;

	s = bpf_map_lookup_elem(&exec_scratch, &zero);
	if (!s)
		return;
	e = &s->e;
	__builtin_memset(e, 0, offsetof(struct exec_event, path));
	exe_of(task, &e->exe);
	verdict = bpf_map_lookup_elem(&exe_verdicts, &e->exe);
	if (verdict && !*verdict) {
		bpf_map_delete_elem(&allowed_pids, &tgid);
	} else {
		state = verdict ? SELECTED : PENDING;
		bpf_map_update_elem(&allowed_pids, &tgid, &state, BPF_ANY);
	}
	e->ev.type = EVENT_PROCESS_EXEC;
	e->ev.ts_ns = bpf_ktime_get_ns();
	task_ids(cur, &e->ev);
	bpf_get_current_comm(e->ev.comm, sizeof(e->ev.comm));
	if (!verdict) {
		e->ev.flags = FLAG_PENDING;
		e->path_len = exe_path(task->mm->exe_file, s);
	}
	size = offsetof(struct exec_event, path) + e->path_len;
	if (size > sizeof(*e))
		size = sizeof(*e);
	submit_now(e, size, COUNTER_EVENT_DROPS);
}

/* A new executable: its selection is decided here (select_at_exec), or by user space, and
 * until then the process reports nothing. */
SEC("tp/sched/sched_process_exec")
int beyla_exec(void *ctx)
{
	struct cur_task cur;
	__u32 tgid;

	if (!current_filtered(&cur))
		return 0;
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		if (select_at_exec) {
			exec_selection(&cur, tgid);
			return 0;
		}
		bpf_map_delete_elem(&allowed_pids, &tgid);
	}
	task_event(EVENT_PROCESS_EXEC, &cur, true);
	return 0;
}

/* Runs in the parent. A forked child runs the parent's executable: it inherits the
 * parent's selection at once, before user space hears of it (and a pid a process that is
 * gone left behind, if any, is not inherited). */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(beyla_fork, struct task_struct *parent, struct task_struct *child)
{
	struct conn_event e = { .type = EVENT_PROCESS_FORK };
	struct cur_task cur;
	struct pid *pid;
	__u32 level;
	__u8 *state, inherited;

	if (!current_filtered(&cur))
		return 0;
	/* threads are clones too: only a new thread group is a new process */
	if (child->pid != child->tgid)
		return 0;
	pid = child->thread_pid;
	level = pid->level;
	if (level != cur.level)
		return 0; /* CLONE_NEWPID: the child is in a namespace of its own, not the pod's */
	e.pid = child->tgid;
	e.ns_pid = BPF_CORE_READ(pid, numbers[level].nr);
	e.tid = bpf_get_current_pid_tgid() >> 32; /* the parent's tgid */
	e.ns_tid = ns_tgid(&cur);
	if (filter_pids) {
		state = bpf_map_lookup_elem(&allowed_pids, &e.ns_tid);
		if (state) {
			inherited = *state;
			bpf_map_update_elem(&allowed_pids, &e.ns_pid, &inherited, BPF_ANY);
			if (inherited == PENDING)
				e.flags = FLAG_PENDING;
		} else {
			bpf_map_delete_elem(&allowed_pids, &e.ns_pid);
		}
	}
	e.ts_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(e.comm, sizeof(e.comm)); /* the child's, copied from the parent */
	submit(&e, sizeof(e), COUNTER_EVENT_DROPS);
	return 0;
}

/* Per thread: a thread that dies while serving or in a Task step leaves state behind (its
 * SSL_* call, in task storage, goes with it). The last thread of a process reports the
 * process's exit. */
SEC("tp/sched/sched_process_exit")
int beyla_task_exit(void *ctx)
{
	struct task_struct *task;
	struct cur_task cur;
	__u32 tid, tgid;

	if (!current_filtered(&cur))
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_delete_elem(&serving, &tid);
	bpf_map_delete_elem(&pending, &tid);
	bpf_map_delete_elem(&task_steps_map, &tid);
	/* do_exit() decrements signal->live before this tracepoint: 0 for the last thread */
	task = cur.task;
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (filter_pids) {
		tgid = ns_tgid(&cur);
		bpf_map_delete_elem(&allowed_pids, &tgid);
	}
	task_event(EVENT_PROCESS_EXIT, &cur, false);
	return 0;
}

#endif /* __BEYLA_PROCESS_H */
