"""End-to-end behaviour of runs on a real nats-server (each case live and under forced replay)."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import assert_journal_sound, running, types, wait_status

pytestmark = [pytest.mark.anyio, pytest.mark.replayed]


async def test_chain_of_steps_completes(nc: NATS, subjects: Subjects, forced_replay: bool) -> None:
    """A run of journaled local steps returns the right output with a sound journal."""
    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("chain", 5, run_id="c1")
        assert await h.client.result(rid, timeout=10) == 5
        events = await h.client.history(rid)
    assert types(events) == ["run.started"] + ["step.completed"] * 5 + ["run.completed"]
    assert_journal_sound(rid, events)


async def test_agent_effect_wait_approval(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Effect, then a wait resumed by a published event, then completion."""
    async with running(nc, subjects, registry, handlers, forced_replay=forced_replay) as h:
        rid = await h.client.start("agent", "otters", run_id="a1")
        status = await wait_status(h.client, rid, "waiting")
        assert status.waiting_for == ["approval"]
        await h.client.send_event(rid, "approval", {"approved": True, "by": "ada"})
        out = await h.client.result(rid, timeout=10)
    assert out == {"draft": "DRAFT: write about otters", "approved": True, "by": "ada"}
