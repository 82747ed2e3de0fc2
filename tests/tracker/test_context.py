from beyla_sidecar.tracker.context import (
    TraceContext, client_context, new_span_id, parse_traceparent, server_context,
)

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_parse_valid_traceparent() -> None:
    assert parse_traceparent(TP) == (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True)
    assert parse_traceparent(TP[:-2] + "00")[2] is False


def test_parse_rejects_invalid_traceparent() -> None:
    for bad in (None, "", "garbage", TP.replace("4bf9", "zzzz"), "ff" + TP[2:],
                "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
                TP + "-extra", "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"):
        assert parse_traceparent(bad) is None, bad


def test_server_context_continues_incoming_trace() -> None:
    ctx = server_context(TP)
    assert ctx.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert ctx.parent_span_id == 0x00F067AA0BA902B7 and ctx.parent_remote
    assert ctx.span_id not in (0, ctx.parent_span_id)


def test_server_context_without_header_is_a_new_root() -> None:
    a, b = server_context(None), server_context("junk")
    assert a.parent_span_id == 0 and b.parent_span_id == 0
    assert a.trace_id != b.trace_id and 0 not in (a.trace_id, a.span_id)


def test_client_context_is_child_of_serving_span() -> None:
    serving = TraceContext(trace_id=7, span_id=9, sampled=False)
    child = client_context(serving)
    assert (child.trace_id, child.parent_span_id, child.parent_remote, child.sampled) == (7, 9, False, False)
    assert client_context(None).parent_span_id == 0


def test_span_ids_are_never_zero() -> None:
    assert all(new_span_id() for _ in range(10_000))
