"""Work longer than JetStream's ack wait: an effect (and its retry wait) stays with the
handler running it, and a long step runs once."""

from __future__ import annotations

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from schemas import EffectCompleted
from streams import Subjects
from tests.harness import events_of, running

pytestmark = pytest.mark.anyio

ACK_WAIT = 0.6  # JetStream redelivers unacked work after this long (seconds)
registry, handlers = ms.Registry(), ms.Handlers()
calls: dict[str, int] = {}


@registry.workflow
async def slow_effect(ctx: ms.Context, inp: dict[str, float]) -> object:
    retry = ms.RetryPolicy(max_attempts=2, initial_backoff_s=inp["backoff"])
    return await ctx.effect("slow", inp, retry=retry, timeout=30)


@registry.workflow
async def slow_step(ctx: ms.Context, seconds: float) -> str:
    async def nap() -> str:
        await anyio.sleep(seconds)  # the work itself: one long activation
        calls["step"] = calls.get("step", 0) + 1
        return "rested"

    return await ctx.step(nap, name="nap")


@handlers.handler("slow", ack_wait_s=ACK_WAIT)
async def slow(payload: dict[str, float], ctx: ms.EffectContext) -> int:
    calls[ctx.effect_id] = calls.get(ctx.effect_id, 0) + 1
    await anyio.sleep(payload["sleep"])  # the work itself, several ack waits long
    if ctx.attempt < payload["fail_times"] + 1:
        raise RuntimeError("transient")
    return ctx.delivery


@pytest.mark.parametrize(("fail_times", "backoff"), [(0, 0.0), (1, 4 * ACK_WAIT)])
async def test_long_effect_and_retry_wait_are_not_redelivered(
    nc: NATS, subjects: Subjects, fail_times: int, backoff: float
) -> None:
    """An effect running (or waiting to retry) for several ack waits stays with its
    handler: one delivery, the attempts it asked for, one result."""
    async with running(nc, subjects, registry, handlers) as h:
        inp = {"sleep": 4 * ACK_WAIT, "fail_times": fail_times, "backoff": backoff}
        rid = await h.client.start("slow_effect", inp)
        assert await h.client.result(rid, timeout=30) == 1  # ctx.delivery: first delivery
        (done,) = events_of(await h.client.history(rid), EffectCompleted)
    assert calls[done.effect_id] == fail_times + 1
    assert done.attempts == fail_times + 1


async def test_long_activation_is_not_redelivered(nc: NATS, subjects: Subjects) -> None:
    """A step running for several ack waits of the inbox runs once (the worker keeps the
    input alive, and a redelivery would find the step journaled)."""
    opts = ms.WorkerOptions(lease_ttl_s=3, ack_wait_s=ACK_WAIT)
    calls.pop("step", None)
    async with running(nc, subjects, registry, options=opts) as h:
        rid = await h.client.start("slow_step", 4 * ACK_WAIT)
        assert await h.client.result(rid, timeout=30) == "rested"
    assert calls["step"] == 1


async def test_hot_path_tasks_end_with_their_block() -> None:
    """A worker's activations and a handler's requests run as plain asyncio tasks: they
    still end when their block does, and one that raises stops the block with its error."""
    from streams import Tasks

    cancelled = anyio.Event()

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.move_on_after(0.2):
        async with Tasks() as tasks:
            tasks.start_soon(forever)
            await anyio.sleep_forever()
    assert cancelled.is_set()

    async def broken(what: str) -> None:
        raise LookupError(what)

    async def block() -> None:
        async with Tasks() as tasks:
            tasks.start_soon(broken, "lost")
            await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(LookupError, match="lost"):
        await block()
