"""Parents by asyncio Task (tracker/tasks.py), through the tracker, with synthetic kernel records.

Server exchanges here last from `start` to their response at start + 20 (records.exchange)."""

from __future__ import annotations

from beyla_sidecar.bpf.events import FLAG_CONTEXT, ConnTuple, Role
from beyla_sidecar.protocols.base import SpanKind
from beyla_sidecar.tracker.connections import PARENT_WAIT_NS
from beyla_sidecar.tracker.context import TraceContext
from beyla_sidecar.tracker.exchange import Exchange
from beyla_sidecar.tracker.tasks import ANSWERS_PER_TASK, TaskParents

from .records import PID
from .test_connections import CLIENT_TUPLE, Recorder, child_of, root

TA, TB, TC = 0x7F0000A0, 0x7F0000B0, 0x7F0000C0  # Task addresses
A, B, CALL_A, CALL_B = 1, 2, 3, 4  # sockets: two server connections, two client connections


def setup() -> Recorder:
    r = Recorder()
    r.open(A)
    r.open(B)
    r.open(CALL_A, Role.CLIENT, CLIENT_TUPLE)
    r.open(CALL_B, Role.CLIENT, ConnTuple("10.0.0.1", 41001, "10.0.0.3", 80))
    return r


def by_sock(out: list[Exchange], sock_start: dict[int, int]) -> dict[int, Exchange]:
    """The exchange of each socket, told apart by their start times."""
    starts = {start: sock for sock, start in sock_start.items()}
    return {starts[ex.start_ns]: ex for ex in out}


def test_calls_sent_out_of_request_order_get_the_request_their_task_answered() -> None:
    """What an HTTP client's connection pool does: A's call goes out after B's, so the thread's
    request queue gives each the other's request; their Tasks' answers put them right."""
    r = setup()
    r.exchange(CALL_B, 1010, role=Role.CLIENT, parent=(A, 1000), tasks=(TB,))
    r.exchange(CALL_A, 1012, role=Role.CLIENT, parent=(B, 1005), tasks=(TA,))
    assert r.out == [] and r.tracker.waiting == 2
    r.exchange(A, 1000, tasks=(TA,))
    r.exchange(B, 1005, tasks=(TB,))
    ex = by_sock(r.out, {A: 1000, B: 1005, CALL_A: 1012, CALL_B: 1010})
    assert [e.kind for e in r.out] == [SpanKind.SERVER, SpanKind.CLIENT, SpanKind.SERVER, SpanKind.CLIENT]
    assert child_of(ex[CALL_A].context, ex[A].context) and child_of(ex[CALL_B].context, ex[B].context)
    assert r.tracker.waiting == 0


def test_an_answer_that_came_first_is_found_at_once() -> None:
    r = setup()
    r.exchange(A, 1000, tasks=(TA,))
    r.exchange(CALL_A, 1012, role=Role.CLIENT, parent=(B, 1005), tasks=(TA,))
    server, client = r.out
    assert child_of(client.context, server.context) and r.tracker.waiting == 0


def test_a_task_created_by_the_handler_makes_the_call() -> None:
    """asyncio.gather() in a handler: the call's Task is a child of the Task that answers."""
    r = setup()
    r.exchange(CALL_A, 1012, role=Role.CLIENT, parent=(B, 1005), tasks=(TC, TA, 0x7F0000F0))
    r.exchange(B, 1005, tasks=(TB,))  # answered by another Task: not the parent
    assert len(r.out) == 1 and r.tracker.waiting == 1
    r.exchange(A, 1000, tasks=(TA,))
    ex = by_sock(r.out, {A: 1000, B: 1005, CALL_A: 1012})
    assert child_of(ex[CALL_A].context, ex[A].context) and r.tracker.waiting == 0


def test_the_innermost_answering_task_wins() -> None:
    r = setup()
    r.exchange(A, 1000, tasks=(TA,))
    r.exchange(B, 1005, tasks=(TB,))
    r.exchange(CALL_A, 1012, role=Role.CLIENT, tasks=(TB, TA))
    ex = by_sock(r.out, {A: 1000, B: 1005, CALL_A: 1012})
    assert child_of(ex[CALL_A].context, ex[B].context)


