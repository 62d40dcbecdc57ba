"""Shards: a deployment of S journal and inbox streams, each owning a range of the
partitions. Fixed when the deployment is created: found by every command without being
named, refused when a process names another number. Keys' sequence thresholds are
per shard. (The kernel and projection modules run their cases over 1 and 4 shards.)"""

from __future__ import annotations

import json

import anyio
import anyio.abc
import asyncpg
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from actors import Worker
from client import Client
from handlers import HandlerService
from projections import Projector
from schemas import ConfigError
from servers import NatsServer
from streams import Journal, Key, Keyring, Subjects, deployed_shards, ensure_topology, key_id
from tests.apps import handlers, registry
from tests.harness import keys_for, projected, running, wait_status, wait_until
from tests.procs import acli, conn_args

pytestmark = pytest.mark.anyio


@pytest.fixture
def shards() -> int:
    return 4


def _one_run_per_shard(subjects: Subjects, stem: str = "r") -> list[str]:
    """A run id for each shard (shards own ranges of the partitions)."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < subjects.shards:
        found.setdefault(subjects.shard_of(f"{stem}{n}"), f"{stem}{n}")
        n += 1
    return [found[k] for k in range(subjects.shards)]


def test_layout_keeps_shard_0_and_splits_the_partitions() -> None:
    """Shard 0 is laid out as a deployment of one shard always was; the others own the
    rest of the partitions, with subjects that no two streams share."""
    one, four = Subjects("ms", 16), Subjects("ms", 16, shards=4)
    rid = next(r for r in (f"r{n}" for n in range(100)) if four.shard_of(r) == 2)
    assert four.journal_stream == one.journal_stream == "MS_JOURNAL"
    assert four.journal_streams == ["MS_JOURNAL", "MS_JOURNAL_1", "MS_JOURNAL_2", "MS_JOURNAL_3"]
    assert four.journal(rid) == f"ms.j2.{rid}.e"
    assert one.journal(rid) == f"ms.j.{rid}.e"
    assert four.schedule(rid, 7) == f"ms.sched2.{rid}.7"
    assert four.inbox(rid, "start") == one.inbox(rid, "start")  # inbox subjects do not move
    assert [four.shard_partitions(k) for k in range(4)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
        [12, 13, 14, 15],
    ]
    owned = [s for k in range(4) for s in four.inbox_stream_subjects(k)]
    assert len(owned) == len(set(owned))
    assert one.inbox_stream_subjects(0) == ["ms.event.*.*", "ms.in.>", "ms.sched.>"]
    assert four.shard_of_subject(four.journal_effect(rid, "x")) == 2
    with pytest.raises(ConfigError, match="shards must be between 1 and the partitions"):
        Subjects("ms", 4, shards=8)


async def test_runs_in_every_shard_and_commands_find_them_unnamed(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """Runs with effects, events and timers end in each shard; the projector follows
    every shard; `status`, `audit verify --all`, `erase` work without --shards; a
    process that names another number of shards is refused and told the right one."""
    projector = Projector(nc, pool, subjects, keys=keys_for(subjects))
    ids, sleepers = _one_run_per_shard(subjects), _one_run_per_shard(subjects, "t")
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        for rid in ids:
            await h.client.start("agent", "shards", run_id=rid)  # an effect, then an event
        for rid in sleepers:
            await h.client.start("sleeper", 0.05, run_id=rid)  # a timer
        for rid in ids:
            await wait_status(h.client, rid, "waiting")
            await h.client.send_event(rid, "approval", {"approved": True, "by": "ops"})
        for rid in ids:
            assert (await h.client.result(rid, timeout=20))["by"] == "ops"
        for rid in sleepers:
            assert await h.client.result(rid, timeout=20) == "woke"
        await projected(projector, nc, subjects)
    per_shard = await Journal(nc, subjects).last_seqs()
    assert all(n > 0 for n in per_shard), per_shard
    assert await deployed_shards(nc, subjects) == 4
    rows = await pool.fetch("SELECT run_id, status FROM runs ORDER BY run_id")
    assert {r["run_id"]: r["status"] for r in rows} == dict.fromkeys(ids + sleepers, "completed")

    args = conn_args(nats_server, subjects, pg_dsn)  # no --shards: read from the deployment
    out = await acli("status", ids[3], "--json", *args)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "completed"
    out = await acli("audit", "verify", "--all", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"verified {len(ids) * 2} run(s)" in out.stdout

    out = await acli("erase", ids[2], "--reason", "asked", "--yes", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    out = await acli("audit", "verify", "--all", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"run {ids[2]} was erased on request" in out.stdout

    out = await acli("status", ids[0], "--shards", "2", *args)
    assert out.returncode != 0
    assert "has 4 shard(s)" in out.stderr
    assert "--shards 4" in out.stderr
    other = Subjects(subjects.prefix, subjects.partitions, shards=2)
    with pytest.raises(ConfigError, match="has 4 shard"):
        await ensure_topology(nc, other)
    with pytest.raises(ConfigError, match="has 4 shard"):
        await Worker(nc, registry, subjects=other).run()


async def test_client_reads_the_shards_of_the_deployment(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """`Client.connect` without ``shards`` finds the deployment's."""
    await ensure_topology(nc, subjects)
    client = await Client.connect(
        nats_server.url, prefix=subjects.prefix, partitions=subjects.partitions
    )
    try:
        assert client.subjects.shards == 4
    finally:
        await client.close()


