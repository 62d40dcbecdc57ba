"""Messages being worked on: a slot each, and kept from redelivery while the work goes on."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

import anyio
import nats.errors
from nats.aio.msg import Msg


class InFlight:
    """What a consumer is working on. ``keep_alive`` (one task per consumer, not one
    per message) tells JetStream the work is alive (``+WPI``) every third of the
    ack wait, for each message held longer than that; short work costs nothing."""

    def __init__(self, ack_wait_s: float) -> None:
        self.period = ack_wait_s / 3
        self._held: dict[int, tuple[Msg, float]] = {}

    def hold(self, msg: Msg) -> None:
        """Mark ``msg`` as being worked on (``release`` it when done, in a ``finally``;
        plain calls: a context manager here cost 2-4 % of a worker's CPU)."""
        self._held[id(msg)] = (msg, time.monotonic())

    def release(self, msg: Msg) -> None:
        self._held.pop(id(msg), None)

    async def keep_alive(self) -> None:
        while True:
            await anyio.sleep(self.period)
            now = time.monotonic()
            for msg, since in list(self._held.values()):
                if now - since > self.period:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()


async def take_slot(slots: anyio.Semaphore | anyio.CapacityLimiter) -> None:
    """Take one of a consumer's work slots, waiting while none is free; a free one
    costs no trip through the event loop (``acquire`` always yields once)."""
    try:
        slots.acquire_nowait()
    except anyio.WouldBlock:
        await slots.acquire()


class Tasks:
    """Short tasks started on the hot path (one per activation, one per effect request)
    at asyncio's cost: ``async with Tasks() as tasks: ... tasks.start_soon(fn, arg)``.

    anyio's ``TaskGroup.start_soon`` costs 25-50 µs a call here (a handle, a cancel
    scope, a name); ``loop.create_task`` 3-5 µs. Like a task group, the block does not
    outlive its tasks: leaving it (cancelled, or because a task raised) cancels those
    still running and waits for them, and a task's exception cancels the block and is
    raised from it. Tasks are expected to handle their own errors; that is the backstop.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed: BaseException | None = None
        self._scope = anyio.CancelScope()

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        task = asyncio.get_running_loop().create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._failed is None:
            self._failed = exc
            self._scope.cancel()

    async def __aenter__(self) -> Tasks:
        self._scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        with anyio.CancelScope(shield=True):
            for task in list(self._tasks):
                task.cancel()
            while self._tasks:
                await asyncio.wait(list(self._tasks))
        swallowed = self._scope.__exit__(exc_type, exc, tb)
        if self._failed is not None:
            raise self._failed
        return bool(swallowed)
