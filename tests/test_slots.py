"""Activation slots: a worker's concurrency cap, with work begun elsewhere served first."""

from __future__ import annotations

import anyio
import pytest

from actors._slots import Slots

pytestmark = pytest.mark.anyio


async def test_redeliveries_get_the_next_free_slot_before_new_work() -> None:
    """With every slot taken, a waiter asking ``first`` (an input delivered before: a
    moved run's) is served before those that queued earlier without it."""
    slots = Slots(1)
    await slots.acquire()
    order: list[str] = []

    async def wait(name: str, first: bool) -> None:
        await slots.acquire(first=first)
        order.append(name)
        slots.release()

    async with anyio.create_task_group() as tg:
        for name, first in (("new-1", False), ("new-2", False), ("moved", True)):
            tg.start_soon(wait, name, first)
            await anyio.wait_all_tasks_blocked()
        slots.release()
    assert order == ["moved", "new-1", "new-2"]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """An activation cancelled while it waits for a slot (its partition let go) takes
    none: the next waiter gets the slot."""
    slots = Slots(1)
    await slots.acquire()
    served: list[str] = []
    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def cancelled() -> None:
            with scope:
                await slots.acquire(first=True)
                served.append("cancelled")

        async def other() -> None:
            await slots.acquire()
            served.append("other")
            slots.release()

        tg.start_soon(cancelled)
        tg.start_soon(other)
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        await anyio.wait_all_tasks_blocked()
        slots.release()
    assert served == ["other"]