def test_key_thresholds_are_per_shard(tmp: object) -> None:
    """An untagged entry is legacy up to its own shard's threshold; a revoked key's
    entries are valid up to its own shard's sequence; the file keeps them all."""
    from pathlib import Path

    secret = bytes(range(32))
    ring = Keyring([Key(key_id(secret), secret, "sign")], legacy_until=[10, 3])
    s = Subjects("ms", 16, shards=4)
    in_shard = {s.shard_of(f"r{n}"): f"r{n}" for n in range(200)}
    zero, one, two = (s.journal(in_shard[k]) for k in (0, 1, 2))
    assert ring.check_entry(zero, b"x", None, 10).legacy
    assert ring.check_entry(one, b"x", None, 3).legacy
    assert not ring.check_entry(one, b"x", None, 4).ok
    assert not ring.check_entry(two, b"x", None, 1).ok  # no threshold named: none legacy

    old = ring.signing
    rotated = ring.added(Key(key_id(b"n" * 32), b"n" * 32, "verify")).signing_with(
        key_id(b"n" * 32)
    )
    revoked = rotated.revoked(old.id, [100, 5])
    tag = old.id + "." + ring.tag_entry(one, b"x").split(".", 1)[1]
    assert revoked.check_entry(one, b"x", tag, 5).ok
    assert (
        "revoked after stream sequence 5 of shard 1"
        in revoked.check_entry(one, b"x", tag, 6).problem
    )
    path = Path(str(tmp)) / "keys.json"
    revoked.save(path)
    again = Keyring.load(path)
    assert again.legacy == (10, 3)
    assert again.keys[old.id].valid_to == (100, 5)
    _ = ms  # the package under test is importable as users import it


