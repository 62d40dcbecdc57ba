"""Projector faults: killed mid-stream, Postgres restarted under load."""

from __future__ import annotations

from pathlib import Path

import anyio
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from projections import Projector, audit
from servers._postgres import PostgresServer
from streams import Subjects
from tests.apps import registry
from tests.harness import (
    projected,
    running,
    sharded,  # noqa: F401  (the shards fixture: 1 and 4)
    wait_until,
)
from tests.procs import spawn

pytestmark = pytest.mark.anyio


async def _event_count(nc: NATS, subjects: Subjects) -> int:
    js = nc.jetstream()
    return sum([(await js.stream_info(s)).state.messages for s in subjects.journal_streams])


async def test_projector_sigkill_and_restart(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pg_dsn: str, tmp_path: Path
) -> None:
    """kill -9 of the projector while it projects; a new one resumes: no gaps, no doubles."""
    args = ("--postgres-dsn", pg_dsn)
    async with running(nc, subjects, registry) as h:
        first = spawn("projector", "", nats_server.url, subjects, tmp_path / "p1.log", extra=args)
        try:
            ids = [await h.client.start("chain", 20, run_id=f"pk{i}") for i in range(60)]
            pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)

            async def some_projected() -> bool:
                try:
                    n = await pool.fetchval("SELECT count(*) FROM run_events")
                except asyncpg.UndefinedTableError:
                    return False
                return bool(n and n > 50)

            await wait_until(some_projected, timeout=30)
            first.kill9()
            for rid in ids:
                await h.client.result(rid, timeout=30)
        finally:
            first.kill9()
        total = await _event_count(nc, subjects)
        second = spawn("projector", "", nats_server.url, subjects, tmp_path / "p2.log", extra=args)
        try:

            async def all_projected() -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM run_events") == total)

            await wait_until(all_projected, timeout=30)
        finally:
            second.stop()
        assert await pool.fetchval("SELECT count(DISTINCT (run_id, n)) FROM run_events") == total
        assert await pool.fetchval("SELECT max(stream_seq) FROM run_events") == await pool.fetchval(
            "SELECT stream_seq FROM projector_positions WHERE name = 'main'"
        )
        report = await audit(nc, subjects, pool)
        assert report.ok, report.problems
        assert report.runs == 60
        await pool.close()


async def test_postgres_restart_under_load(nc: NATS, subjects: Subjects, tmp_path: Path) -> None:
    """Postgres stops while runs go on: no run waits for it; the projector catches up."""
    pg = PostgresServer(tmp_path / "pg").start()
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=4)
    projector = Projector(nc, pool, subjects)
    try:
        async with running(nc, subjects, registry, projector=projector) as h:
            await h.client.result(await h.client.start("chain", 3, run_id="before"), timeout=10)
            await projected(projector, nc, subjects)
            pg.stop()
            with anyio.fail_after(30):  # runs finish with Postgres down
                ids = [await h.client.start("chain", 10, run_id=f"down{i}") for i in range(30)]
                results = [await h.client.result(rid) for rid in ids]
            assert results == [10] * 30
            pg.start()
            await projected(projector, nc, subjects, timeout=60)
            count = await pool.fetchval("SELECT count(*) FROM run_events")
            assert count == await _event_count(nc, subjects)
            statuses = await pool.fetch("SELECT DISTINCT status FROM runs")
            assert [r["status"] for r in statuses] == ["completed"]
            report = await audit(nc, subjects, pool)
            assert report.ok, report.problems
    finally:
        await pool.close()
        pg.destroy()  # as root the cluster may live outside tmp_path
