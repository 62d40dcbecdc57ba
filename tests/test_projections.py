"""Postgres projections: match the journal, exactly once, rebuildable."""

from __future__ import annotations

import asyncpg
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from projections import Projector, Queries, Signer, drop_projections
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import (
    projected,
    running,
    sharded,  # noqa: F401  (the shards fixture: 1 and 4)
    wait_status,
)

pytestmark = pytest.mark.anyio


async def _mixed_runs(h_client: ms.Client) -> dict[str, str]:
    """One run in each state: completed, waiting, failed, cancelled."""
    c = h_client
    await c.start("chain", 3, run_id="done")
    await c.start("agent", "projections", run_id="waits")
    await c.start("flaky_effect", {"terminal": True}, run_id="fails")
    await c.start("waiter", 60, run_id="cancelled")
    await c.result("done", timeout=10)
    await wait_status(c, "waits", "waiting")
    await wait_status(c, "fails", "failed")
    await wait_status(c, "cancelled", "waiting")
    await c.cancel("cancelled")
    await wait_status(c, "cancelled", "cancelled")
    return {"done": "completed", "waits": "waiting", "fails": "failed", "cancelled": "cancelled"}


async def test_projections_match_the_journal(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """Every run's row, events (exact bytes and links), waits and effects match its journal."""
    projector = Projector(nc, pool, subjects, signer=Signer.generate())
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        expected = await _mixed_runs(h.client)
        await projected(projector, nc, subjects)
        q = Queries(pool)
        for run_id, status in expected.items():
            row = await q.run(run_id)
            journal = await h.client.history(run_id)
            assert row is not None
            assert row.status == status
            assert row.events == len(journal)
            assert row.head_hash == journal[-1].hash
            rows = await q.events(run_id)
            assert [(r.n, r.stream_seq, r.data, r.prev_hash, r.hash) for r in rows] == [
                (e.n, e.seq, e.data, e.prev, e.hash) for e in journal
            ]
        waits_row = await q.run("waits")
        assert waits_row is not None
        assert waits_row.waiting_for == ["approval"]
        assert [w["name"] for w in await q.waits("waits", open_only=True)] == ["approval"]
        effects = await q.effects("waits")
        assert [(e["kind"], e["status"]) for e in effects] == [("llm.mock", "completed")]
        failed = await q.run("fails")
        assert failed is not None
        assert failed.error["type"] == "flaky.refused"
        assert failed.effects_failed == 1
        assert [r.status for r in await q.runs(status="waiting")] == ["waiting"]
        done = await q.run("done")
        assert done is not None
        assert done.output == 3
        assert done.workflow == "chain"


async def test_resume_updates_the_projection(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """A resumed run's wait closes and its status moves on in Postgres."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        await h.client.start("agent", "resume", run_id="r")
        await wait_status(h.client, "r", "waiting")
        await h.client.send_event("r", "approval", {"approved": True})
        await h.client.result("r", timeout=10)
        await projected(projector, nc, subjects)
        q = Queries(pool)
        row = await q.run("r")
        assert row is not None
        assert (row.status, row.waiting_for) == ("completed", [])
        assert [w["status"] for w in await q.waits("r")] == ["satisfied"]


async def _dump(pool: asyncpg.Pool) -> dict[str, list[tuple[object, ...]]]:
    tables = {
        "runs": "SELECT * FROM runs ORDER BY run_id",
        "run_events": "SELECT * FROM run_events ORDER BY run_id, n",
        "effects": "SELECT * FROM effects ORDER BY effect_id",
        "waits": "SELECT * FROM waits ORDER BY run_id, seq",
        "checkpoints": "SELECT run_id, n, hash, signature, key_id FROM checkpoints ORDER BY 1, 2",
    }
    return {t: [tuple(r) for r in await pool.fetch(sql)] for t, sql in tables.items()}


async def test_rebuild_equals_live(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """Dropping every projection and rebuilding from the stream gives identical tables."""
    signer = Signer.generate()
    projector = Projector(nc, pool, subjects, signer=signer)
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        await _mixed_runs(h.client)
        await projected(projector, nc, subjects)
    live = await _dump(pool)
    async with pool.acquire() as conn:
        await drop_projections(conn)
    await Projector(nc, pool, subjects, signer=signer).catch_up()
    assert await _dump(pool) == live


async def test_redelivery_changes_nothing(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """A second projector instance (same name) re-reading from its committed position
    adds nothing: position and rows are written in one transaction."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry, projector=projector) as h:
        await h.client.result(await h.client.start("chain", 5), timeout=10)
        await projected(projector, nc, subjects)
    before = await _dump(pool)
    again = Projector(nc, pool, subjects)
    await again.catch_up()
    assert again.stats.events == 0
    assert await _dump(pool) == before
