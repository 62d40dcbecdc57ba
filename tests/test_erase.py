"""Erasing a run on request: its data leaves every stream, bucket and table; every other
run keeps its entries at their sequences and verifies; the erasure is recorded and
reported; a crash in the middle is finished by running it again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from projections import Projector, audit, check_stream
from servers import NatsServer
from streams import Journal, JournalEraser, Objects, Subjects, stream_info
from tests.harness import keys_for, projected, running, wait_status, wait_until
from tests.procs import acli, conn_args

pytestmark = [pytest.mark.anyio, pytest.mark.live_only("erasure rebuilds streams; runs are set")]

registry = ms.Registry()
handlers = ms.Handlers()
calls: Counter[str] = Counter()


@handlers.handler("erase.echo")
async def echo(payload: dict[str, str], ctx: ms.EffectContext) -> int:
    calls[ctx.effect_id] += 1
    return len(payload["blob"])


@registry.workflow(version="1")
async def keeps_a_secret(ctx: ms.Context, blob: str) -> object:
    size = await ctx.effect("erase.echo", {"blob": blob})
    go = await ctx.wait_event("go", dict, timeout=600)
    return {"size": size, "go": go}


async def _runs(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> dict[str, list[object]]:
    """Three runs left waiting (one with a payload large enough for the object store),
    projected into PostgreSQL."""
    projector = Projector(nc, pool, subjects, keys=keys_for(subjects))
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        for rid, blob in (("victim", "s" * 400_000), ("other", "o" * 10), ("third", "t")):
            await h.client.start("keeps_a_secret", blob, run_id=rid)
            await wait_status(h.client, rid, "waiting")
        await projected(projector, nc, subjects)
        return {
            rid: [(e.seq, e.hash) for e in await h.client.history(rid)]
            for rid in ("other", "third")
        }


async def _last_seq(nc: NATS, subjects: Subjects) -> int:
    info = await stream_info(nc, subjects.journal_stream)
    assert info is not None
    return int(info["state"]["last_seq"])


async def test_erase_removes_one_run_and_the_rest_verifies_and_goes_on(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """`mainspring erase victim`: its journal, payloads, projection rows go; the others'
    entries keep their sequences and hashes; audit --all is intact and reports the
    erasure; afterwards the deployment goes on (a waiting run resumes, its effect not run
    again, the projector carries on)."""
    keys = keys_for(subjects)
    before = await _runs(nc, subjects, pool)
    last = await _last_seq(nc, subjects)
    victim = await check_stream(nc, subjects, "victim", keys)
    digests = {ref.digest for _, ref in victim["victim"].refs}
    assert digests, "the victim's large payload is stored by reference"
    ran = dict(calls)

    out = await acli(
        "erase",
        "victim",
        "--reason",
        "request 42",
        "--yes",
        *conn_args(nats_server, subjects, pg_dsn),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "erased victim" in out.stdout, out.stdout
    assert "verify intact" in out.stdout, out.stdout

    journal = Journal(nc, subjects, keys=keys)
    assert await journal.run_ids() == ["other", "third"]
    assert await _last_seq(nc, subjects) == last, "every other entry keeps its sequence"
    client = ms.Client(nc, subjects, keys=keys)
    for rid, links in before.items():
        assert [(e.seq, e.hash) for e in await client.history(rid)] == links
    objects = Objects(nc, subjects)
    assert [await objects.stat(d) for d in digests] == [None] * len(digests)
    assert await pool.fetchval("SELECT count(*) FROM run_events WHERE run_id = 'victim'") == 0
    assert await pool.fetchval("SELECT count(*) FROM runs WHERE run_id = 'victim'") == 0
    assert await pool.fetchval("SELECT count(*) FROM runs") == 2

    verified = await acli("audit", "verify", "--all", *conn_args(nats_server, subjects, pg_dsn))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "run victim was erased on request" in verified.stdout
    assert "'request 42'" in verified.stdout

    projector = Projector(nc, pool, subjects, keys=keys)
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        await nc.publish(subjects.event("other", "go"), b'{"ok": true}')
        assert await h.client.result("other", timeout=20) == {"size": 10, "go": {"ok": True}}
        await projected(projector, nc, subjects)
    assert dict(calls) == ran, "no effect ran again on the rebuilt journal"
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = 'other'") == "completed"


class Boom(Exception):
    pass


def _crash_at(step: str) -> object:
    def progress(line: str) -> None:
        if line.startswith(step):
            raise Boom(line)

    return progress


@pytest.mark.parametrize("step", ["copied", "restored"])
async def test_an_erasure_cut_short_is_finished_by_running_it_again(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool, step: str
) -> None:
    """A crash while copying out (the journal untouched) or while copying back (the
    journal deleted and half rebuilt): the same erasure run again completes it, and
    the deployment verifies with the erasure recorded."""
    keys = keys_for(subjects)
    before = await _runs(nc, subjects, pool)
    with pytest.raises(Boom):
        await JournalEraser(nc, subjects, keys, _crash_at(step)).erase(["victim"], "r")  # type: ignore[arg-type]
    done = await JournalEraser(nc, subjects, keys).erase(["victim"], "r")
    assert [(e.run_id, e.reason) for e in done] == [("victim", "r")]
    assert await stream_info(nc, f"{subjects.journal_stream}_ERASING") is None
    client = ms.Client(nc, subjects, keys=keys)
    for rid, links in before.items():
        assert [(e.seq, e.hash) for e in await client.history(rid)] == links
    report = await audit(nc, subjects, None, keys=keys)
    assert report.ok, report.problems
    assert any("run victim was erased" in note for note in report.notes), report.notes


async def test_erase_refuses_while_workers_run(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A worker appending to a journal being rebuilt would lose its appends: refused,
    saying what to stop; without --yes nothing is done either."""
    await _runs(nc, subjects, pool)
    async with running(nc, subjects, registry, handlers):
        busy = await acli(
            "erase", "victim", "--reason", "r", "--yes", *conn_args(nats_server, subjects)
        )
    assert busy.returncode == 10, busy.stderr
    assert "workers of this deployment are running" in busy.stderr
    unconfirmed = await acli("erase", "victim", "--reason", "r", *conn_args(nats_server, subjects))
    assert unconfirmed.returncode == 10
    assert "cannot be undone" in unconfirmed.stderr
    assert "victim" in await Journal(nc, subjects, keys=keys_for(subjects)).run_ids()


