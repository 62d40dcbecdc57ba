"""Backup and restore: a stopped deployment's streams copied with `mainspring backup`,
brought back on another server with `mainspring restore`; the restored deployment
verifies, its projections are rebuilt, and its waiting runs resume without any effect
running again."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from mainspring._backup import check_quiet
from projections import Projector
from schemas import ConfigError
from streams import Journal, Subjects, connect
from tests.apps import handlers, registry
from tests.harness import keys_for, running, types, wait_status
from tests.procs import acli, conn_args

pytestmark = pytest.mark.anyio


@pytest.fixture
def shards() -> int:
    return 2


async def test_backup_then_restore_elsewhere_resumes_waiting_runs(
    nc: NATS,
    nats_server: NatsServer,
    subjects: Subjects,
    tmp_path: Path,
    pg_dsn: str,
) -> None:
    ids = [f"b{i}" for i in range(6)]
    async with running(nc, subjects, registry, handlers) as h:
        for rid in ids:
            await h.client.start("agent", rid, run_id=rid)  # an effect, then a wait
        done = await h.client.start("chain", 3, run_id="done")
        assert await h.client.result(done, timeout=20) == 3
        for rid in ids:
            await wait_status(h.client, rid, "waiting")
        before = {rid: [(e.seq, e.hash) for e in await h.client.history(rid)] for rid in ids}
        with pytest.raises(ConfigError, match="worker"):  # refused while it runs
            await check_quiet(nc, subjects, "backing up")

    out = await acli("backup", str(tmp_path / "bk"), *conn_args(nats_server, subjects))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "backed up" in out.stdout

    other = NatsServer(tmp_path / "other").start()
    try:
        args = conn_args(other, subjects, pg_dsn)
        out = await acli("restore", str(tmp_path / "bk"), *conn_args(other, subjects))
        assert out.returncode == 0, out.stdout + out.stderr
        assert "7 run(s) verify intact" in out.stdout
        again = await acli("restore", str(tmp_path / "bk"), *conn_args(other, subjects))
        assert again.returncode != 0
        assert "exists on this server" in again.stderr

        out = await acli("projections", "rebuild", "--yes", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        out = await acli("audit", "verify", "--all", *args)
        assert out.returncode == 0, out.stdout + out.stderr

        nc2 = await connect(other.url)
        try:
            js = nc2.jetstream()
            for stream in subjects.journal_streams:  # handlers' places came back too
                fx = await js.consumer_info(stream, subjects.effect_consumer("llm.mock"))
                assert fx.num_pending == 0
                assert fx.num_ack_pending == 0
                assert fx.ack_floor.stream_seq > 0
            restored = Journal(nc2, subjects, keys=keys_for(subjects))
            for rid in ids:  # every entry at its own sequence, with its own hash
                assert [(e.seq, e.hash) for e in await restored.load(rid)] == before[rid]
            async with running(nc2, subjects, registry, handlers) as h:
                for rid in ids:
                    await h.client.send_event(rid, "approval", {"approved": True, "by": "ops"})
                for rid in ids:
                    assert (await h.client.result(rid, timeout=30))["by"] == "ops"
                    kinds = types(await h.client.history(rid))
                    assert kinds.count("effect.requested") == 1, kinds  # not run again
                    assert kinds.count("effect.completed") == 1, kinds
            pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
            try:
                projector = Projector(nc2, pool, subjects)
                await projector.catch_up()
                rows = await pool.fetch("SELECT run_id, status FROM runs")
                assert {r["run_id"]: r["status"] for r in rows} == dict.fromkeys(
                    [*ids, "done"], "completed"
                )
            finally:
                await pool.close()
        finally:
            await nc2.close()
    finally:
        other.stop()


async def test_projections_ahead_of_the_journal_are_refused(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """PostgreSQL restored from a dump newer than the streams: the projector refuses to
    start (it would skip what is appended next) and says to rebuild."""
    async with running(nc, subjects, registry) as h:
        await h.client.result(await h.client.start("chain", 2, run_id="one"), timeout=20)
    await Projector(nc, pool, subjects).catch_up()
    await pool.execute("UPDATE projector_positions SET stream_seq = stream_seq + 100")
    with pytest.raises(ConfigError, match="projections rebuild"):
        await Projector(nc, pool, subjects).catch_up()
