import random

import pytest

from beyla_sidecar.tracker.context import (
    TraceContext, client_context, make_sampler, new_span_id, new_trace_id, parse_traceparent, server_context,
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


def test_kernel_ids_propagation() -> None:
    """With propagation the kernel chose the ids: a root server span takes its trace id, a TCP
    option's context makes it a child, a header wins over both, a client span takes the ids it
    wrote (its parent only when in the same trace)."""
    assert server_context(None, kernel_trace=0xAB).trace_id == 0xAB
    remote = server_context(None, kernel_trace=0xAB, remote_span=0xCD)
    assert (remote.trace_id, remote.parent_span_id, remote.parent_remote) == (0xAB, 0xCD, True)
    assert server_context(TP, kernel_trace=0xAB, remote_span=0xCD).trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    serving = TraceContext(trace_id=7, span_id=9)
    child = client_context(serving, kernel_trace=7, kernel_span=0x55)
    assert (child.trace_id, child.span_id, child.parent_span_id) == (7, 0x55, 9)
    other = client_context(serving, kernel_trace=8, kernel_span=0x55)
    assert (other.trace_id, other.span_id, other.parent_span_id) == (8, 0x55, 0)
    assert client_context(None, kernel_trace=8, kernel_span=0x55)[:3] == (8, 0x55, 0)


def test_an_all_zero_draw_is_never_issued_as_an_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # W3C forbids all-zero ids; real draws give one once in 2**64, so the draws are scripted.
    draws = iter([0, 0, 7, 0, 9])
    widths: list[int] = []

    def getrandbits(bits: int) -> int:
        widths.append(bits)
        return next(draws)

    monkeypatch.setattr(random, "getrandbits", getrandbits)
    assert (new_span_id(), new_trace_id()) == (7, 9)
    assert widths == [64, 64, 64, 128, 128]


# --- Sampling (OTEL_TRACES_SAMPLER) ---

UNSAMPLED_TP = TP[:-2] + "00"


def test_traceidratio_keeps_its_ratio_of_root_spans() -> None:
    sampler = make_sampler("traceidratio", 0.25)
    n, p = 20_000, 0.25
    kept = sum(server_context(None, sampler).sampled for _ in range(n))
    sigma = (n * p * (1 - p)) ** 0.5  # ~61: 4 sigma is +-5 %, and a false failure once in 16 000 runs
    assert abs(kept - n * p) <= 4 * sigma, kept


def test_traceidratio_decides_on_the_low_64_bits_like_the_otel_sdk() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

    ours, sdk = make_sampler("traceidratio", 0.3), TraceIdRatioBased(0.3)
    for trace_id in [new_trace_id() for _ in range(2000)] + [1, (1 << 64) - 1, 1 << 64, sdk.bound - 1, sdk.bound]:
        expected = sdk.should_sample(None, trace_id, "span").decision is Decision.RECORD_AND_SAMPLE
        assert ours(trace_id, None) is expected, hex(trace_id)
    # The high 64 bits do not matter: services with 64-bit trace ids agree.
    assert ours(0x1234 << 64 | 5, None) and not ours(0xFFFF << 64 | (1 << 64) - 1, None)


def test_traceidratio_ignores_the_parent_and_its_bounds() -> None:
    low, high = make_sampler("traceidratio", 0.0), make_sampler("traceidratio", 1.0)
    assert not any(low(new_trace_id(), True) for _ in range(1000))
    assert all(high(new_trace_id(), False) for _ in range(1000))
    with pytest.raises(ValueError):
        make_sampler("traceidratio", 1.5)


def test_always_off_samples_nothing_always_on_everything() -> None:
    off, on = make_sampler("always_off"), make_sampler("always_on")
    serving = TraceContext(7, 9, sampled=True)
    assert not any(server_context(tp, off).sampled or client_context(serving, off).sampled
                   for tp in (None, TP) for _ in range(100))
    # always_on overrides a caller that did not sample (the spec's non-parent-based sampler).
    assert server_context(UNSAMPLED_TP, on).sampled and client_context(TraceContext(7, 9, sampled=False), on).sampled


def test_parentbased_follows_the_remote_parent_flag() -> None:
    for name in ("parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"):
        sampler = make_sampler(name, 0.0)
        assert server_context(TP, sampler).sampled, name
        assert not server_context(UNSAMPLED_TP, sampler).sampled, name


def test_parentbased_follows_the_local_parent_flag() -> None:
    for name in ("parentbased_always_on", "parentbased_always_off"):
        sampler = make_sampler(name)
        assert client_context(TraceContext(7, 9, sampled=True), sampler).sampled
        assert not client_context(TraceContext(7, 9, sampled=False), sampler).sampled


def test_parentbased_roots_use_the_root_sampler() -> None:
    assert all(server_context(None, make_sampler("parentbased_always_on")).sampled for _ in range(100))
    assert not any(client_context(None, make_sampler("parentbased_always_off")).sampled for _ in range(100))
    ratio = make_sampler("parentbased_traceidratio", 0.5)
    roots = [server_context(None, ratio) for _ in range(400)]
    assert {c.sampled for c in roots} == {True, False}
    assert all(c.sampled is ratio(c.trace_id, None) for c in roots)


def test_default_sampler_is_parentbased_always_on() -> None:
    assert server_context(None).sampled and not server_context(UNSAMPLED_TP).sampled
    assert not client_context(TraceContext(7, 9, sampled=False)).sampled


def test_every_configurable_sampler_exists() -> None:
    from beyla_sidecar.config import SAMPLERS

    assert {type(make_sampler(name, 0.5)).__name__ for name in SAMPLERS} == {
        "AlwaysOn", "AlwaysOff", "TraceIdRatio", "ParentBased"}
    with pytest.raises(ValueError):
        make_sampler("jaeger_remote")