def test_an_answer_outside_the_calls_time_is_another_request() -> None:
    """One Task answering a connection's requests in turn (aiohttp's per-connection Task on 3.11)."""
    r = setup()
    r.exchange(A, 1000, tasks=(TA,))  # answered at 1020, before the call
    r.exchange(CALL_A, 1050, role=Role.CLIENT, tasks=(TA,))
    assert len(r.out) == 1 and r.tracker.waiting == 1
    r.exchange(A, 1040, tasks=(TA,))  # the next request of the connection: the call's
    first, second, call = r.out
    assert (first.start_ns, second.start_ns, call.start_ns) == (1000, 1040, 1050)
    assert child_of(call.context, second.context) and r.tracker.waiting == 0


def test_without_an_answer_the_call_falls_back_to_the_kernels_parent() -> None:
    r = setup()
    r.exchange(A, 1000)  # the kernel's parent, not answered in a Task
    r.exchange(CALL_A, 1012, role=Role.CLIENT, parent=(A, 1000), tasks=(TA,))
    r.tracker.expire(1012 + PARENT_WAIT_NS - 1)
    assert len(r.out) == 1 and r.tracker.waiting == 1
    r.tracker.expire(1012 + PARENT_WAIT_NS)
    server, client = r.out
    assert child_of(client.context, server.context) and r.tracker.waiting == 0
    r.exchange(CALL_B, 2000, role=Role.CLIENT, parent=(B, 1900), tasks=(TB,))  # whose record never came
    r.tracker.expire(2000 + PARENT_WAIT_NS)
    assert root(r.out[-1].context) and r.tracker.waiting == 0
    r.exchange(A, 3000, tasks=(TA,))  # an answer after the expiry changes nothing
    assert len(r.out) == 4


def test_a_context_the_kernel_wrote_keeps_the_kernels_parent() -> None:
    """With propagation the request carries the kernel's parent's trace id: the span must too."""
    r = setup()
    r.exchange(B, 1005, tasks=(TB,))
    r.exchange(CALL_A, 1012, role=Role.CLIENT, parent=(B, 1005), tasks=(TA,), flags=FLAG_CONTEXT)
    server, client = r.out
    assert child_of(client.context, server.context) and r.tracker.waiting == 0


def test_tasks_of_another_process_do_not_match() -> None:
    r = setup()
    r.open(9, pid=PID + 100)
    r.exchange(9, 1000, tasks=(TA,), pid=PID + 100)  # same address, another process
    r.exchange(CALL_A, 1012, role=Role.CLIENT, tasks=(TA,))
    assert len(r.out) == 1 and r.tracker.waiting == 1


def ctx(n: int) -> TraceContext:
    return TraceContext(n, n, 0, False, True)


def test_task_parents_keeps_the_newest_answers_per_task() -> None:
    parents: TaskParents[str] = TaskParents()
    for i in range(ANSWERS_PER_TASK + 1):
        assert parents.answered(PID, TA, i * 100, i * 100 + 50, ctx(i + 1)) == []
    assert parents.find(PID, (TA,), 10) is None  # the oldest is forgotten
    assert parents.find(PID, (TA,), 110) == ctx(2)
    assert parents.find(PID, (TB, TA), 440) == ctx(5)
    assert parents.find(PID, (TA,), 370) is None  # between two answers


def test_task_parents_waiters_resolve_once() -> None:
    parents: TaskParents[str] = TaskParents()
    parents.wait(PID, (TC, TA), 120, 5000, "call")
    assert len(parents) == 1
    assert parents.answered(PID, TC, 0, 100, ctx(1)) == []  # before the call
    assert parents.answered(PID, TA, 100, 200, ctx(2)) == ["call"]
    assert parents.answered(PID, TC, 100, 200, ctx(3)) == [] and len(parents) == 0
    assert parents.expired(1 << 62) == []
    parents.wait(PID, (TB,), 10, 5000, "late")
    assert parents.expired(4999) == [] and parents.expired(5000) == ["late"] and len(parents) == 0
