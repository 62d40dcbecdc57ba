"""Replay safety: nondeterminism detection and parking, patch markers, racing writers."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from actors._actor import Input, RunActor
from actors._runtime import Runtime
from schemas import StartRun, encode_inbox
from streams import ConsumerSpec, Subjects, ensure_consumer, ensure_topology
from tests.apps import registry
from tests.harness import assert_journal_sound, running, step_seqs, types, wait_status

pytestmark = pytest.mark.anyio


def _v1() -> ms.Registry:
    reg = ms.Registry()

    @reg.workflow(name="nd", version="1")
    async def nd(ctx: ms.Context, _: None) -> str:
        await ctx.step(lambda: "a", name="prepare")
        await ctx.wait_event("go")
        return "done"

    return reg


def _v2_incompatible() -> ms.Registry:
    reg = ms.Registry()

    @reg.workflow(name="nd", version="2")
    async def nd(ctx: ms.Context, _: None) -> str:
        await ctx.effect("llm.mock", {"prompt": "new first call"})
        await ctx.wait_event("go")
        return "done"

    return reg


async def test_nondeterminism_parks_then_fixed_code_continues(nc: NATS, subjects: Subjects) -> None:
    """Changed code is detected on replay (run, position, recorded vs now); the run is
    parked, not failed; fixed code woken later completes it."""
    async with running(nc, subjects, _v1()) as h:
        rid = await h.client.start("nd", None, run_id="nd1")
        await wait_status(h.client, rid, "waiting")
    async with running(nc, subjects, _v2_incompatible()) as h:
        await h.client.send_event(rid, "go", {})
        parked = await wait_status(h.client, rid, "parked")
    assert parked.error is not None
    message = parked.error.message
    assert "nd1" in message
    assert "journal event 2" in message
    assert "step 'prepare'" in message
    assert "effect 'llm.mock'" in message
    async with running(nc, subjects, _v1()) as h:
        await h.client.wake(rid)
        assert await h.client.result(rid, timeout=20) == "done"
        events = await h.client.history(rid)
    assert "run.parked" in types(events)
    assert types(events)[-1] == "run.completed"
    assert_journal_sound(rid, events)


async def test_patched_keeps_old_runs_on_old_path(nc: NATS, subjects: Subjects) -> None:
    """ctx.patched(): runs started before the change replay the old path, new runs the new."""
    old = ms.Registry()

    @old.workflow(name="pt")
    async def pt_old(ctx: ms.Context, _: None) -> str:
        await ctx.wait_event("go")
        return "old"

    new = ms.Registry()

    @new.workflow(name="pt")
    async def pt_new(ctx: ms.Context, _: None) -> str:
        if ctx.patched("extra-step"):
            await ctx.step(lambda: None, name="extra")
            tag = "new"
        else:
            tag = "old"
        await ctx.wait_event("go")
        return tag

    async with running(nc, subjects, old) as h:
        old_run = await h.client.start("pt", None, run_id="pt-old")
        await wait_status(h.client, old_run, "waiting")
    async with running(nc, subjects, new, forced_replay=True) as h:
        new_run = await h.client.start("pt", None, run_id="pt-new")
        await wait_status(h.client, new_run, "waiting")
        await h.client.send_event(old_run, "go", {})
        await h.client.send_event(new_run, "go", {})
        assert await h.client.result(old_run, timeout=20) == "old"
        assert await h.client.result(new_run, timeout=20) == "new"
        assert "marker.recorded" in types(await h.client.history(new_run))


async def test_two_writers_racing_one_run_never_fork(nc: NATS, subjects: Subjects) -> None:
    """Two actors (as on two workers during a handover) drive one run at once: OCC
    lets exactly one journal exist, with every step once."""
    await ensure_topology(nc, subjects)
    start = StartRun(run_id="race", workflow="chain", input=_raw(30))
    js = nc.jetstream()
    await js.publish(subjects.inbox("race", "start"), encode_inbox(start))
    p = subjects.partition("race")
    spec = ConsumerSpec(subjects.inbox_stream, "race-test", subjects.inbox_partition(p))
    await ensure_consumer(nc, spec)
    sub = await js.pull_subscribe_bind("race-test", subjects.inbox_stream)
    [msg] = await sub.fetch(1, timeout=5)
    opts = ms.WorkerOptions()
    actors = [RunActor("race", Runtime(nc, subjects, registry, opts)) for _ in range(2)]
    async with anyio.create_task_group() as tg:
        for actor in actors:
            tg.start_soon(actor.handle, Input(msg, None))
    client = ms.Client(nc, subjects)
    events = await client.history("race")
    assert_journal_sound("race", events)
    kinds = types(events)
    assert kinds.count("run.started") == 1
    assert kinds.count("run.completed") == 1
    assert step_seqs(events) == list(range(1, 31))
    assert await client.result("race", timeout=5) == 30


def _raw(value: object) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(value))
