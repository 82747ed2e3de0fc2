"""Real HTTP/2 byte streams for the HTTP/2 and gRPC tests: an h2 client and server talking in
memory, and the H2Chunk records the kernel would make of their bytes (DATA payloads elided, cut
where the test says)."""

from __future__ import annotations

import random
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.events
import h2.settings

from beyla_sidecar.bpf.events import FLAG_TRUNCATED, H2Chunk, Role

PREFACE = 24
SOCK = 0xABC
TID_UP, TID_DOWN = 501, 502  # the tid of each direction's transfers


class Wire:
    """An h2 client and server; `flush(ts)` moves what each has to send to the other as one
    transfer at `ts` (client's first), until both are quiet."""

    def __init__(self, *, header_table_size: int | None = None, client_table_size: int | None = None) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.up: list[tuple[int, bytes]] = []  # (ts, bytes) client -> server
        self.down: list[tuple[int, bytes]] = []
        self.client.initiate_connection()
        if client_table_size is not None:
            self.client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: client_table_size})
        self.server.initiate_connection()
        if header_table_size is not None:
            self.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: header_table_size})
        self.flush(1)
        self.up[0] = (self.up[0][0], self.up[0][1][PREFACE:])  # the kernel leaves the preface out

    def flush(self, ts: int) -> None:
        while True:
            moved = False
            for src, dst, log in ((self.client, self.server, self.up), (self.server, self.client, self.down)):
                data = src.data_to_send()
                if data:
                    moved = True
                    log.append((ts, data))
                    for ev in dst.receive_data(data):
                        if isinstance(ev, h2.events.DataReceived) and ev.flow_controlled_length:
                            dst.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if not moved:
                return

    def send_data(self, side: h2.connection.H2Connection, sid: int, size: int, end: bool = True) -> None:
        """`size` body bytes in frames of at most 16 KiB."""
        while size > 16384:
            side.send_data(sid, b"b" * 16384)
            size -= 16384
        side.send_data(sid, b"b" * size, end_stream=end)

    def request(self, sid: int, method: str = "GET", path: str = "/", *, extra: Iterable[tuple[str, str]] = (),
                body: int = 0, authority: str = "api.example:8443") -> None:
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority), *extra]
        self.client.send_headers(sid, headers, end_stream=not body)
        if body:
            self.send_data(self.client, sid, body)

    def response(self, sid: int, status: int = 200, body: int = 0, *, extra: Iterable[tuple[str, str]] = (),
                 trailers: Iterable[tuple[str, str]] | None = None) -> None:
        self.server.send_headers(sid, [(":status", str(status)), *extra], end_stream=not body and trailers is None)
        if body:
            self.send_data(self.server, sid, body, end=trailers is None)
        if trailers is not None:
            self.server.send_headers(sid, list(trailers), end_stream=True)


def elided(stream: bytes) -> list[tuple[int, int]]:
    """The payload ranges the kernel leaves out: DATA and types above CONTINUATION."""
    out, at = [], 0
    while at + 9 <= len(stream):
        length = int.from_bytes(stream[at:at + 3], "big")
        if stream[at + 3] == 0 or stream[at + 3] > 9:
            out.append((at + 9, at + 9 + length))
        at += 9 + length
    return out


def frame_types(stream: bytes) -> list[int]:
    out, at = [], 0
    while at + 9 <= len(stream):
        out.append(stream[at + 3])
        at += 9 + int.from_bytes(stream[at:at + 3], "big")
    return out


def kept(stream: bytes, gaps: list[tuple[int, int]], a: int, b: int) -> bytes:
    """stream[a:b] without the elided ranges."""
    parts, at = [], a
    for s, e in gaps:
        if e <= at or s >= b:
            continue
        parts.append(stream[at:max(s, at)])
        at = max(at, min(e, b))
    parts.append(stream[at:b])
    return b"".join(parts)


def direction_chunks(transfers: list[tuple[int, bytes]], recv: bool, role: Role, tid: int,
                     rng: random.Random | None = None, merge: int = 1) -> list[tuple[int, int, H2Chunk]]:
    """The chunks of one direction: one per transfer, or (rng) transfers cut at random offsets
    too, or (merge) runs of `merge` transfers in one chunk (ts: the last transfer's).
    Each item: (ts, order, chunk)."""
    stream = b"".join(d for _, d in transfers)
    gaps = elided(stream)
    bounds: list[tuple[int, int]] = []  # (end offset, ts)
    at = 0
    for k, (ts, data) in enumerate(transfers):
        start, at = at, at + len(data)
        if rng is not None:
            cuts = sorted(rng.sample(range(start + 1, at), min(rng.randint(0, 6), len(data) - 1)))
            bounds.extend((c, ts) for c in cuts)
        if merge == 1 or (k + 1) % merge == 0 or k == len(transfers) - 1:
            bounds.append((at, ts))
    out, a = [], 0
    for seq, (b, ts) in enumerate(bounds):
        out.append((ts, seq, H2Chunk(SOCK, 100, 7, tid, role, recv, 0, seq, ts, b - a, kept(stream, gaps, a, b))))
        a = b
    return out


def chunks(wire: Wire, role: Role = Role.SERVER, rng: random.Random | None = None, merge: int = 1) -> list[H2Chunk]:
    """Both directions' chunks in time order (at one time: the client's first)."""
    up = direction_chunks(wire.up, role is Role.SERVER, role, TID_UP, rng, merge)
    down = direction_chunks(wire.down, role is Role.CLIENT, role, TID_DOWN, rng, merge)
    merged = sorted([(ts, 0, seq, c) for ts, seq, c in up] + [(ts, 1, seq, c) for ts, seq, c in down],
                    key=lambda x: x[:3])
    return [c for *_, c in merged]


def truncate(c: H2Chunk) -> H2Chunk:
    return c._replace(flags=c.flags | FLAG_TRUNCATED, data=c.data[:len(c.data) // 2])
