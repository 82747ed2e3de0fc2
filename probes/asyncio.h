/* Which asyncio Task runs on a thread (uprobes on CPython's _asyncio accelerator, 3.8-3.11).
 * Attached by user space (discover/asyncio_hooks.py finds the functions, symbols or not) to each
 * _asyncio module file; the gate is checked here. An event loop serves many requests on one
 * thread, so the thread alone does not say which request a call belongs to; the Task does:
 * a client request carries the Task that sent it and the Tasks that created it, a server
 * response the Task that began it, and user space gives a call the request its Task answered.
 * BPF_KPROBE/BPF_KRETPROBE: the same pt_regs argument access serves uprobes. */
#ifndef __BEYLA_ASYNCIO_H
#define __BEYLA_ASYNCIO_H

#include "conn.h"

#define MAX_TASKS 16384
#define STEP_DEPTH 4
/* TaskStepMethWrapper: PyObject_HEAD (16 bytes on 64-bit), then TaskObj *sw_task */
#define SW_TASK_OFFSET 16

/* Key 0: _asyncio files probed now (user space keeps it). While 0, the exchange probes skip
 * the Task lookups (asyncio_probed): an array lookup is inlined, a hash lookup is not. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} asyncio_files SEC(".maps");

/* A Task* is a user address: only unique within one process. */
struct task_key {
	__u32 tgid; /* host tgid */
	__u32 _pad;
	__u64 task;
};

/* (tgid, Task*) -> the Task running on the thread that created it; 0: created outside any
 * Task (a protocol callback, as uvicorn's per-request Task is). A freed Task's address is
 * reused by a later one, whose creation overwrites the entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_TASKS);
	__type(key, struct task_key);
	__type(value, __u64);
} task_creators SEC(".maps");

/* The Tasks whose steps run on a thread, innermost last: a step starts another only through
 * eager tasks (3.12+), so depth is 1 but for them. Steps past STEP_DEPTH count, unnamed. */
struct task_steps {
	__u32 depth;
	__u32 _pad;
	__u64 task[STEP_DEPTH];
};

/* A zeroed task_steps to create entries from (map values are not stack values). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct task_steps);
} task_steps_blank SEC(".maps");

/* host tid -> its Task steps; deleted with the thread (sched_process_exit). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_THREADS);
	__type(key, __u32);
	__type(value, struct task_steps);
} task_steps_map SEC(".maps");

static __always_inline bool asyncio_probed(void)
{
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&asyncio_files, &zero);

	return n && *n;
}

/* The Task whose step runs on the thread now; 0: none (or nested too deep to know). */
static __always_inline __u64 running_task(__u32 tid)
{
	struct task_steps *s = bpf_map_lookup_elem(&task_steps_map, &tid);
	__u32 depth;

	if (!s)
		return 0;
	depth = s->depth;
	if (depth == 0 || depth > STEP_DEPTH)
		return 0;
	return s->task[(depth - 1) & (STEP_DEPTH - 1)]; /* the mask bounds the index for the verifier */
}

/* The running Task, then its creator, its creator's creator... (0 after the last). */
static __always_inline void task_chain(__u32 tgid, __u32 tid, __u64 *chain)
{
	struct task_key key = { .tgid = tgid };
	__u64 *creator;

	chain[0] = running_task(tid);
	for (int i = 1; i < TASK_CHAIN; i++) {
		chain[i] = 0;
		key.task = chain[i - 1];
		if (!key.task)
			continue;
		creator = bpf_map_lookup_elem(&task_creators, &key);
		if (creator)
			chain[i] = *creator;
	}
}

/* A step of `task` begins on the current thread (which passed the gate). */
static __always_inline void push_step(__u64 task)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct task_steps *s = bpf_map_lookup_elem(&task_steps_map, &tid);
	__u32 zero = 0;

	if (!s) {
		struct task_steps *blank = bpf_map_lookup_elem(&task_steps_blank, &zero);

		if (!blank)
			return;
		bpf_map_update_elem(&task_steps_map, &tid, blank, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&task_steps_map, &tid);
		if (!s)
			return;
	}
	if (s->depth < STEP_DEPTH)
		s->task[s->depth & (STEP_DEPTH - 1)] = task;
	s->depth++;
}

/* int _asyncio_Task___init__(TaskObj *self, PyObject *args, PyObject *kwds): Task.__init__ */
SEC("uprobe")
int BPF_KPROBE(beyla_aio_init, void *task)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_key key = { .tgid = pid_tgid >> 32, .task = (__u64)task };
	__u64 creator;
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	creator = running_task((__u32)pid_tgid);
	bpf_map_update_elem(&task_creators, &key, &creator, BPF_ANY);
	return 0;
}

/* PyObject *TaskStepMethWrapper_call(TaskStepMethWrapper *o, ...): a Task's first step, and
 * the steps call_soon schedules */
SEC("uprobe")
int BPF_KPROBE(beyla_aio_step, void *wrapper)
{
	struct cur_task cur;
	__u64 task = 0;

	if (!current_selected(&cur))
		return 0;
	/* unreadable: pushed as 0 (unknown Task), so that the return pops what this pushed */
	bpf_probe_read_user(&task, sizeof(task), (const char *)wrapper + SW_TASK_OFFSET);
	push_step(task);
	return 0;
}

/* PyObject *task_wakeup(TaskObj *task, PyObject *fut): the steps after an awaited future */
SEC("uprobe")
int BPF_KPROBE(beyla_aio_wake, void *task)
{
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	push_step((__u64)task);
	return 0;
}

/* Return of either step function. User space attaches it before the entries and detaches it
 * after them, so that no push goes without its pop; a return whose entry it did not see finds
 * depth 0. */
SEC("uretprobe")
int BPF_KRETPROBE(beyla_aio_ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct task_steps *s;
	struct cur_task cur;

	if (!current_selected(&cur))
		return 0;
	s = bpf_map_lookup_elem(&task_steps_map, &tid);
	if (s && s->depth)
		s->depth--;
	return 0;
}

#endif /* __BEYLA_ASYNCIO_H */