async def test_setup_retention_keeps_entries_a_while_and_audit_knows_aged_out_runs(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """`setup --retain-days` sets the journal's max_age, which workers starting later keep;
    runs whose whole journal aged out are noted by `audit verify --all`, not reported
    vanished."""
    await _runs(nc, subjects, pool)
    out = await acli("setup", "--retain-days", "400", *conn_args(nats_server, subjects))
    assert out.returncode == 0, out.stderr
    async with running(nc, subjects, registry, handlers):  # a worker's setup keeps it
        pass
    info = await stream_info(nc, subjects.journal_stream)
    assert info is not None
    assert info["config"]["max_age"] == 400 * 86400 * 10**9
    # Age everything out at once (a test cannot wait 400 days): a one-second max_age.
    config = info["config"] | {"max_age": 10**9, "duplicate_window": 10**9 // 2}
    await nc.request(
        f"$JS.API.STREAM.UPDATE.{subjects.journal_stream}", msgspec.json.encode(config)
    )
    await wait_until(lambda: _aged_out(nc, subjects), timeout=20)
    report = await audit(nc, subjects, None, keys=keys_for(subjects))
    assert report.ok, report.problems
    assert any("3 run(s) began before the journal's first entry" in n for n in report.notes)


async def _aged_out(nc: NATS, subjects: Subjects) -> bool:
    info = await stream_info(nc, subjects.journal_stream)
    assert info is not None
    return int(info["state"]["messages"]) == 0
