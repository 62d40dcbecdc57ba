"""Durable futures and workflow tasks: a tiny deterministic scheduler.

Workflow coroutines never touch the asyncio loop. They await ``DFuture``
objects; we drive them with ``send``/``throw`` in a fixed order (FIFO ready
queue, tasks in creation order), so the same journal always produces the same
sequence of decisions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from schemas import MainspringError

T = TypeVar("T")


class WorkflowMisuse(MainspringError, RuntimeError):
    """Workflow code awaited something that is not a Mainspring awaitable.

    Also a ``RuntimeError``, which it was before it joined the tree: existing
    ``except RuntimeError`` still catches it.
    """


class DFuture(Generic[T]):
    """A result that arrives through the journal (effect result, event, timer...)."""

    __slots__ = ("_callbacks", "_done", "_exc", "_value")

    def __init__(self) -> None:
        self._done = False
        self._value: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[DFuture[Any]], None]] = []

    def done(self) -> bool:
        return self._done

    def result(self) -> T:
        if self._exc is not None:
            raise self._exc
        return self._value  # type: ignore[no-any-return]

    def exception(self) -> BaseException | None:
        return self._exc

    def set_result(self, value: T) -> None:
        if self._done:
            return
        self._done, self._value = True, value
        self._fire()

    def set_exception(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done, self._exc = True, exc
        self._fire()

    def add_done_callback(self, cb: Callable[[DFuture[Any]], None]) -> None:
        if self._done:
            cb(self)
        else:
            self._callbacks.append(cb)

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            yield self
        return self.result()


class Scheduler:
    """Runs workflow tasks until none is ready (quiescence)."""

    def __init__(self) -> None:
        self._ready: deque[WTask[Any]] = deque()
        self.tasks: list[WTask[Any]] = []

    def spawn(self, coro: Coroutine[Any, Any, T]) -> WTask[T]:
        task: WTask[T] = WTask(self, coro)
        self.tasks.append(task)
        self._ready.append(task)
        return task

    def run_until_quiescent(self) -> None:
        while self._ready:
            self._ready.popleft()._step()

    def close(self) -> None:
        """Close every unfinished coroutine (eviction, cancellation, terminal)."""
        self._ready.clear()
        for task in self.tasks:
            if not task.done():
                task._coro.close()
        self.tasks.clear()


class WTask(DFuture[T]):
    """A workflow coroutine driven by the scheduler; itself a future of its result."""

    __slots__ = ("_coro", "_sched", "_throw")

    def __init__(self, sched: Scheduler, coro: Coroutine[Any, Any, T]) -> None:
        super().__init__()
        self._sched = sched
        self._coro = coro
        self._throw: BaseException | None = None

    def _wake(self, _f: DFuture[Any]) -> None:
        self._sched._ready.append(self)

    def _step(self) -> None:
        try:
            if self._throw is not None:
                exc, self._throw = self._throw, None
                yielded = self._coro.throw(exc)
            else:
                yielded = self._coro.send(None)
        except StopIteration as stop:
            self.set_result(stop.value)
            return
        except Exception as exc:  # the workflow's own failure
            self.set_exception(exc)
            return
        if isinstance(yielded, DFuture):
            yielded.add_done_callback(self._wake)
        else:
            self._throw = WorkflowMisuse(
                f"workflow code awaited {type(yielded).__name__}; workflows may only await "
                "ctx.* calls (ctx.step, ctx.effect, ctx.sleep, ctx.wait_event, ctx.child, "
                "ctx.gather). Put other async work inside ctx.step or an effect handler."
            )
            self._sched._ready.append(self)


class GatherFuture(DFuture[list[Any]]):
    """All of several futures, results in argument order; fails on the first failure."""

    __slots__ = ("_left", "_parts")

    def __init__(self, parts: list[DFuture[Any]]) -> None:
        super().__init__()
        self._parts = parts
        self._left = len(parts)
        if not parts:
            self.set_result([])
        for part in parts:
            part.add_done_callback(self._one_done)

    def _one_done(self, part: DFuture[Any]) -> None:
        if self.done():
            return
        exc = part.exception()
        if exc is not None:
            self.set_exception(exc)
            return
        self._left -= 1
        if self._left == 0:
            self.set_result([p.result() for p in self._parts])
