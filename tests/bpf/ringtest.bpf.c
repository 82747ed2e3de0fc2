// A producer for tests/bpf/test_ring.py: every getppid() of target_tgid reserves one ring
// buffer record (seq, then a byte pattern), of a size picked by seq, and submits or discards it.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "../../probes/ringwake.h"

#define NUM_SIZES 8
// Record sizes in bytes, in the order test_ring.py's SIZES lists them.
#define SIZE_0 8
#define SIZE_1 13
#define SIZE_2 64
#define SIZE_3 100
#define SIZE_4 255
#define SIZE_5 400
#define SIZE_6 1001
#define SIZE_7 1500

enum counter { TRIGGERS, DROPS, NUM_COUNTERS };

const volatile __u32 target_tgid = 0;
// Index into the sizes, or NUM_SIZES to cycle through them with seq.
const volatile __u32 size_index = NUM_SIZES;
// Discard records whose seq % discard_every == discard_every - 1 (0: never).
const volatile __u32 discard_every = 0;
// Non-zero: submit flags from the probes' wakeup_flags() with these, instead of submit_flags.
const volatile __u64 wake_threshold = 0;
const volatile __u64 wake_step = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NUM_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

// Flags for bpf_ringbuf_submit (BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP), set by the test.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} submit_flags SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &index);

	if (value)
		__sync_fetch_and_add(value, 1);
}

// size is a constant after inlining: bpf_ringbuf_reserve needs one.
static __always_inline void emit(__u64 seq, const __u32 size)
{
	__u32 zero = 0;
	__u64 *flags = bpf_map_lookup_elem(&submit_flags, &zero);
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u8 *rec = bpf_ringbuf_reserve(&events, size, 0);

	if (!rec) {
		count(DROPS);
		return;
	}
	*(__u64 *)rec = seq;
	for (__u32 i = 8; i < size; i++)
		rec[i] = (__u8)(seq + i);
	if (discard_every && seq % discard_every == discard_every - 1)
		bpf_ringbuf_discard(rec, 0);
	else
		bpf_ringbuf_submit(rec, wake_step ? wakeup_flags(avail, size, wake_threshold, wake_step) :
				   flags ? *flags : 0);
}

SEC("tp/syscalls/sys_enter_getppid")
int on_getppid(void *ctx)
{
	__u32 zero = TRIGGERS;
	__u64 *triggers;
	__u64 seq;

	if (bpf_get_current_pid_tgid() >> 32 != target_tgid)
		return 0;
	triggers = bpf_map_lookup_elem(&counters, &zero);
	if (!triggers)
		return 0;
	seq = __sync_fetch_and_add(triggers, 1);
	switch (size_index < NUM_SIZES ? size_index : seq % NUM_SIZES) {
	case 0: emit(seq, SIZE_0); break;
	case 1: emit(seq, SIZE_1); break;
	case 2: emit(seq, SIZE_2); break;
	case 3: emit(seq, SIZE_3); break;
	case 4: emit(seq, SIZE_4); break;
	case 5: emit(seq, SIZE_5); break;
	case 6: emit(seq, SIZE_6); break;
	default: emit(seq, SIZE_7); break;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
