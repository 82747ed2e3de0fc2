"""RingReader against a real producer in the kernel: ringtest.bpf.c writes one record per
getppid() of a target process (seq, then a byte pattern; sizes cycle through SIZES), counts
its triggers and the records the full ring refused, and can discard records."""

from __future__ import annotations

import os
import platform
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from beyla_sidecar.bpf.libbpf import BpfObject
from beyla_sidecar.bpf.ring import HEADER_SIZE, RingReader

SOURCE = Path(__file__).with_name("ringtest.bpf.c")
CLANG = os.environ.get("CLANG", "clang-16")
SIZES = (8, 13, 64, 100, 255, 400, 1001, 1500)  # as in ringtest.bpf.c
SMALL_RING = 16 << 10
BPF_RB_NO_WAKEUP = 1
BPF_RB_FORCE_WAKEUP = 2
PATTERN = bytes(range(256)) * 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def payload(seq: int, size: int) -> bytes:
    """What the program writes: seq (u64), then byte i = (seq + i) & 0xff."""
    start = (seq + 8) & 0xFF
    return _U64.pack(seq) + PATTERN[start:start + size - 8]


def cycled(seq: int) -> bytes:
    return payload(seq, SIZES[seq % len(SIZES)])


def footprint(size: int) -> int:
    """Bytes a record takes in the ring: header plus payload, padded to 8."""
    return (size + HEADER_SIZE + 7) & ~7


@pytest.fixture(scope="session")
def ringtest_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ringtest") / "ringtest.bpf.o"
    subprocess.run([CLANG, "-g", "-O2", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3",
                    f"-I/usr/include/{platform.machine()}-linux-gnu", "-c", str(SOURCE), "-o", str(out)],
                   check=True)
    return out


class RingProgram:
    """ringtest.bpf.c loaded and attached for one target process, with a RingReader on its ring."""

    def __init__(self, path: Path, tgid: int, ring_size: int, size_index: int | None,
                 discard_every: int, wake: tuple[int, int]) -> None:
        self._obj = BpfObject(path)
        self._obj.set_rodata("target_tgid", _U32.pack(tgid))
        self._obj.set_rodata("size_index", _U32.pack(len(SIZES) if size_index is None else size_index))
        self._obj.set_rodata("discard_every", _U32.pack(discard_every))
        self._obj.set_rodata("wake_threshold", _U64.pack(wake[0]))
        self._obj.set_rodata("wake_step", _U64.pack(wake[1]))
        self._obj.map("events").set_max_entries(ring_size)
        self._obj.load()
        self._link = next(self._obj.programs()).attach()
        self.fd = self._obj.map("events").fd
        self.reader = RingReader(self.fd, ring_size)

    def set_submit_flags(self, flags: int) -> None:
        self._obj.map("submit_flags").update(_U32.pack(0), _U64.pack(flags))

    def counter(self, index: int) -> int:
        (value,) = _U64.unpack(self._obj.map("counters").lookup(_U32.pack(index)) or b"")
        return value

    @property
    def triggers(self) -> int:
        return self.counter(0)

    @property
    def drops(self) -> int:
        return self.counter(1)

    def close(self) -> None:
        self.reader.close()
        self._link.destroy()
        self._obj.close()


RingFactory = Callable[..., RingProgram]


@pytest.fixture
def ring_program(ringtest_object: Path) -> Iterator[RingFactory]:
    made: list[RingProgram] = []

    def make(tgid: int | None = None, ring_size: int = SMALL_RING, size_index: int | None = None,
             discard_every: int = 0, wake: tuple[int, int] = (0, 0)) -> RingProgram:
        made.append(RingProgram(ringtest_object, os.getpid() if tgid is None else tgid, ring_size,
                                size_index, discard_every, wake))
        return made[-1]

    yield make
    for program in made:
        program.close()


def trigger(n: int) -> None:
    for _ in range(n):
        os.getppid()


def collect(reader: RingReader, limit: int | None = None) -> list[bytes]:
    """Drain into copies (the views are only valid during the call)."""
    records: list[bytes] = []
    assert reader.drain(lambda view: records.append(bytes(view)), limit) == len(records)
    return records


