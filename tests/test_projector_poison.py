"""The projector never loops on a journal record it cannot store: what jsonb cannot
hold is stored in a form it can; anything else PostgreSQL refuses is dead-lettered
with the reason, and every other record is projected."""

from __future__ import annotations

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from projections import Projector
from streams import Subjects, dead_letters
from tests.apps import registry
from tests.harness import projected, running

pytestmark = pytest.mark.anyio


async def test_a_nul_character_in_a_value_is_projected(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """A run input with U+0000 (valid JSON, refused by jsonb) is projected with U+FFFD in
    the jsonb copy; its exact bytes stay in run_events; nothing is retried forever."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry, projector=projector) as h:
        rid = await h.client.start("fragile", {"name": "nul\u0000byte"}, run_id="nul")
        assert await h.client.result(rid) == "nul\u0000byte"
        await projected(projector, nc, subjects)
    row = await pool.fetchrow("SELECT status, input, output FROM runs WHERE run_id = 'nul'")
    assert row is not None
    assert row["status"] == "completed"
    assert msgspec.json.decode(row["input"]) == {"name": "nul\ufffdbyte"}
    stored = await pool.fetchval("SELECT data FROM run_events WHERE run_id = 'nul' AND n = 1")
    assert b"nul\\u0000byte" in bytes(stored)
    assert await dead_letters(nc, subjects, source="projector") == []


async def test_a_record_postgres_refuses_is_dead_lettered_not_retried_forever(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """When PostgreSQL refuses one run's rows (here: a constraint added by an operator),
    the projector finds that record by halving its batch, dead-letters it with the
    reason, moves past it, and projects every other run."""
    projector = Projector(nc, pool, subjects, batch_size=50)
    await projector.catch_up()  # the schema exists
    await pool.execute(
        "ALTER TABLE runs ADD CONSTRAINT no_poison CHECK (run_id <> 'poison') NOT VALID"
    )
    async with running(nc, subjects, registry, projector=projector) as h:
        good = [await h.client.start("chain", 2, run_id=f"ok{i}") for i in range(5)]
        bad = await h.client.start("chain", 2, run_id="poison")
        more = [await h.client.start("chain", 2, run_id=f"after{i}") for i in range(5)]
        for rid in [*good, bad, *more]:
            assert await h.client.result(rid) == 2
        await projected(projector, nc, subjects)
    projected_runs = {r["run_id"] for r in await pool.fetch("SELECT run_id FROM runs")}
    assert projected_runs == set(good) | set(more)
    letters = await dead_letters(nc, subjects, source="projector")
    assert {letter.run_id for letter in letters} == {bad}
    assert len(letters) == 4  # run.started, two steps, run.completed: each refused
    assert all("PostgreSQL refused its projection" in x.reason for x in letters)
    assert "no_poison" in letters[0].reason
    assert projector.stats.dead_lettered == len(letters)
