"""Decoding of the records the probes put on the ring buffer (layout: probes/beyla.h)."""

from __future__ import annotations

import socket
import struct
from enum import IntEnum
from typing import NamedTuple

HEADER = struct.Struct("<QQIIIIIHBBBB6x16s16sHHH2x16s")
HEADER_SIZE = HEADER.size  # 104, pinned by tests against beyla.h
MAX_CAPTURE = 1024


class EventType(IntEnum):
    DATA = 1
    CONN_OPEN = 2
    CONN_CLOSE = 3
    # process lifecycle, for discover/ (ids and comm only)
    PROCESS_EXEC = 4
    PROCESS_FORK = 5
    PROCESS_EXIT = 6
    PROCESS_MMAP = 7  # a file mapped executable: maybe a library to probe
    PROCESS_LISTEN = 8


PROCESS_EVENTS = frozenset((EventType.PROCESS_EXEC, EventType.PROCESS_FORK, EventType.PROCESS_EXIT,
                            EventType.PROCESS_MMAP, EventType.PROCESS_LISTEN))
FLAG_TLS = 1


class Direction(IntEnum):
    SEND = 0
    RECV = 1


class Role(IntEnum):
    UNKNOWN = 0
    SERVER = 1
    CLIENT = 2


class ConnTuple(NamedTuple):
    """Local and remote endpoint of a TCP connection, addresses as text."""

    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int


class Event(NamedTuple):
    """One ring-buffer record. `payload` is empty for CONN_OPEN/CONN_CLOSE."""

    type: EventType
    ts_ns: int
    sock_id: int
    pid: int
    tid: int
    ns_pid: int
    ns_tid: int
    bytes: int
    direction: Direction
    role: Role
    tuple: ConnTuple
    comm: str  # task name (16 bytes max), for processes gone before /proc could be read
    payload: bytes
    tls: bool = False  # DATA: plaintext from the TLS library probes, not socket bytes


_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_TYPES: tuple[EventType | None, ...] = (None, *EventType)  # value -> member without Enum.__call__
_DIRECTIONS = tuple(Direction)
_ROLES = tuple(Role)
CACHE_LIMIT = 4096  # distinct addresses / task names remembered before a cache starts over


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == socket.AF_INET6:
        if raw[:12] == _V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw)
    return ""


class Decoder:
    """Decodes records; remembers the text of addresses and task names, which repeat
    on every record of a connection, so the hot path formats each only once."""

    def __init__(self) -> None:
        self._addrs: dict[tuple[int, bytes], str] = {}
        self._comms: dict[bytes, str] = {}

    def _address(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        text = self._addrs.get(key)
        if text is None:
            if len(self._addrs) >= CACHE_LIMIT:
                self._addrs.clear()
            text = self._addrs[key] = _addr(family, raw)
        return text

    def _comm(self, raw: bytes) -> str:
        text = self._comms.get(raw)
        if text is None:
            if len(self._comms) >= CACHE_LIMIT:
                self._comms.clear()
            text = self._comms[raw] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return text

    def decode(self, record: bytes | memoryview) -> Event | None:
        """Decode one record; None when it is too short or of an unknown type."""
        if len(record) < HEADER_SIZE:
            return None
        (ts, sock_id, pid, tid, ns_pid, ns_tid, nbytes, cap, etype, direction, role, flags,
         saddr, daddr, sport, dport, family, comm) = HEADER.unpack_from(record)
        if not 1 <= etype <= 8 or direction > 1 or role > 2:
            return None
        end = HEADER_SIZE + min(cap, len(record) - HEADER_SIZE)
        return Event(
            _TYPES[etype], ts, sock_id, pid, tid, ns_pid, ns_tid, nbytes,  # type: ignore[arg-type]
            _DIRECTIONS[direction], _ROLES[role],
            ConnTuple(self._address(family, saddr), sport, self._address(family, daddr), dport),
            self._comm(comm),
            bytes(record[HEADER_SIZE:end]),
            bool(flags & FLAG_TLS),
        )
