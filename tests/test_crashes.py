"""Failure paths with real processes: SIGKILLed workers and handlers, timers across restarts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from mainspring import NatsServer
from schemas import TimerStarted
from streams import Subjects
from tests.apps import registry
from tests.harness import assert_journal_sound, running, step_seqs, types, wait_until
from tests.procs import spawn

pytestmark = pytest.mark.anyio


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_worker_sigkill_mid_run(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """kill -9 of a worker mid-run: a new worker finishes every run; journals stay sound."""
    side = tmp_path / "side.txt"
    first = spawn("worker", "tests.apps:registry", nats_server.url, subjects, tmp_path / "w1.log")
    client = ms.Client(nc, subjects)
    ids = [
        await client.start(
            "slow_chain", {"file": str(side), "steps": 10, "delay": 0.1}, run_id=f"k{i}"
        )
        for i in range(20)
    ]

    async def progressed() -> bool:
        return len(_lines(side)) >= 30

    try:
        await wait_until(progressed, timeout=30)
        first.kill9()
        done_before = len(_lines(side))
        assert done_before < 200, "every run finished before the kill; the test proved nothing"
        second = spawn(
            "worker", "tests.apps:registry", nats_server.url, subjects, tmp_path / "w2.log"
        )
        try:
            with anyio.fail_after(60):
                results = [await client.result(rid) for rid in ids]
        finally:
            second.stop()
    finally:
        first.kill9()
    assert results == [10] * 20
    for rid in ids:
        events = await client.history(rid)
        assert_journal_sound(rid, events)
        steps = step_seqs(events)
        assert steps == list(range(1, 11)), f"{rid}: journaled steps {steps}"
    per_step = Counter(_lines(side))
    assert set(per_step) == {f"{rid},{i}" for rid in ids for i in range(10)}
    # a step in flight at the kill may run twice (steps are at-least-once), nothing else
    assert sum(per_step.values()) - len(per_step) <= 20


# Long enough that the first worker is surely dead before the timer falls due: if it is
# still up then, it handles the timer itself (the inbox is a work queue, so the fired
# timer is gone) and nothing is left to prove. With 1.5 s this happened on a loaded
# machine (a late poll of the journal), and the test then hung 30 s on a message that
# could no longer come.
OUTAGE_TIMER_S = 4.0


async def test_timer_fires_after_worker_outage(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """A timer that falls due while no worker runs fires when a worker comes back."""
    client = ms.Client(nc, subjects)
    first = spawn("worker", "tests.apps:registry", nats_server.url, subjects, tmp_path / "w1.log")
    try:
        rid = await client.start("sleeper", OUTAGE_TIMER_S, run_id="nap")

        async def timer_started() -> TimerStarted | None:
            try:
                events = await client.history(rid)
            except ms.MainspringError:
                return None
            return next((e.event for e in events if isinstance(e.event, TimerStarted)), None)

        timer = await wait_until(timer_started, timeout=30)
    finally:
        first.kill9()
    killed_at = datetime.now(UTC)
    assert killed_at < timer.fire_at, (
        f"the worker was killed at {killed_at:%H:%M:%S.%f}, after the timer fell due "
        f"({timer.fire_at:%H:%M:%S.%f}): it may have handled the timer itself; a machine this "
        f"slow needs a longer OUTAGE_TIMER_S than {OUTAGE_TIMER_S}"
    )
    js = nc.jetstream()

    async def fired_into_inbox() -> bool:  # the server delivered the timer with no worker up
        try:
            await js.get_last_msg(subjects.inbox_stream, subjects.inbox(rid, "timer.fire"))
        except Exception:
            return False
        return True

    await wait_until(fired_into_inbox, timeout=30)
    second = spawn("worker", "tests.apps:registry", nats_server.url, subjects, tmp_path / "w2.log")
    try:
        assert await client.result(rid, timeout=30) == "woke"
    finally:
        second.stop()


async def _handler_killed_mid_effect(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path, workflow: str
) -> tuple[object, list[str], list[str]]:
    side = tmp_path / "fx.txt"
    env = {"MS_ACK_WAIT": "2", "MS_LINGER": "60"}
    async with running(nc, subjects, registry) as h:
        first = spawn(
            "handlers",
            "tests.apps:handlers",
            nats_server.url,
            subjects,
            tmp_path / "h1.log",
            env=env,
        )
        try:
            rid = await h.client.start(workflow, str(side), run_id="fx1")

            async def effect_started() -> bool:
                return len(_lines(side)) >= 1

            await wait_until(effect_started, timeout=30)
        finally:
            first.kill9()
        second = spawn(
            "handlers",
            "tests.apps:handlers",
            nats_server.url,
            subjects,
            tmp_path / "h2.log",
            env={**env, "MS_LINGER": "0"},
        )
        try:
            try:
                outcome: object = await h.client.result(rid, timeout=30)
            except ms.RunFailedError as e:
                outcome = e.error.type
            kinds = types(await h.client.history(rid))
        finally:
            second.stop()
    return outcome, _lines(side), kinds


async def test_handler_sigkill_redelivers_effect(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """kill -9 of a handler mid-effect: another instance gets it; journaled once."""
    outcome, lines, kinds = await _handler_killed_mid_effect(
        nc, nats_server, subjects, tmp_path, "once"
    )
    assert outcome == 2  # the second delivery completed it
    assert lines == ["fx1,1", "fx1,2"]  # the handler ran twice (at-least-once)...
    assert kinds.count("effect.completed") == 1  # ...but the journal has one result


async def test_handler_sigkill_at_most_once_reports_interrupted(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """An at-most-once effect whose handler died is reported interrupted, never rerun."""
    outcome, lines, kinds = await _handler_killed_mid_effect(
        nc, nats_server, subjects, tmp_path, "once_amo"
    )
    assert outcome == "effect.interrupted"
    assert lines == ["fx1,1"]
    assert kinds.count("effect.failed") == 1
