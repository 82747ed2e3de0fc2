/* When a ring buffer record wakes its reader. Below `threshold` unread bytes never: user space
 * drains on its timer, and a forced wakeup is an interrupt the traced thread raises (in a VM an
 * exit to the hypervisor). From there only the record whose footprint crosses a multiple of `step`
 * (a power of two): one wakeup is enough, as the reader then drains until the ring is empty,
 * while waking it for every record until it had caught up took 3.7 % of the programs' time in
 * nginx at 20 000 req/s, before the interrupt itself. The next multiple covers a crossing two
 * CPUs raced past.
 * Shared with tests/bpf/ringtest.bpf.c, which checks it. */
#ifndef __BEYLA_RINGWAKE_H
#define __BEYLA_RINGWAKE_H

#define RINGBUF_HEADER_SIZE 8

static __always_inline __u64 wakeup_flags(__u64 avail, __u64 size, __u64 threshold, __u64 step)
{
	__u64 end = avail + ((size + RINGBUF_HEADER_SIZE + 7) & ~7ULL);

	return end > threshold && (avail ^ end) >= step ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif /* __BEYLA_RINGWAKE_H */
