"""Application protocols: one module each, listed once in `all_protocols`."""

from __future__ import annotations

from .base import Protocol
from .http2 import frames_prefix

_PG_STARTUP = (196608, 80877103, 80877104)  # protocol 3.0, SSLRequest, GSSENCRequest


def all_protocols(db_query_text: str = "sanitized") -> tuple[Protocol, ...]:
    """Every protocol, in the order detection tries them. `db_query_text`: BEYLA_DB_QUERY_TEXT."""
    from .grpc import GRPC
    from .http1 import HTTP1
    from .http2 import HTTP2
    from .kafka import Kafka
    from .memcached import Memcached
    from .mysql import MySQL
    from .postgresql import PostgreSQL
    from .redis import Redis

    # HTTP2 and GRPC match no exchange record (last): the tracker hands HTTP2 the HTTP/2 chunks,
    # and HTTP2 hands gRPC streams to this GRPC (listed for its metric instruments)
    grpc = GRPC()
    return (HTTP1(), Redis(db_query_text), PostgreSQL(db_query_text), MySQL(db_query_text),
            Memcached(db_query_text), Kafka(), HTTP2(grpc), grpc)


def guess_protocol(request: bytes, response: bytes) -> str:
    """What traffic no protocol module recognised looks like, for the unrecognised-traffic
    counter: a cheap sniff of the first exchange's prefixes, never used for parsing."""
    if request[:1] == b"\x16" and request[1:2] == b"\x03":
        return "tls"
    if request.startswith(b"PRI * HTTP/2.0") or frames_prefix(request):
        return "http2"  # frames: a connection opened before the kernel could see its preface
    if request[:1] == b"\x80" and len(request) >= 24 and request[5] == 0 and response[:1] in (b"\x81", b""):
        return "memcached-binary"  # a binary protocol request header (magic 0x80, raw data type)
    if request[:1] in (b"*", b"+") and b"\r\n" in request[:32]:
        return "redis"
    if len(request) >= 8 and int.from_bytes(request[4:8], "big") in _PG_STARTUP:
        return "postgresql"
    if request[:1] in (b"Q", b"P", b"B", b"X") and response[:1] in (b"T", b"C", b"1", b"2", b"E", b"Z"):
        return "postgresql"
    if len(request) >= 8 and int.from_bytes(request[:4], "big") == len(request) - 4 and request[4:6] < b"\x00\x80":
        return "kafka"
    if response.startswith(b"HTTP/") or request[:8].isalpha():
        return "http"
    return "unknown"