@pytest.mark.bpf
def test_every_record_in_order_with_its_length_and_contents(ring_program: RingFactory) -> None:
    program = ring_program(ring_size=64 << 10)
    trigger(64)
    assert collect(program.reader) == [cycled(seq) for seq in range(64)]
    assert collect(program.reader) == []
    assert (program.triggers, program.drops) == (64, 0)


@pytest.mark.bpf
def test_discarded_records_are_skipped(ring_program: RingFactory) -> None:
    program = ring_program(ring_size=64 << 10, discard_every=3)
    trigger(60)
    assert collect(program.reader) == [cycled(seq) for seq in range(60) if seq % 3 != 2]
    assert (program.triggers, program.drops) == (60, 0)


@pytest.mark.bpf
def test_wraps_around_many_times(ring_program: RingFactory) -> None:
    """20 000 records through a 16 KiB ring, drained every 8: well under a full ring each time."""
    program = ring_program(discard_every=5)
    records: list[bytes] = []
    for _ in range(20000 // 8):
        trigger(8)
        records += collect(program.reader)
    assert records == [cycled(seq) for seq in range(20000) if seq % 5 != 4]
    assert (program.triggers, program.drops) == (20000, 0)
    positions = [0]
    for seq in range(20000):
        positions.append(positions[-1] + footprint(SIZES[seq % len(SIZES)]))
    straddling = sum(1 for start, end in zip(positions, positions[1:])
                     if start // SMALL_RING != (end - 1) // SMALL_RING)
    assert positions[-1] // SMALL_RING > 500
    assert straddling > 100  # records split by the end of the data area, read whole


@pytest.mark.bpf
def test_a_full_ring_drops_and_counts_what_does_not_fit(ring_program: RingFactory) -> None:
    program = ring_program(size_index=SIZES.index(400))
    fits = SMALL_RING // footprint(400)
    trigger(100)
    assert collect(program.reader) == [payload(seq, 400) for seq in range(fits)]
    assert (program.triggers, program.drops) == (100, 100 - fits)
    trigger(10)  # drained: the space is the producer's again
    assert collect(program.reader) == [payload(seq, 400) for seq in range(100, 110)]
    assert (program.triggers, program.drops) == (110, 100 - fits)


@pytest.mark.bpf
def test_backlog_is_the_share_of_the_ring_not_read_yet(ring_program: RingFactory) -> None:
    program = ring_program(size_index=SIZES.index(400))
    assert program.reader.backlog() == 0
    trigger(10)
    assert program.reader.backlog() == 10 * footprint(400) / SMALL_RING
    collect(program.reader, limit=4)
    assert program.reader.backlog() == 6 * footprint(400) / SMALL_RING
    collect(program.reader)
    assert program.reader.backlog() == 0


@pytest.mark.bpf
def test_limit_stops_early_and_the_rest_stays(ring_program: RingFactory) -> None:
    program = ring_program(discard_every=4)
    trigger(12)
    kept = [cycled(seq) for seq in range(12) if seq % 4 != 3]
    assert collect(program.reader, limit=4) == kept[:4]
    assert collect(program.reader, limit=0) == []
    assert collect(program.reader) == kept[4:]


@pytest.mark.bpf
def test_a_record_whose_handler_raised_is_consumed(ring_program: RingFactory) -> None:
    program = ring_program()
    trigger(5)
    seen: list[int] = []

    def fail_on_2(view: memoryview) -> None:
        (seq,) = _U64.unpack_from(view)
        seen.append(seq)
        if seq == 2:
            raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        program.reader.drain(fail_on_2)
    assert seen == [0, 1, 2]
    assert collect(program.reader) == [cycled(3), cycled(4)]


@pytest.mark.bpf
def test_wait_returns_on_a_forced_wakeup_and_not_before(ring_program: RingFactory) -> None:
    """A record submitted with BPF_RB_NO_WAKEUP leaves the reader asleep until its timeout;
    one with BPF_RB_FORCE_WAKEUP wakes it at once."""
    program = ring_program()

    def wait_while_producing(flags: int, timeout_ms: int) -> tuple[bool, float]:
        program.set_submit_flags(flags)
        producer = threading.Timer(0.1, os.getppid)
        start = time.monotonic()
        producer.start()
        ready = program.reader.wait(timeout_ms)
        elapsed = time.monotonic() - start
        producer.join()
        return ready, elapsed

    ready, elapsed = wait_while_producing(BPF_RB_NO_WAKEUP, 600)
    assert not ready and elapsed >= 0.59
    ready, elapsed = wait_while_producing(BPF_RB_FORCE_WAKEUP, 10000)
    assert ready and 0.09 <= elapsed < 2
    assert collect(program.reader) == [cycled(0), cycled(1)]


@pytest.mark.bpf
def test_a_watched_fd_ends_the_wait_and_is_emptied(ring_program: RingFactory) -> None:
    """A stop signal's wakeup pipe: a byte in it ends a long wait at once, without a record, and
    is read; the next wait then lasts its timeout again."""
    program = ring_program()
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    try:
        program.reader.watch(read_end)
        writer = threading.Timer(0.1, os.write, (write_end, b"\x0f\x0f"))
        start = time.monotonic()
        writer.start()
        ready = program.reader.wait(10000)
        elapsed = time.monotonic() - start
        writer.join()
        assert not ready and 0.09 <= elapsed < 2
        with pytest.raises(BlockingIOError):
            os.read(read_end, 1)
        start = time.monotonic()
        assert not program.reader.wait(300)
        assert time.monotonic() - start >= 0.29
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.bpf
def test_past_the_threshold_the_reader_is_woken_once_per_step_not_per_record(ring_program: RingFactory) -> None:
    """The probes' wakeup policy (probes/ringwake.h), with a reader that does not read: no wakeup
    until `threshold` bytes are unread, then exactly one for each multiple of `step` the records
    cross, at the record that crosses it (the policy before woke it for each record)."""
    threshold, step, n = 4096, 1024, 100
    program = ring_program(size_index=SIZES.index(100), wake=(threshold, step))
    edges = select.epoll(1)
    edges.register(program.fd, select.EPOLLIN | select.EPOLLET)  # one event per wakeup
    try:
        woken = [seq for seq in range(n) if os.getppid() and edges.poll(0.01)]
    finally:
        edges.close()
    size = footprint(100)
    crossing = [seq for seq in range(n)
                if (seq + 1) * size > threshold and seq * size // step != (seq + 1) * size // step]
    assert crossing[:2] == [36, 45] and len(crossing) == (n * size // step) - threshold // step + 1
    assert woken == crossing
    assert len(collect(program.reader)) == n


@pytest.mark.bpf
def test_a_concurrent_producer_loses_nothing_silently(ring_program: RingFactory) -> None:
    """Another process writes while we read (on another CPU where there is one): every record
    arrives whole and in order, and what did not fit is counted."""
    n = 200_000
    child = subprocess.Popen(
        [sys.executable, "-c", f"import os, sys; sys.stdin.readline(); [os.getppid() for _ in range({n})]"],
        stdin=subprocess.PIPE, text=True)
    assert child.stdin is not None
    try:
        program = ring_program(tgid=child.pid)
        seqs: list[int] = []

        def check(view: memoryview) -> None:
            (seq,) = _U64.unpack_from(view)
            assert view == cycled(seq)
            seqs.append(seq)

        child.stdin.write("go\n")
        child.stdin.flush()
        while child.poll() is None:
            program.reader.wait(10)
            program.reader.drain(check)
        program.reader.drain(check)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == 0
    assert program.triggers == n
    assert len(seqs) == n - program.drops > 0
    assert all(a < b for a, b in zip(seqs, seqs[1:]))


@pytest.mark.parametrize("size", [0, 4096 * 3, 1000])
def test_the_size_must_be_a_power_of_two_of_pages(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        RingReader(-1, size)


@pytest.mark.bpf
def test_close_is_idempotent(ring_program: RingFactory) -> None:
    program = ring_program()
    program.reader.close()
    program.reader.close()
