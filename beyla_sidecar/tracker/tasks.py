"""Parents by asyncio Task: a call belongs to the request that the Task which made it answered.

On an event loop one thread serves many requests at once, and the order in which the handlers'
calls go out (an HTTP client's connection pool, DNS in a thread pool) need not follow the order
in which the requests came in: the thread's request queue (the kernel's parent) can then name
the wrong request. The asyncio probes (probes/asyncio.h) name, in a client record, the Task that
sent the request and the Tasks that created it (innermost first), and in a server record the Task
that began the response. A call whose Task, or an ancestor of it, answered a server request whose
time span holds the call's start is that request's child: the request's handler ran in that Task.

Records come in any order: answers are remembered (the newest few per Task) for calls that come
later, and calls wait for an answer until a deadline, after which the caller uses the kernel's
parent. Task addresses are only unique within a process and while the Task lives; the time span
tells apart Tasks that reused an address, as it does two requests of one long-lived Task.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .context import TraceContext

# Answers remembered per Task (a connection's Task answers its requests one after another).
ANSWERS_PER_TASK = 4
# Tasks whose answers are remembered (the newest at least, up to twice as many).
RECENT_TASKS = 4096

T = TypeVar("T")


class _Waiter(Generic[T]):
    """A call waiting under each Task of its chain; `item` is the caller's, None once resolved."""

    __slots__ = ("deadline", "start_ns", "item")

    def __init__(self, deadline: int, start_ns: int, item: T) -> None:
        self.deadline = deadline
        self.start_ns = start_ns
        self.item: T | None = item


class TaskParents(Generic[T]):
    """Server contexts by the (process, Task) that answered them, and the calls waiting for one."""

    def __init__(self) -> None:
        # (pid, task) -> (request start, response start, context), oldest first
        self._answers: dict[tuple[int, int], list[tuple[int, int, TraceContext]]] = {}
        self._waiting: dict[tuple[int, int], list[_Waiter[T]]] = {}
        self._count = 0

    def __len__(self) -> int:
        """Calls waiting."""
        return self._count

    def answered(self, pid: int, task: int, start_ns: int, end_ns: int,
                 ctx: TraceContext) -> list[T]:
        """The Task answered a request that lasted from start_ns to end_ns (its response's
        start), in context ctx: the waiting calls it made in that time, now ctx's children."""
        key = (pid, task)
        spans = self._answers.get(key)
        if spans is None:
            spans = self._answers[key] = []
            if len(self._answers) >= 2 * RECENT_TASKS:
                self._answers = dict(list(self._answers.items())[RECENT_TASKS:])
        spans.append((start_ns, end_ns, ctx))
        if len(spans) > ANSWERS_PER_TASK:
            del spans[0]
        out: list[T] = []
        keep = self._take(self._waiting.pop(key, []), lambda w: start_ns <= w.start_ns <= end_ns, out)
        if keep:
            self._waiting[key] = keep
        return out

    def find(self, pid: int, chain: tuple[int, ...], start_ns: int) -> TraceContext | None:
        """The context of the request the innermost Task of `chain` that answered one while
        the call (started at start_ns) was in it; None if no such answer came yet."""
        for task in chain:
            for start, end, ctx in self._answers.get((pid, task), ()):
                if start <= start_ns <= end:
                    return ctx
        return None

    def wait(self, pid: int, chain: tuple[int, ...], start_ns: int, deadline: int, item: T) -> None:
        """Hold `item` until a Task of its chain answers (answered() returns it) or the deadline
        passes (expired() does)."""
        w = _Waiter(deadline, start_ns, item)
        for task in chain:
            self._waiting.setdefault((pid, task), []).append(w)
        self._count += 1

    def expired(self, now_ns: int) -> list[T]:
        """The calls whose deadline passed with no answer."""
        out: list[T] = []
        for key in list(self._waiting):
            keep = self._take(self._waiting[key], lambda w: w.deadline <= now_ns, out)
            if keep:
                self._waiting[key] = keep
            else:
                del self._waiting[key]
        return out

    def _take(self, waiters: list[_Waiter[T]], due: Callable[[_Waiter[T]], bool], out: list[T]) -> list[_Waiter[T]]:
        """The items of the unresolved `due` waiters onto `out` (resolved now); the other
        unresolved waiters."""
        keep = []
        for w in waiters:
            if w.item is None:
                continue
            if due(w):
                out.append(w.item)
                w.item = None
                self._count -= 1
            else:
                keep.append(w)
        return keep
