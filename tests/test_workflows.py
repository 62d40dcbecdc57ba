"""Workflow features end to end.

Each case that runs a workflow runs twice: live, and under forced replay (the run is
dropped from memory after every decision and rebuilt from its journal), which is how
nondeterminism is found early. A case that cannot says why with ``live_only``."""

from __future__ import annotations

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from schemas import (
    EffectCompleted,
    EffectResult,
    EventReceived,
    EventRejected,
    StartRun,
    encode_inbox,
    fold,
)
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import (
    assert_journal_sound,
    events_of,
    running,
    sharded,  # noqa: F401  (the shards fixture: 1 and 4)
    types,
    wait_status,
    wait_until,
)

pytestmark = [pytest.mark.anyio, pytest.mark.replayed]


async def test_parallel_effects(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """gather() of effects and coroutines: all requested before any result is awaited."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("nested_gather", None)
        assert await h.client.result(rid, timeout=10) == ["x2", "y2", 42]
        events = await h.client.history(rid)
    kinds = types(events)
    # both branches and the third effect were requested before the first result arrived
    first_result = kinds.index("effect.completed")
    assert kinds[:first_result].count("effect.requested") == 3
    assert_journal_sound(rid, events)


async def test_fan_out_100_effects(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """A run fans out to 100 effects and sums them, each journaled exactly once."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("fanout", 100)
        assert await h.client.result(rid, timeout=60) == sum(2 * i for i in range(100))
        events = await h.client.history(rid)
    kinds = types(events)
    assert kinds.count("effect.requested") == 100
    assert kinds.count("effect.completed") == 100
    assert_journal_sound(rid, events)


async def test_child_runs(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """A parent awaits child runs' outputs."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("parent", 3, run_id="fam")
        assert await h.client.result(rid, timeout=20) == [1, 2, 3]
        child = await h.client.status("fam-2")
    assert child.status == "completed"
    assert child.output == 2


async def test_child_depth_limit(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """Recursion deeper than max_depth ends the run with limit.child_depth."""
    opts = ms.WorkerOptions(max_depth=2, lease_ttl_s=3)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=opts) as h:
        rid = await h.client.start("recurse", 5, run_id="deep")
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=20)
    assert "limit.child_depth" in str(err.value)


async def test_event_limit(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """A run that would exceed max_events fails with limit.events at the limit."""
    opts = ms.WorkerOptions(max_events=10, lease_ttl_s=3)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=opts) as h:
        rid = await h.client.start("chain", 50)
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=10)
        assert err.value.error.type == "limit.events"
        events = await h.client.history(rid)
    assert len(events) == 10
    assert types(events)[-1] == "run.failed"


async def test_early_event_is_kept(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """An event published before the run exists, or before it waits, is not lost."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        await h.client.send_event("early", "go", {"approved": True, "by": "early-bird"})
        await h.client.start("waiter", 60, run_id="early")
        assert await h.client.result("early", timeout=15) == {"approved": True, "by": "early-bird"}


async def test_events_queue_per_name(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """Two events for two successive waits of one name are consumed in order."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("two_waits", None)
        await h.client.send_event(rid, "tick", 1)
        await h.client.send_event(rid, "tick", 2)
        assert await h.client.result(rid, timeout=10) == [1, 2]


async def test_duplicate_event_changes_nothing(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """The same event sent twice (same event id) is recorded once."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("two_waits", None)
        await h.client.send_event(rid, "tick", 1, event_id="e-1")
        await h.client.send_event(rid, "tick", 1, event_id="e-1")
        await h.client.send_event(rid, "tick", 2, event_id="e-2")
        assert await h.client.result(rid, timeout=10) == [1, 2]
        kinds = types(await h.client.history(rid))
    assert kinds.count("event.received") == 2


async def test_duplicate_effect_result_changes_nothing(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A second result for an effect (past JetStream's dedup window) is ignored."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("agent", "dup")
        await wait_status(h.client, rid, "waiting")
        fake = EffectResult(
            run_id=rid, seq=1, effect_id=f"{rid}.fx.1", ok=True, result=msgspec.Raw(b'"FORGED"')
        )
        await nc.jetstream().publish(
            subjects.inbox(rid, "effect.result"),
            encode_inbox(fake),
            headers={"Nats-Msg-Id": "another-id"},
        )
        await h.client.send_event(rid, "approval", {"approved": True})
        out = await h.client.result(rid, timeout=10)
        kinds = types(await h.client.history(rid))
    assert out["draft"] == "DRAFT: write about dup"
    assert kinds.count("effect.completed") == 1


async def test_invalid_event_rejected_run_keeps_waiting(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A payload failing validation is recorded as rejected with the path; the run waits on."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60)
        await h.client.send_event(rid, "go", {"approved": "certainly"})
        await nc.publish(subjects.event(rid, "go"), b"{not json")  # plain core publish
        await h.client.send_event(rid, "go", {"approved": False, "by": "bob"})
        assert await h.client.result(rid, timeout=10) == {"approved": False, "by": "bob"}
        events = await h.client.history(rid)
    rejected = events_of(events, EventRejected)
    assert len(rejected) == 2
    reasons = " | ".join(r.reason for r in rejected)
    assert "$.approved" in reasons
    assert "not valid JSON" in reasons
    # The fold (status, projections) pairs the wait with the event the code took.
    (wait,) = fold([e.event for e in events]).waits.values()
    assert (wait.status, wait.event_id) == (
        "satisfied",
        events_of(events, EventReceived)[-1].event_id,
    )


async def test_plain_nats_publish_resumes(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A core `nats pub` (no SDK, no ack) to the documented subject resumes the run."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60)
        await wait_status(h.client, rid, "waiting")
        await nc.publish(f"{subjects.prefix}.event.{rid}.go", b'{"approved": true, "by": "cli"}')
        assert await h.client.result(rid, timeout=10) == {"approved": True, "by": "cli"}


async def test_wait_timeout(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """A wait with a deadline raises WaitTimeoutError in the code when nothing valid arrives."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 1.0)
        assert await h.client.result(rid, timeout=15) == "timed out"
        assert "wait.timed_out" in types(await h.client.history(rid))


async def test_durable_sleep(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """ctx.sleep is a journaled timer fired by a scheduled message."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("sleeper", 1.0)
        assert await h.client.result(rid, timeout=15) == "woke"
        kinds = types(await h.client.history(rid))
    assert kinds == ["run.started", "timer.started", "timer.fired", "run.completed"]


async def test_cancel_waiting_run(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """Cancelling a waiting run ends it as cancelled; later events change nothing."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60)
        await wait_status(h.client, rid, "waiting")
        await h.client.cancel(rid, "no longer needed")
        with pytest.raises(ms.RunCancelledError):
            await h.client.result(rid, timeout=10)
        await h.client.send_event(rid, "go", {"approved": True})
        st = await h.client.status(rid)
    assert st.status == "cancelled"


async def test_deterministic_values_replay_identically(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """random/uuid/now are the same whether computed live or on replay."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("deterministic_values", None, run_id="dv")
        out = await h.client.result(rid, timeout=10)
    # the values the code computed now (on replay: after its step) and those its step
    # journaled when it first ran
    assert out["now"] == out["journaled"]
    a, _, _ = out["now"]
    assert a != out["after"]  # the generator advances


async def test_step_failure_is_catchable(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """A step's exception is journaled and surfaces as StepFailedError (live and replay)."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("step_fails", None)
        assert await h.client.result(rid, timeout=10) == "caught ValueError: no good"


async def test_effect_retries_then_succeeds(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Transient handler failures are retried with backoff; attempts are recorded."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("flaky_effect", {"fail_times": 2})
        assert await h.client.result(rid, timeout=10) == {"attempt": 3}
        done = events_of(await h.client.history(rid), EffectCompleted)
    assert done[0].attempts == 3


async def test_terminal_error_is_not_retried(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A TerminalError fails the effect at once; the run fails with its type."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("flaky_effect", {"terminal": True})
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=10)
    assert err.value.error.type == "flaky.refused"


async def test_effect_timeout(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """An attempt that overruns its timeout fails as effect.timeout after all attempts."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("flaky_effect", {"sleep": 5, "timeout": 0.2})
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=20)
    assert err.value.error.type == "effect.timeout"


@pytest.mark.live_only("no run: the client refuses the id before it sends anything")
async def test_bad_run_id_is_refused(nc: NATS, subjects: Subjects) -> None:
    """A run id that cannot be a subject token is refused, saying what is allowed."""
    client = ms.Client(nc, subjects)
    with pytest.raises(ms.InvalidNameError, match="A-Z a-z 0-9 _ -"):
        await client.start("chain", 1, run_id="a.b")


async def test_invalid_input_fails_run_naming_field(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Input failing the workflow's type fails the run with input.invalid and the path."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("chain", {"not": "an int"})
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=10)
    assert err.value.error.type == "input.invalid"


async def test_code_version_recorded(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """The version of the code that started a run is recorded in run.started."""
    reg = ms.Registry()

    @reg.workflow(name="versioned", version="2024-06-01")
    async def versioned(ctx: ms.Context, _: None) -> str:
        return ctx.version

    async with running(nc, subjects, reg, forced_replay=forced_replay) as h:
        rid = await h.client.start("versioned", None)
        assert await h.client.result(rid, timeout=10) == "2024-06-01"
        assert (await h.client.status(rid)).version == "2024-06-01"


async def test_idempotent_start(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """Starting the same run id twice runs it once."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        await h.client.start("chain", 3, run_id="same")
        await h.client.start("chain", 3, run_id="same")
        assert await h.client.result("same", timeout=10) == 3
        kinds = types(await h.client.history("same"))
    assert kinds.count("run.started") == 1


async def test_a_start_arriving_again_changes_nothing(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A start that reaches a worker again for a running run (resent after the
    stream's duplicate window, so under a new Msg-Id) neither starts it twice nor moves
    its wall-time deadline; the run goes on. The second worker has the run not in
    memory: it appends run.started without reading the journal first, and the
    journal's check sends it back to read it."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60, run_id="again", max_duration_s=600)
        await wait_status(h.client, rid, "waiting")
    deadline_before = await _scheduled(nc, subjects, rid)
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        again = StartRun(
            run_id=rid, workflow="waiter", input=msgspec.Raw(b"60"), max_duration_s=600
        )
        await h.client.inbox.send(again, msg_id="start-again")
        await h.client.send_event(rid, "go", {"approved": True, "by": "me"})  # after it
        assert await h.client.result(rid, timeout=10) == {"approved": True, "by": "me"}
        assert types(await h.client.history(rid)).count("run.started") == 1
    assert await _scheduled(nc, subjects, rid) == deadline_before


async def _scheduled(nc: NATS, subjects: Subjects, run_id: str) -> tuple[str, str]:
    """The stream sequence and time of a run's wall-time deadline timer."""
    req = msgspec.json.encode({"last_by_subj": subjects.schedule(run_id, 0)})
    stream = subjects.inbox_stream_of(subjects.shard_of(run_id))
    msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}", req, timeout=5)
    headers = msg.headers or {}
    assert "Status" not in headers, headers
    return headers["Nats-Sequence"], headers["Nats-Schedule"]


async def test_awaiting_asyncio_is_refused(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Workflow code awaiting a non-durable awaitable fails with a message saying why."""
    reg = ms.Registry()

    @reg.workflow
    async def sneaky(ctx: ms.Context, _: None) -> None:
        await anyio.sleep(0.01)  # the non-durable await under test

    async with running(nc, subjects, reg, forced_replay=forced_replay) as h:
        rid = await h.client.start("sneaky", None)
        with pytest.raises(ms.RunFailedError, match="only await ctx"):
            await h.client.result(rid, timeout=10)


async def test_idle_runs_are_evicted_and_replayed(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Memory is bounded: beyond max_actors idle runs are evicted, then replay on input."""
    opts = ms.WorkerOptions(max_actors=2, lease_ttl_s=3)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=opts) as h:
        ids = [await h.client.start("waiter", 60, run_id=f"ev{i}") for i in range(6)]
        for rid in ids:
            await wait_status(h.client, rid, "waiting")
        assert len(h.workers[0].actors) <= 2
        for rid in ids:
            await h.client.send_event(rid, "go", {"approved": True, "by": rid})
        results = [await h.client.result(rid, timeout=10) for rid in ids]
    assert results == [{"approved": True, "by": rid} for rid in ids]


@pytest.mark.live_only(
    "handler-service behaviour (instances sharing one consumer); the kernel's side of a "
    "fan-out runs under forced replay in test_fan_out_100_effects"
)
async def test_handler_instances_share_the_work(nc: NATS, subjects: Subjects) -> None:
    """Two instances serving one effect kind split the requests between them."""
    served: dict[str, int] = {"a": 0, "b": 0}
    both_serving = anyio.Event()

    def instance(tag: str) -> ms.Handlers:
        hs = ms.Handlers()

        @hs.handler("math.double", concurrency=4)
        async def double(x: int) -> int:
            served[tag] += 1
            if served["a"] and served["b"]:
                both_serving.set()
            # Hold every request until both instances have one: an instance that is full
            # (concurrency 4) cannot take more, so the other must be handed work, however
            # fast or slow either of them is.
            await both_serving.wait()
            return x * 2

        return hs

    async with running(nc, subjects, registry) as h, anyio.create_task_group() as tg:
        assert h.keys is not None
        fx_keys = h.keys.effect_keys(["math.double"])
        for name in ("a", "b"):
            service = ms.HandlerService(nc, instance(name), subjects=subjects, keys=fx_keys)
            await tg.start(service.run)
        rid = await h.client.start("fanout", 60)
        with anyio.fail_after(20):
            await both_serving.wait()
        assert await h.client.result(rid, timeout=30) == sum(2 * i for i in range(60))
        tg.cancel_scope.cancel()
    assert served["a"] + served["b"] == 60
    assert served["a"] > 0
    assert served["b"] > 0


async def test_corrupt_journal_holds_that_run_only(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A run whose journal fails verification is held (never appended to); others go on."""
    from datetime import UTC, datetime

    from schemas import RunStarted, WaitStarted
    from streams import GENESIS, Journal, ensure_topology

    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    at = datetime.now(UTC)
    first = await j.append(
        RunStarted(
            run_id="bent", n=1, at=at, workflow="waiter", version="1", input=msgspec.Raw(b"60")
        ),
        expected_seq=0,
        prev=GENESIS,
    )
    await j.append(
        WaitStarted(run_id="bent", n=2, at=at, seq=1, name="go"),
        expected_seq=first.seq,
        prev=b"\x09" * 32,
    )
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        await h.client.send_event("bent", "go", {"approved": True})
        js = nc.jetstream()
        held = await js.get_last_msg(subjects.inbox_stream, f"{subjects.prefix}.in.*.bent.ev.go")
        p = subjects.partition("bent")  # published events are read where shard 0 keeps them
        consumer = subjects.inbox_consumer(p) if p in subjects.shard_partitions(0) else None
        consumer = consumer or subjects.event_consumer(p)

        async def delivered() -> bool:
            info = await js.consumer_info(subjects.inbox_stream, consumer)
            return bool(info.delivered.stream_seq >= held.seq)

        await wait_until(delivered)
        fine = await h.client.start("chain", 2)
        assert await h.client.result(fine, timeout=10) == 2
        still = await js.get_last_msg(subjects.inbox_stream, f"{subjects.prefix}.in.*.bent.ev.go")
        assert still.seq == held.seq  # not acked: held for an operator
        assert len(await h.client.journal.load("bent", verify=False)) == 2


async def test_cost_budget_ends_the_run(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """Effects reporting cost_usd count against the run's budget; crossing it fails the
    run with limit.cost before the next decision."""
    reg, hs = ms.Registry(), ms.Handlers()

    @hs.handler("paid.call")
    async def paid(_: None) -> dict[str, float]:
        return {"cost_usd": 0.4}

    @reg.workflow
    async def spender(ctx: ms.Context, _: None) -> int:
        for _i in range(5):
            await ctx.effect("paid.call")
        return 5

    async with running(nc, subjects, reg, hs, forced_replay=forced_replay) as h:
        rid = await h.client.start("spender", None, max_cost_usd=1.0)
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=10)
        kinds = types(await h.client.history(rid))
    assert err.value.error.type == "limit.cost"
    assert kinds.count("effect.completed") == 3  # 1.2 > 1.0: no fourth call


async def test_wall_time_limit_ends_a_waiting_run(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A run still going at its wall-time limit fails with limit.wall_time (durable timer)."""
    opts = ms.WorkerOptions(max_duration_s=0.5, lease_ttl_s=3)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=opts) as h:
        rid = await h.client.start("waiter", 600)
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=15)
        quick = await h.client.start("chain", 2)
        assert await h.client.result(quick, timeout=10) == 2  # finished well inside it
    assert err.value.error.type == "limit.wall_time"
