"""Poison messages end: every inbox message is applied, rejected with a reason, or moved
to the dead-letter stream with the reason; nothing is redelivered forever.

Each case where the worker judges the input runs live and under forced replay."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from mainspring import NatsServer
from schemas import EventRejected, RunStarted, encode_event
from streams import DeadLetter, Subjects, dead_letters, reinject
from tests import apps
from tests.apps import registry
from tests.harness import events_of, hand_made_request, running, types, wait_status, wait_until
from tests.procs import Proc, acli, conn_args, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.replayed]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "flows"


async def _letters(
    nc: NATS, subjects: Subjects, n: int, *, source: str = "*", run_id: str = "*"
) -> list[DeadLetter]:
    async def enough() -> list[DeadLetter] | None:
        found = await dead_letters(nc, subjects, source=source, run_id=run_id)
        return found if len(found) >= n else None

    return await wait_until(enough, timeout=20)


async def test_late_events_are_dead_lettered_once_and_live_runs_carry_on(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Events sent to an ended run are kept as dead letters (not journaled, not
    redelivered), and a live run in the same worker still resumes."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        ended = await h.client.start("chain", 1, run_id="ended")
        assert await h.client.result(ended) == 1
        live = await h.client.start("waiter", 60, run_id="live")
        await wait_status(h.client, live, "waiting")
        before = len(await h.client.history(ended))
        for i in range(200):
            await h.client.send_event(ended, "go", {"approved": True, "i": i})
        await h.client.send_event(live, "go", {"approved": True, "by": "ops"})
        assert await h.client.result(live, timeout=20) == {"approved": True, "by": "ops"}
        letters = await _letters(nc, subjects, 200, source="late", run_id=ended)
        assert len(letters) == 200
        assert "after the run ended (run.completed)" in letters[0].reason
        assert letters[0].subject.endswith(f".{ended}.ev.go")
        assert msgspec.json.decode(letters[0].data) == {"approved": True, "i": 0}
        assert len(await h.client.history(ended)) == before


async def test_event_names_from_raw_publishers_are_validated_by_the_worker(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Names a client would refuse (unicode, too long, wildcards) published by hand onto
    the public subject are dead-lettered with the reason, never journaled."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60, run_id="named")
        await wait_status(h.client, rid, "waiting")
        bad = ["grüße", "x" * 3000, "*", ">"]
        for name in bad:
            await nc.publish(f"{subjects.prefix}.event.{rid}.{name}", b"{}")
        letters = await _letters(nc, subjects, len(bad), source="junk")
        assert sum("invalid event name" in letter.reason for letter in letters) == 2
        assert sum("names no run" in letter.reason for letter in letters) == 2
        assert "event.received" not in types(await h.client.history(rid))
        await h.client.send_event(rid, "go", {"approved": False, "by": "x"})
        assert await h.client.result(rid, timeout=20) == {"approved": False, "by": "x"}


async def test_junk_has_a_bound_of_its_own_and_cannot_end_a_run(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Rejected events do not use up max_events; past max_rejections further junk is
    dead-lettered (not journaled) and the run still takes a good event."""
    opts = ms.WorkerOptions(lease_ttl_s=3, max_events=10, max_rejections=5)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=opts) as h:
        rid = await h.client.start("waiter", 60, run_id="junked")
        await wait_status(h.client, rid, "waiting")
        for i in range(8):  # not JSON
            await h.client.send_event(rid, "go", msgspec.Raw(b"{nope" + str(i).encode()))
        for i in range(8):  # JSON, but not what the wait takes
            await h.client.send_event(rid, "go", {"approved": "maybe", "i": i})
        letters = await _letters(nc, subjects, 11, source="junk", run_id=rid)
        assert len(letters) == 11
        assert "further junk is dead-lettered" in letters[-1].reason
        kinds = types(await h.client.history(rid))
        assert kinds.count("event.rejected") == 5
        await h.client.send_event(rid, "go", {"approved": True, "by": "finally"})
        assert await h.client.result(rid, timeout=20) == {"approved": True, "by": "finally"}