async def test_projectors_of_one_name_split_the_shards_and_take_over(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """Two projector processes of the same name split the four shards (two each); every
    entry is projected exactly once; when one stops, the other takes its shards over
    and projects what comes after."""
    first, second = Projector(nc, pool, subjects), Projector(nc, pool, subjects)
    async with running(nc, subjects, registry) as h, anyio.create_task_group() as tg:
        await tg.start(first.run)
        scope = anyio.CancelScope()

        async def second_runs(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with scope:
                await second.run(task_status=task_status)

        await tg.start(second_runs)

        async def split() -> bool:
            return sorted(first.held + second.held) == [0, 1, 2, 3] and len(first.held) == 2

        await wait_until(split, timeout=15)
        ids = _one_run_per_shard(subjects)
        for rid in ids:
            assert await h.client.result(await h.client.start("chain", 3, run_id=rid)) == 3

        async def all_projected() -> bool:
            total = sum(await Journal(nc, subjects).last_seqs())
            return bool(await pool.fetchval("SELECT count(*) FROM run_events") == total)

        await wait_until(all_projected, timeout=20)
        scope.cancel()

        async def took_over() -> bool:
            return first.held == [0, 1, 2, 3]

        await wait_until(took_over, timeout=15)
        later = _one_run_per_shard(subjects, "later")
        for rid in later:
            assert await h.client.result(await h.client.start("chain", 2, run_id=rid)) == 2
        await wait_until(all_projected, timeout=20)
        tg.cancel_scope.cancel()
    assert first.stats.dead_lettered == second.stats.dead_lettered == 0
    rows = await pool.fetch("SELECT run_id, status FROM runs")
    assert {r["run_id"]: r["status"] for r in rows} == dict.fromkeys(ids + later, "completed")


async def test_a_projector_overtaken_on_a_shard_writes_nothing_twice(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """Two projectors of one name folding the same shards at once (a frozen one waking
    up after its shards moved): the position row fences them, so no entry is written
    twice and none is dead-lettered."""
    async with running(nc, subjects, registry) as h:
        for i in range(12):
            await h.client.result(await h.client.start("chain", 3, run_id=f"f{i}"))
    a, b = Projector(nc, pool, subjects, batch_size=7), Projector(nc, pool, subjects, batch_size=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.catch_up)
        tg.start_soon(b.catch_up)
    total = sum(await Journal(nc, subjects).last_seqs())
    assert await pool.fetchval("SELECT count(*) FROM run_events") == total
    assert a.stats.dead_lettered == b.stats.dead_lettered == 0


async def test_handler_services_can_split_the_shards(nc: NATS, subjects: Subjects) -> None:
    """A handler service given some shards serves only their requests; another takes
    the rest (a shard's effects wait for a service of theirs)."""
    keys = keys_for(subjects)
    fx_keys = keys.effect_keys(handlers.kinds())
    first, third = _one_run_per_shard(subjects)[0], _one_run_per_shard(subjects)[2]
    low = HandlerService(nc, handlers, subjects=subjects, keys=fx_keys, shards=[0, 1])
    high = HandlerService(nc, handlers, subjects=subjects, keys=fx_keys, shards=[2, 3])
    async with running(nc, subjects, registry, keys=keys) as h, anyio.create_task_group() as tg:
        await tg.start(low.run)
        for rid in (first, third):
            await h.client.start("agent", "split", run_id=rid)
        await wait_status(h.client, first, "waiting")  # its effect was served
        js = nc.jetstream()
        with pytest.raises(nats.js.errors.NotFoundError):  # nobody pulls shard 2's yet
            await js.consumer_info(subjects.journal_stream_of(2), "fx-llm_mock")
        await tg.start(high.run)
        await wait_status(h.client, third, "waiting")
        for rid in (first, third):
            await h.client.send_event(rid, "approval", {"approved": True, "by": "ops"})
            assert (await h.client.result(rid, timeout=20))["by"] == "ops"
        tg.cancel_scope.cancel()
    with pytest.raises(ConfigError, match="not shards of this deployment"):
        HandlerService(nc, handlers, subjects=subjects, shards=[4])


async def test_a_projector_whose_lock_connection_dies_takes_its_shards_again(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """PostgreSQL drops the connection holding a projector's shard locks (a restart, a
    cut): the projector stops projecting on locks it may no longer hold, takes them
    again on a new connection, and goes on."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry) as h, anyio.create_task_group() as tg:
        await tg.start(projector.run)
        assert projector.held == [0, 1, 2, 3]
        killed = await pool.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'ms-projector:main'"
        )
        assert killed == 1

        async def let_go() -> bool:
            return projector.held == []

        async def taken_again() -> bool:
            return projector.held == [0, 1, 2, 3]

        await wait_until(let_go, timeout=10)
        await wait_until(taken_again, timeout=10)
        rid = await h.client.start("chain", 2, run_id="after")
        assert await h.client.result(rid, timeout=20) == 2
        await projected(projector, nc, subjects)
        tg.cancel_scope.cancel()
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = 'after'") == "completed"
