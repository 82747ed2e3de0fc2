"""HTTP/2 framing in the kernel (probes/h2.h): a real h2 conversation replayed over TCP, cut at
arbitrary points across transfers and iovecs, reaches user space as chunks whose kept bytes are
exactly every frame but DATA payloads and the frames of no use (WINDOW_UPDATE, PING, PRIORITY),
with exact byte counts, and no exchange records."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from beyla_sidecar.bpf.events import FLAG_TRUNCATED, Event, EventType, H2Chunk, Role
from beyla_sidecar.bpf.loader import Probes

from . import h2traffic
from .conftest import collect

pytestmark = pytest.mark.bpf


def replay(probes: Probes, arg: str) -> tuple[dict, list]:
    """h2traffic.py `arg` in a new PID namespace: its ports, and the records until both ends closed."""
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                             str(Path(h2traffic.__file__)), arg], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    probes.allow_pid_namespace(json.loads(proc.stdout.readline())["ns_inode"])
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out

    def closed(evs: list) -> bool:
        return sum(isinstance(e, Event) and e.type is EventType.CONN_CLOSE for e in evs) >= 2

    return json.loads(out), collect(probes, closed)


@pytest.mark.parametrize("seed", [0, 10, 20])
def test_h2_chunks_carry_every_frame_but_data_payloads(probes: Probes, seed: int) -> None:
    up, down = h2traffic.conversation()
    assert h2traffic.reported(up, True)[0] < len(up) - 24  # the client's WINDOW_UPDATEs are left out
    ports, events = replay(probes, str(seed))
    opens = {e.sock_id: e for e in events if isinstance(e, Event) and e.type is EventType.CONN_OPEN}
    assert sorted((e.role, e.tuple.local_port) for e in opens.values()) == [
        (Role.SERVER, ports["server_port"]), (Role.CLIENT, ports["client_port"])]
    assert not [e for e in events if not isinstance(e, (Event, H2Chunk))]  # no exchange records at all

    streams: dict[tuple[Role, bool], list[H2Chunk]] = defaultdict(list)
    for chunk in (e for e in events if isinstance(e, H2Chunk)):
        assert opens[chunk.sock_id].role is chunk.role
        streams[chunk.role, chunk.recv].append(chunk)
    expected = {(Role.CLIENT, False): up, (Role.SERVER, True): up,
                (Role.SERVER, False): down, (Role.CLIENT, True): down}
    assert sorted(streams) == sorted(expected)
    for key, chunks in streams.items():
        stream = expected[key]
        preface = stream is up
        assert [c.seq for c in chunks] == list(range(len(chunks))), key
        assert not any(c.flags & FLAG_TRUNCATED for c in chunks), key
        covered, kept = h2traffic.reported(stream, preface)
        assert sum(c.moved for c in chunks) == covered, key
        assert b"".join(c.data for c in chunks) == kept, key
    assert probes.counters()["h2_chunk_drops"] == probes.counters()["read_fails"] == 0


def test_an_oversized_kept_frame_gives_the_framing_up(probes: Probes) -> None:
    """A 1 MiB HEADERS frame (more than user space decodes): each end reports what came before it,
    marked truncated, and then nothing more; no exchange records either."""
    _, events = replay(probes, "oversized")
    streams: dict[tuple[Role, bool], list[H2Chunk]] = defaultdict(list)
    for chunk in (e for e in events if isinstance(e, H2Chunk)):
        streams[chunk.role, chunk.recv].append(chunk)
    assert sorted(streams) == [(Role.SERVER, True), (Role.CLIENT, False)]
    for key, chunks in streams.items():  # the cuts decide how many chunks the empty SETTINGS took
        assert [c.seq for c in chunks] == list(range(len(chunks))), key
        assert [bool(c.flags & FLAG_TRUNCATED) for c in chunks] == [False] * (len(chunks) - 1) + [True], key
        assert b"".join(c.data for c in chunks) == b"\0\0\0\x04\0\0\0\0\0", key
    assert not [e for e in events if not isinstance(e, (Event, H2Chunk))]


def test_h2c_upgrade_walks_frames_from_the_end_of_the_101_head(probes: Probes) -> None:
    """The 101 head and the server's first frames in one write (more than the response prefix): the
    101 exchange holds the head alone, and the frames after it, and the client's preface and
    SETTINGS after that, come as chunks at both ends."""
    request, answer, preface = h2traffic.upgrade()
    head = len(h2traffic.UPGRADE_HEAD)
    assert len(answer) > 256
    _, events = replay(probes, "upgrade")
    exchanges = [e for e in events if not isinstance(e, (Event, H2Chunk))]
    assert sorted((e.role, e.req_bytes, e.resp_bytes, e.response[:head]) for e in exchanges) == [
        (Role.SERVER, len(request), head, h2traffic.UPGRADE_HEAD),
        (Role.CLIENT, len(request), head, h2traffic.UPGRADE_HEAD)]
    streams: dict[tuple[Role, bool], list[H2Chunk]] = defaultdict(list)
    for chunk in (e for e in events if isinstance(e, H2Chunk)):
        streams[chunk.role, chunk.recv].append(chunk)
    expected = {(Role.SERVER, False): (answer[head:], False), (Role.CLIENT, True): (answer[head:], False),
                (Role.CLIENT, False): (preface, True), (Role.SERVER, True): (preface, True)}
    assert sorted(streams) == sorted(expected)
    for key, chunks in streams.items():
        stream, has_preface = expected[key]
        covered, kept = h2traffic.reported(stream, has_preface)
        assert [c.seq for c in chunks] == list(range(len(chunks))), key
        assert not any(c.flags & FLAG_TRUNCATED for c in chunks), key
        assert (sum(c.moved for c in chunks), b"".join(c.data for c in chunks)) == (covered, kept), key