async def test_an_input_that_keeps_failing_is_dead_lettered_and_can_be_reinjected(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """An activation that raises on every delivery ends in the dead-letter stream after
    a bounded number of deliveries; after the fix, re-injecting it runs it."""
    apps.BROKEN.add("poisoned")
    opts = ms.WorkerOptions(lease_ttl_s=3, poison_deliveries=3)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=opts) as h:
        await h.client.start("fragile", {"name": "poisoned"}, run_id="poisoned")
        (letter,) = await _letters(nc, subjects, 1, source="inbox", run_id="poisoned")
        assert "activation failed 3 times" in letter.reason
        assert "RuntimeError" in letter.reason
        assert letter.deliveries == 3
        assert letter.headers["Nats-Msg-Id"] == "start:poisoned"
        apps.BROKEN.discard("poisoned")  # the fix
        await reinject(nc, subjects, letter.seq)
        assert await h.client.result("poisoned", timeout=20) == "poisoned"
        assert await dead_letters(nc, subjects) == []


async def test_undecodable_inbox_message_is_dead_lettered(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Bytes on an internal inbox subject that are no Mainspring message are kept with
    the decoding error, not redelivered, not dropped silently."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60, run_id="garbage")
        await wait_status(h.client, rid, "waiting")
        await nc.publish(subjects.inbox(rid, "effect.result"), b'{"kind": "nonsense"}')
        (letter,) = await _letters(nc, subjects, 1, source="inbox", run_id=rid)
        assert "not a Mainspring inbox message" in letter.reason
        with pytest.raises(ms.MainspringError, match="no dead letter"):
            await reinject(nc, subjects, letter.seq + 10_000)


@pytest.mark.live_only(
    "the handler service's delivery limit, with handler processes killed for real; the "
    "kernel only journals the failed effect (as in test_workflows' effect failures)"
)
async def test_handler_crashing_on_a_request_ends_the_effect_after_bounded_deliveries(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """A request that kills every handler process that takes it is not redelivered
    forever: after max_deliveries the effect fails with effect.delivery_limit and the
    request is kept as a dead letter (evidence only: it cannot be re-injected)."""
    log = tmp_path / "h.log"
    procs: list[Proc] = []

    def handler_alive() -> Proc:
        if not procs or procs[-1].popen.poll() is not None:
            procs.append(spawn("handlers", "tests.apps:handlers", nats_server.url, subjects, log))
        return procs[-1]

    async with running(nc, subjects, registry) as h:
        rid = await h.client.start("crash_effect", None, run_id="crashy")
        handler_alive()

        await wait_status(h.client, rid, "running")

        async def ended() -> bool:
            handler_alive()  # a supervisor restarting the crashed service
            return (await h.client.status(rid)).status == "completed"

        try:
            await wait_until(ended, timeout=60, interval=0.2)
        finally:
            for proc in procs:
                proc.kill9()
        assert await h.client.result(rid) == "effect.delivery_limit"
    assert sum(p.popen.returncode == 17 for p in procs) == 2
    (letter,) = await _letters(nc, subjects, 1, source="fx", run_id=rid)
    assert "delivered 2 times without a result" in letter.reason
    with pytest.raises(ms.MainspringError, match="cannot be re-injected"):
        await reinject(nc, subjects, letter.seq)


@pytest.mark.live_only("no run: a handler service alone")
async def test_undecodable_effect_request_is_dead_lettered(nc: NATS, subjects: Subjects) -> None:
    """Bytes on an effect-request subject that are no request: kept with the reason."""
    async with running(nc, subjects, handlers=apps.handlers):
        await nc.publish(subjects.journal_effect("forged", "math.double"), b"not json")
        (letter,) = await _letters(nc, subjects, 1, source="fx")
        assert "not a Mainspring effect request" in letter.reason


@pytest.mark.live_only("no run: a handler service alone")
async def test_forged_effect_requests_are_refused_not_executed(
    nc: NATS, subjects: Subjects
) -> None:
    """Requests published by hand onto an effect-request subject that no worker would
    write are never executed: one naming a result inbox of the publisher's choosing
    (to collect a command's output), one whose body names another run or kind than
    its subject, and a journal event of another type. Each is dead-lettered once with
    its reason, and nothing reaches the chosen inbox."""
    served, ran = ms.Handlers(), []

    @served.handler("math.double")
    async def double(x: int) -> int:
        ran.append(x)
        return x * 2

    request = hand_made_request

    loot = await nc.subscribe("loot.>")
    async with running(nc, subjects, handlers=served):
        where = subjects.journal_effect
        await nc.publish(where("victim", "math.double"), request("victim", inbox="loot.out"))
        await nc.publish(where("victim", "math.double"), request("other"))
        await nc.publish(where("victim", "math.double"), request("victim", kind="cli"))
        started = RunStarted(run_id="victim", n=1, at=datetime.now(UTC), workflow="w", version="1")
        await nc.publish(where("victim", "math.double"), encode_event(started))
        letters = await _letters(nc, subjects, 4, source="fx")
    reasons = sorted(letter.reason for letter in letters)
    assert all(r.startswith("effect request refused: ") for r in reasons), reasons
    assert sum("names loot.out for its result" in r for r in reasons) == 1
    assert sum("was stored on" in r for r in reasons) == 2  # another run; another kind
    assert sum("a run.started event" in r for r in reasons) == 1
    assert ran == []  # the handler ran none of them
    assert loot.pending_msgs == 0  # refused before anything could be sent there


@pytest.mark.live_only(
    "the CLI over the dead-letter stream; the worker's side of it runs under forced replay "
    "in test_an_input_that_keeps_failing_is_dead_lettered_and_can_be_reinjected"
)
async def test_cli_lists_dead_letters_and_reinjects_one(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """`mainspring dead-letters --json` shows each letter with its reason; `--reinject`
    puts an inbox message back after the fix, and the run it was for runs."""
    apps.BROKEN.add("cli-poisoned")
    opts = ms.WorkerOptions(lease_ttl_s=3, poison_deliveries=2)
    async with running(nc, subjects, registry, options=opts) as h:
        await h.client.start("fragile", {"name": "cli-poisoned"}, run_id="clip")
        (letter,) = await _letters(nc, subjects, 1, source="inbox", run_id="clip")
        listed = await acli("dead-letters", "--json", *conn_args(nats_server, subjects))
        assert listed.returncode == 0, listed.stderr
        (shown,) = msgspec.json.decode(listed.stdout)["details"]
        assert shown["seq"] == letter.seq
        assert shown["run_id"] == "clip"
        assert "RuntimeError" in shown["reason"]
        apps.BROKEN.discard("cli-poisoned")
        again = await acli(
            "dead-letters", "--reinject", str(letter.seq), *conn_args(nats_server, subjects)
        )
        assert again.returncode == 0, again.stderr
        assert await h.client.result("clip", timeout=20) == "cli-poisoned"
        missing = await acli(
            "dead-letters", "--reinject", str(letter.seq), *conn_args(nats_server, subjects)
        )
        assert missing.returncode == 10
        assert "no dead letter" in missing.stderr


async def test_declarative_run_rejects_event_names_its_document_does_not_declare(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A spec run journals an event its document declares no await_event for as rejected,
    naming the events it accepts; the run keeps waiting and takes the declared one."""
    from flows import flow_registry, load_spec, validate_spec
    from handlers import builtin_handlers

    spec = validate_spec(load_spec(EXAMPLES / "tag_release.yaml")).document
    async with running(
        nc, subjects, flow_registry(), builtin_handlers(cli_allow="*"), forced_replay=forced_replay
    ) as h:
        rid = await h.client.start("flow", {"spec": spec, "inputs": {"repo": "r", "tag": "v1"}})
        await wait_status(h.client, rid, "waiting")
        await h.client.send_event(rid, "start", {"decision": "publish"})
        rejected = await wait_until(lambda: _rejections(h.client, rid), timeout=20)
        assert "declares no event 'start' (it accepts: release_review)" in rejected[0].reason
        await h.client.send_event(rid, "release_review", {"decision": "hold"})
        assert await h.client.result(rid, timeout=30) == {"status": "held"}


async def _rejections(client: ms.Client, rid: str) -> list[EventRejected]:
    return events_of(await client.history(rid), EventRejected)


async def test_duplicate_event_past_the_dedupe_window_is_ignored_once(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """An event whose id the run has already journaled (a re-injected copy, or one sent
    again after the stream's de-duplication window) is acknowledged and logged as a
    duplicate: not journaled twice, not retried, not dead-lettered."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("two_waits", None, run_id="dupes")
        await wait_status(h.client, rid, "waiting")
        await h.client.send_event(rid, "tick", 1, event_id="first")
        await nc.publish(  # the same event id, under another message id
            subjects.event(rid, "tick"),
            b"99",
            headers={"Nats-Msg-Id": "again", "Ms-Event-Id": "first"},
        )
        await h.client.send_event(rid, "tick", 2, event_id="second")
        assert await h.client.result(rid, timeout=20) == [1, 2]
        assert types(await h.client.history(rid)).count("event.received") == 2
        js = nc.jetstream()

        async def inbox_empty() -> bool:  # nothing left being redelivered
            return (await js.stream_info(subjects.inbox_stream)).state.messages == 0

        await wait_until(inbox_empty, timeout=5)
    assert await dead_letters(nc, subjects) == []
