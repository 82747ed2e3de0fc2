"""Reader of a BPF ring buffer map straight from its shared memory: no libbpf, no ctypes
call per record.

The kernel's layout (kernel/bpf/ringbuf.c), as user space maps it:

    offset 0          one page, read-write:  consumer_pos (u64), written only by us
    offset page_size  one page, read-only:   producer_pos (u64)
                      then the data area, read-only, mapped twice in a row so that a record
                      wrapping past the end is contiguous

Positions only grow; `pos & (size - 1)` is the offset in the data area. Each record is an
8-byte header (u32 length with BUSY_BIT while reserved and DISCARD_BIT if discarded, then a
u32 the kernel uses) followed by the payload, padded to 8 bytes.

Memory ordering. The producer writes the payload, then clears BUSY with a release store, and
publishes producer_pos with a release store. Like libbpf we read producer_pos, then each
header, then the payload, and give space back by storing consumer_pos after the handler ran.
Every u64/u32 is read and written through a native-format memoryview cast: one aligned load
or store, never torn (struct's "<Q" would assemble the value byte by byte).
- x86-64 (TSO) keeps loads in program order and never moves a store before earlier loads,
  and CPython cannot reorder across its C calls, so plain loads and stores are acquire and
  release here: this is exactly libbpf's smp_load_acquire/smp_store_release on x86.
- arm64 may reorder loads: a strict reader needs a load-acquire (LDAR) for producer_pos and
  each header, and a store-release for consumer_pos. Pure Python cannot emit them; the
  hundreds of instructions CPython runs between a header check and the payload read put a
  reordering far outside any out-of-order window, but that is not an architectural guarantee.
  A strict arm64 port reads those words through a tiny C helper (__atomic_load_n ACQUIRE).
"""

from __future__ import annotations

import mmap
import os
import select
from collections.abc import Callable

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
LENGTH_MASK = DISCARD_BIT - 1
HEADER_SIZE = 8

RecordHandler = Callable[[memoryview], None]


class RingReader:
    """Consumer of one BPF_MAP_TYPE_RINGBUF map (`size`: its max_entries, in bytes).

    Not thread-safe: one reader per ring. The map fd must stay open until close().
    """

    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        if size < page or size & (size - 1):
            raise ValueError(f"ring buffer size {size}: must be a power of two >= {page}")
        self._mask = size - 1
        self._consumer_map = mmap.mmap(map_fd, page, access=mmap.ACCESS_WRITE, offset=0)
        self._producer_map = mmap.mmap(map_fd, page + 2 * size, access=mmap.ACCESS_READ,
                                       offset=page)
        self._consumer = memoryview(self._consumer_map).cast("Q")
        with memoryview(self._producer_map) as whole:
            self._producer = whole[:8].cast("Q")
            self._data = whole[page:]
        self._headers = self._data.cast("I")
        self._map_fd = map_fd
        self._epoll = select.epoll(2)
        self._epoll.register(map_fd, select.EPOLLIN)

    def watch(self, fd: int) -> None:
        """End waits also when `fd` (non-blocking, e.g. signal.set_wakeup_fd's pipe) turns
        readable; its bytes are read and dropped, and the caller looks at why it woke."""
        self._epoll.register(fd, select.EPOLLIN)

    def wait(self, timeout_ms: int) -> bool:
        """Block until the map fd (or the watched fd) is readable or timeout_ms passed; True when
        the map fd is. Level-triggered epoll, as libbpf's ring_buffer__poll: it returns at once
        when the previous wait returned True and the ring is not empty, else only when a producer
        wakes the reader (a submit without BPF_RB_NO_WAKEUP that finds the reader caught up, or
        BPF_RB_FORCE_WAKEUP)."""
        ready = False
        for fd, _ in self._epoll.poll(timeout_ms / 1000):
            if fd == self._map_fd:
                ready = True
            else:
                _empty(fd)
        return ready

    def backlog(self) -> float:
        """The share of the ring the producers filled and the reader has not consumed yet."""
        return (self._producer[0] - self._consumer[0]) / (self._mask + 1)

    def drain(self, handler: RecordHandler, limit: int | None = None) -> int:
        """Hand every committed record, in order, to handler; return how many.

        The memoryview is the record's payload inside the ring itself: valid only during the
        call (copy what you keep; the producer reuses the space afterwards, and close() fails
        while a view is still referenced). Discarded records are skipped; a record still being
        written stops the drain. Stops after `limit` records if given. The space goes back to
        the producer once per batch, or at once when handler raises (that record counts as
        consumed and the exception propagates)."""
        if limit is not None and limit < 1:
            return 0
        consumer, producer, headers, data = self._consumer, self._producer, self._headers, self._data
        mask = self._mask
        count = 0
        cons = consumer[0]
        try:
            while True:
                batch_start = cons
                prod = producer[0]
                while cons < prod:
                    offset = cons & mask
                    header = headers[offset >> 2]
                    if header >= DISCARD_BIT:  # one test for the rare BUSY or DISCARD
                        if header & BUSY_BIT:
                            return count
                        cons += ((header & LENGTH_MASK) + HEADER_SIZE + 7) & -8
                        continue
                    cons += (header + HEADER_SIZE + 7) & -8  # header + payload, padded to 8
                    offset += HEADER_SIZE
                    handler(data[offset:offset + header])
                    count += 1
                    if count == limit:
                        return count
                if cons == batch_start:
                    return count
                consumer[0] = cons
        finally:
            consumer[0] = cons

    def close(self) -> None:
        """Unmap and stop waiting (idempotent)."""
        if self._epoll.closed:
            return
        self._epoll.close()
        for view in (self._headers, self._data, self._producer, self._consumer):
            view.release()
        self._producer_map.close()
        self._consumer_map.close()


def _empty(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


__all__ = ["BUSY_BIT", "DISCARD_BIT", "HEADER_SIZE", "RecordHandler", "RingReader"]
