"""Kernel records and events as the probes send them, for tracker tests."""

from __future__ import annotations

from beyla_sidecar.bpf.events import (
    EXCHANGE, FLAG_TLS, TRACEPARENT_CAPTURE, ConnTuple, End, Event, EventType, ExchangeRecord, Role,
)

REQ_PREFIX = 256  # BEYLA_REQUEST_CAPTURE_SIZE default
RESP_PREFIX = 64  # BEYLA_RESPONSE_CAPTURE_SIZE default
PID = 5000  # host pid; the thread ids and the namespace pid derive from it
REQ = b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def ns_pid(pid: int) -> int:
    return pid - 4990


def conn_event(etype: EventType, sock: int, role: Role = Role.SERVER, conn: ConnTuple = ConnTuple("", 0, "", 0),
               pid: int = PID, tls: bool = False) -> Event:
    return Event(etype, 1, sock, pid, pid + 1, ns_pid(pid), ns_pid(pid) + 1, role, conn, "app", tls)


def exchange(sock: int, start: int, request: bytes = REQ, response: bytes | None = RESP, *,
             role: Role = Role.SERVER, parent: tuple[int, int] | None = None, tid: int = PID + 1,
             pid: int = PID, tls: bool = False, end: End = End.NEXT_REQUEST, flags: int = 0,
             tasks: tuple[int, ...] = ()) -> ExchangeRecord:
    """One exchange on socket `sock` whose request began at `start` (request until start+10,
    response from start+20 to start+30; response None: none came). Small messages: the
    heads are in the prefixes, for user space to find."""
    resp = b"" if response is None else response
    return ExchangeRecord(
        sock, pid, ns_pid(pid), tid, role, end, flags | (FLAG_TLS if tls else 0),
        start, start + 10, 0 if response is None else start + 20, 0 if response is None else start + 30,
        len(request), len(resp), parent, 0, 0, request[:REQ_PREFIX], resp[:RESP_PREFIX], b"", tasks=tasks)


def ring_bytes(rec: ExchangeRecord, resp_off: int | None = None) -> bytes:
    """`rec` as the probes put it on the ring (struct exchange, probes/beyla.h): the response prefix
    right after the request's, unless `resp_off` places it elsewhere."""
    if resp_off is None:
        resp_off = len(rec.request)
    trace = rec.trace_id.to_bytes(16, "big") if rec.trace_id else b""
    span = rec.span_id.to_bytes(8, "big") if rec.span_id else b""
    parent = rec.parent or (0, 0)
    tasks = (*rec.tasks, 0, 0, 0, 0)[:4]
    head = EXCHANGE.pack(EventType.EXCHANGE, rec.flags, rec.role, rec.end, rec.pid, rec.ns_pid, rec.tid, rec.sock_id,
                         rec.req_start_ns, rec.req_end_ns, rec.resp_start_ns, rec.resp_end_ns, rec.req_bytes,
                         rec.resp_bytes, *parent, rec.req_head, rec.resp_head, len(rec.request), len(rec.response),
                         resp_off, trace, span, *tasks)
    data = bytearray(resp_off + len(rec.response))
    data[:len(rec.request)] = rec.request
    data[resp_off:resp_off + len(rec.response)] = rec.response
    return head + rec.traceparent.ljust(TRACEPARENT_CAPTURE, b"\0") + bytes(data)
