"""Pipelined HTTP/1.1 requests (issue 14 item 3): one exchange record holding several requests
sent before the first response is recognised and marked, never described as the first request
with the whole batch's sizes; a request followed by nothing but its own declared body (or one
stray CRLF) is not pipelined."""

from __future__ import annotations

from beyla_sidecar.protocols.http1 import HTTP1

from .test_http1 import OK, parse, record

GET = b"GET /p?i=%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"


def test_requests_back_to_back_are_pipelined() -> None:
    batch = b"".join(GET % i for i in range(20))  # longer than the prefix: only the bytes tell
    assert len(batch) > 256
    parsed = parse(batch, OK * 20)
    assert parsed.pipelined and parsed.request.path == "/p"  # type: ignore[attr-defined]
    assert parse(GET % 1 + GET % 2, OK * 2).pipelined
    assert parse(POST + GET % 1, OK * 2).pipelined  # after the declared body, another request
    assert parse(GET % 1 + GET % 2, None).pipelined  # whatever came back


def test_one_request_with_its_body_is_not_pipelined() -> None:
    for wire in (GET % 1, POST, POST + b"\r\n", GET % 1 + b"\r\n"):  # a stray CRLF is tolerated
        parsed = parse(wire)
        assert not parsed.pipelined and parsed.response is not None
    assert parse(POST).request.size == 11


def test_what_cannot_be_measured_is_not_called_pipelined() -> None:
    chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert not parse(chunked + GET % 1, OK * 2).pipelined  # where a chunked body ends: not here
    big_head = b"GET /big HTTP/1.1\r\nX-Pad: " + b"p" * 400 + b"\r\n\r\n"  # its end beyond the prefix
    parsed = HTTP1().parse(record(big_head + GET % 1, OK * 2))
    assert parsed is not None and not parsed.pipelined
