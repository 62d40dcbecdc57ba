"""Replay safety: nondeterminism detection and parking, the Replayer's verdicts (and the
CI check docs/workflows.md shows), patch markers, racing writers."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from actors import Divergence
from actors._actor import Input, RunActor
from actors._runtime import Runtime
from schemas import (
    JournalCorrupt,
    JournalEvent,
    RunCompleted,
    RunStarted,
    StartRun,
    StepCompleted,
    encode_inbox,
)
from servers import NatsServer
from streams import ConsumerSpec, Subjects, ensure_consumer, ensure_topology
from tests.apps import registry
from tests.harness import assert_journal_sound, running, step_seqs, types, wait_status

pytestmark = pytest.mark.anyio
DOCS = Path(__file__).resolve().parent.parent / "docs" / "workflows.md"


def _v1() -> ms.Registry:
    reg = ms.Registry()

    @reg.workflow(name="nd", version="1")
    async def nd(ctx: ms.Context, _: None) -> str:
        await ctx.step(lambda: "a", name="prepare")
        await ctx.wait_event("go")
        return "done"

    return reg


def _v2_incompatible() -> ms.Registry:
    """Changed code deployed under the same version: what replay catches (a new
    version would leave the runs of "1" parked as version.unavailable instead)."""
    reg = ms.Registry()

    @reg.workflow(name="nd", version="1")
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


async def test_replayer_names_the_divergence_the_worker_parks_with(
    nc: NATS, subjects: Subjects
) -> None:
    """Replayer.check_run, before a deploy, finds the divergence the worker parks the run
    with after it (the same words); the code the run started with is compatible."""
    async with running(nc, subjects, _v1()) as h:
        rid = await h.client.start("nd", None, run_id="nd2")
        await wait_status(h.client, rid, "waiting")
    same = await ms.Replayer(_v1()).check_run(nc, rid, subjects=subjects)
    assert (same.ok, same.workflow, same.events, same.divergence) == (True, "nd", 3, None)
    verdict = await ms.Replayer(_v2_incompatible()).check_run(nc, rid, subjects=subjects)
    assert not verdict.ok
    assert verdict.divergence == Divergence(2, 1, "step 'prepare'", "effect 'llm.mock'")
    assert await ms.Replayer(_v1()).check_all(nc, subjects=subjects, workflow="other") == []
    with pytest.raises(ms.RunNotFound):
        await ms.Replayer(_v1()).check_run(nc, "nd-none", subjects=subjects)
    async with running(nc, subjects, _v2_incompatible()) as h:
        await h.client.send_event(rid, "go", {})
        parked = await wait_status(h.client, rid, "parked")
    assert parked.error is not None
    assert parked.error.message == verdict.problem


def test_replayer_judges_a_journal_it_is_handed() -> None:
    """check(events): code that goes on past the journal's end, a workflow the registry
    lacks and an input that no longer fits are incompatible, each saying why; a list
    that does not start with run.started is a corrupt journal."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    journal: list[JournalEvent] = [
        RunStarted(run_id="j1", n=1, at=at, workflow="j", version="1", input=_raw(3)),
        StepCompleted(run_id="j1", n=2, at=at, seq=1, name="a", result=_raw(1)),
        RunCompleted(run_id="j1", n=3, at=at, output=_raw(1)),
    ]
    one, two, typed = ms.Registry(), ms.Registry(), ms.Registry()

    @one.workflow(name="j")
    async def j_one(ctx: ms.Context, x: int) -> int:
        return int(await ctx.step(lambda: 1, name="a"))

    @two.workflow(name="j")
    async def j_two(ctx: ms.Context, x: int) -> int:
        await ctx.step(lambda: 1, name="a")
        return int(await ctx.step(lambda: 2, name="b"))

    @typed.workflow(name="j")
    async def j_typed(ctx: ms.Context, x: str) -> str:
        return x

    assert ms.Replayer(one).check(journal).ok
    assert ms.Replayer(one).check(journal[:2]).ok  # a crash before the end: still compatible
    longer = ms.Replayer(two).check(journal)
    assert longer.problem == (
        "the journal ends with run.completed but the code now continues "
        "(1 more decision(s) pending)"
    )
    assert longer.divergence == Divergence(3, 2, "run.completed", "step 'b'")
    unknown = ms.Replayer(ms.Registry()).check(journal)
    assert "no workflow named 'j'" in unknown.problem
    assert unknown.divergence is None
    assert "no longer fits" in ms.Replayer(typed).check(journal).problem
    with pytest.raises(JournalCorrupt, match=r"starts with run\.started, not step\.completed"):
        ms.Replayer(one).check(journal[1:])


def _ci_example() -> str:
    """The CI test docs/workflows.md tells users to copy, as written there."""
    section = DOCS.read_text().split("## Checking new code against recorded runs\n")[1]
    return section.split("```python\n")[1].split("```")[0]


async def test_the_documented_ci_check_passes_then_fails_on_changed_code(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CI test in docs/workflows.md, run as written against a server holding recorded
    runs: it passes with the code that recorded them and fails, naming the run and both
    decisions, with incompatible code."""
    async with running(nc, subjects, _v1()) as h:
        await h.client.start("nd", None, run_id="ci1")
        await wait_status(h.client, "ci1", "waiting")
    monkeypatch.setenv("MAINSPRING_NATS_URL", nats_server.url)
    monkeypatch.setitem(sys.modules, "myapp", ModuleType("myapp"))

    def documented_test(app: ms.Registry) -> Any:
        workflows = ModuleType("myapp.workflows")
        workflows.registry = app  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "myapp.workflows", workflows)
        namespace: dict[str, Any] = {}
        exec(compile(_ci_example(), str(DOCS), "exec"), namespace)
        namespace["SUBJECTS"] = subjects  # this test's deployment, not the default "ms"
        return namespace["test_recorded_runs_replay_on_this_code"]

    await documented_test(_v1())()
    with pytest.raises(AssertionError, match="nondeterminism in run ci1") as failed:
        await documented_test(_v2_incompatible())()
    assert "step 'prepare'" in str(failed.value)
    assert "effect 'llm.mock'" in str(failed.value)


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
    # Actors built by hand, not a Replayer: this is about two writers appending (the
    # actor's job); each one's replay on reload goes through Replayer.resume.
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
