"""Operator commands end to end, in subprocesses, against real NATS and Postgres."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client as NATS

from client import Client
from mainspring import NatsServer
from projections import Projector, Signer
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import projected, running, types, wait_status, wait_until
from tests.procs import acli, conn_args

pytestmark = pytest.mark.anyio


async def test_query_commands(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """runs / status / inspect / logs answer from the projections, with exit codes."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        await h.client.result(await h.client.start("chain", 2, run_id="ok1"), timeout=10)
        await h.client.start("agent", "cli", run_id="wait1")
        await wait_status(h.client, "wait1", "waiting")
        await projected(projector, nc, subjects)
    common = conn_args(nats_server, subjects, pg_dsn)
    listed = await acli("runs", "--status", "waiting", *common)
    assert listed.returncode == 0, listed.stderr
    assert "wait1" in listed.stdout
    assert "ok1" not in listed.stdout
    waiting = await acli("status", "wait1", *common)
    assert waiting.returncode == 40
    hint = waiting.stdout.index("mainspring resume wait1 approval --payload")
    assert hint < waiting.stdout.index(f"{subjects.prefix}.event.wait1.approval")
    done = await acli("status", "ok1", *common)
    assert done.returncode == 0
    assert "output    2" in done.stdout
    inspected = await acli("inspect", "wait1", *common)
    assert "llm.mock" in inspected.stdout
    assert "wait.started" in inspected.stdout
    timeline = await acli("logs", "ok1", *common)
    assert timeline.stdout.count("step.completed") == 2
    inspect_json = json.loads((await acli("inspect", "wait1", "--json", *common)).stdout)
    assert inspect_json["status"] == "waiting"
    assert [w["name"] for w in inspect_json["details"]["waits"]] == ["approval"]
    assert inspect_json["details"]["events"][0]["type"] == "run.started"
    logs_json = json.loads((await acli("logs", "ok1", "--json", *common)).stdout)
    assert [e["type"] for e in logs_json["details"]].count("step.completed") == 2
    lag_json = json.loads((await acli("projections", "status", "--json", *common)).stdout)
    assert lag_json["details"]["behind"] == 0
    missing = await acli("status", "nope", *common)
    assert missing.returncode == 10
    assert "no run 'nope'" in missing.stderr
    lag = await acli("projections", "status", *common)
    assert lag.returncode == 0, lag.stderr
    assert "(0 behind)" in lag.stdout
    rebuilt = await acli("projections", "rebuild", "--yes", *common)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilt:" in rebuilt.stdout
    assert "wait1" in (await acli("runs", *common)).stdout
    no_pg = await acli("runs", "--nats-url", nats_server.url, env={"MAINSPRING_POSTGRES_DSN": ""})
    assert no_pg.returncode == 10
    assert "MAINSPRING_POSTGRES_DSN" in no_pg.stderr


async def test_audit_commands(
    nc: NATS,
    nats_server: NatsServer,
    subjects: Subjects,
    pool: asyncpg.Pool,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    """audit verify (exit 0 / 30 naming run and position), export, offline verify."""
    signer = Signer.generate()
    signer.save(tmp_path / "key.pem", tmp_path / "key.pub.pem")
    projector = Projector(nc, pool, subjects, signer=signer)
    async with running(nc, subjects, registry, projector=projector) as h:
        await h.client.result(await h.client.start("chain", 4, run_id="au"), timeout=10)
        await projected(projector, nc, subjects)
    common = conn_args(nats_server, subjects, pg_dsn)
    key = ("--public-key", str(tmp_path / "key.pub.pem"))
    intact = await acli("audit", "verify", "--all", *key, *common)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "intact" in intact.stdout
    intact_json = json.loads(
        (await acli("audit", "verify", "--all", "--json", *key, *common)).stdout
    )
    assert (intact_json["status"], intact_json["details"]["events"]) == ("intact", 6)
    exported = tmp_path / "au.jsonl"
    assert (await acli("audit", "export", "au", "-o", str(exported), *common)).returncode == 0
    offline = await acli("audit", "verify", "--file", str(exported), *key)
    assert offline.returncode == 0, offline.stdout
    await pool.execute("DELETE FROM run_events WHERE run_id = 'au' AND n = 3")
    broken = await acli("audit", "verify", "au", *key, *common)
    assert broken.returncode == 30
    assert "run au: postgres, event 3: deleted" in broken.stdout
    lines = exported.read_text().splitlines()
    edited = [
        json.dumps({**json.loads(x), "hash": "00" * 32}) if '"n":2,' in x else x for x in lines
    ]
    exported.write_text("\n".join(edited))
    assert (await acli("audit", "verify", "--file", str(exported), *key)).returncode == 30


async def test_replay_reports_incompatible_code(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """`mainspring replay` passes today's code, fails (exit 30) a deliberately changed one."""
    async with running(nc, subjects, registry, handlers) as h:
        await h.client.result(await h.client.start("chain", 3, run_id="rp1"), timeout=10)
        await h.client.start("agent", "replay", run_id="rp2")
        await wait_status(h.client, "rp2", "waiting")
    base = (
        "--nats-url",
        nats_server.url,
        "--prefix",
        subjects.prefix,
        "--partitions",
        str(subjects.partitions),
    )
    same = await acli("replay", "--all", "--app", "tests.apps:registry", *base)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "2 compatible, 0 incompatible" in same.stdout
    changed = await acli("replay", "rp2", "--app", "tests.changed_apps:registry", *base)
    assert changed.returncode == 30
    changed_json = await acli(
        "replay", "rp2", "--json", "--app", "tests.changed_apps:registry", *base
    )
    assert changed_json.returncode == 30
    assert json.loads(changed_json.stdout)["status"] == "incompatible"
    assert "nondeterminism in run rp2" in changed.stdout
    assert "effect 'llm.mock'" in changed.stdout


async def test_runs_json_and_running_exit_code(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """`runs --json` prints an envelope listing runs; a running run exits 60, not 0."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        await h.client.start("sleeper", 600, run_id="slow1")
        await wait_until(lambda: _has_timer(h.client, "slow1"))
        await projected(projector, nc, subjects)
        common = conn_args(nats_server, subjects, pg_dsn)
        listed = await acli("runs", "--json", *common)
        assert listed.returncode == 0, listed.stderr
        env = json.loads(listed.stdout)
        assert (env["command"], env["status"], env["exit_code"]) == ("runs", "ok", 0)
        [run] = env["details"]
        assert (run["run_id"], run["workflow"], run["status"]) == ("slow1", "sleeper", "running")
        assert run["exit_code"] == 60
        human = await acli("status", "slow1", *common)
        assert human.returncode == 60, human.stdout + human.stderr
        as_json = await acli("status", "slow1", "--json", *common)
        assert as_json.returncode == 60
        assert json.loads(as_json.stdout)["status"] == "running"


async def _has_timer(client: Client, run_id: str) -> bool:
    return "timer.started" in types(await client.history(run_id))


async def test_inspect_without_postgres_reads_the_journal(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """No DSN: inspect, status and logs answer from the journal and say so; a cancelled
    run's wait shows as cancelled, not open."""
    async with running(nc, subjects, registry, handlers) as h:
        await h.client.start("agent", "x", run_id="nopg1")
        await wait_status(h.client, "nopg1", "waiting")
        no_pg = {"MAINSPRING_POSTGRES_DSN": ""}
        conn = conn_args(nats_server, subjects)
        waiting = await acli("inspect", "nopg1", *conn, env=no_pg)
        assert waiting.returncode == 40, waiting.stdout + waiting.stderr
        assert "answering from the run's journal" in waiting.stderr
        assert "llm.mock" in waiting.stdout
        assert "wait.started" in waiting.stdout
        status = await acli("status", "nopg1", *conn, env=no_pg)
        assert status.returncode == 40
        assert "mainspring resume nopg1 approval" in status.stdout
        assert "effect.completed" in (await acli("logs", "nopg1", *conn, env=no_pg)).stdout
        await h.client.cancel("nopg1")
        await wait_status(h.client, "nopg1", "cancelled")
        out = await acli("inspect", "nopg1", "--json", *conn, env=no_pg)
        assert out.returncode == 50, out.stdout + out.stderr
        details = json.loads(out.stdout)["details"]
        assert details["source"] == "journal"
        assert [(w["name"], w["status"]) for w in details["waits"]] == [("approval", "cancelled")]
        missing = await acli("inspect", "nosuch", *conn, env=no_pg)
        assert missing.returncode == 10
        assert "no run 'nosuch'" in missing.stderr


async def test_closed_waits_in_projections_and_unknown_audit_run(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, pool: asyncpg.Pool, pg_dsn: str
) -> None:
    """The projections close a cancelled run's wait (runs.waiting_for empty, wait row
    cancelled); `audit verify` of an unknown run id is 'no such run', exit 10."""
    projector = Projector(nc, pool, subjects)
    async with running(nc, subjects, registry, handlers, projector=projector) as h:
        await h.client.start("agent", "x", run_id="cw1")
        await wait_status(h.client, "cw1", "waiting")
        await h.client.cancel("cw1")
        await wait_status(h.client, "cw1", "cancelled")
        await projected(projector, nc, subjects)
    assert await pool.fetchval("SELECT waiting_for FROM runs WHERE run_id = 'cw1'") == []
    assert await pool.fetchval("SELECT status FROM waits WHERE run_id = 'cw1'") == "cancelled"
    common = conn_args(nats_server, subjects, pg_dsn)
    typo = await acli("audit", "verify", "cw2", *common)
    assert typo.returncode == 10, typo.stdout + typo.stderr
    assert "no run 'cw2'" in typo.stderr
    assert "ALTERED" not in typo.stdout
    as_json = json.loads((await acli("audit", "verify", "cw2", "--json", *common)).stdout)
    assert (as_json["status"], as_json["exit_code"]) == ("error", 10)
    assert (await acli("audit", "verify", "cw1", *common)).returncode == 0


async def test_failed_run_abandons_its_wait(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """A waiting run that fails (its wall-time limit) no longer shows the wait as open."""
    async with running(nc, subjects, registry, handlers) as h:
        await h.client.start("agent", "x", run_id="fw1", max_duration_s=1.0)
        await wait_status(h.client, "fw1", "failed")
        assert (await h.client.status("fw1")).waiting_for == []
        out = await acli(
            "inspect",
            "fw1",
            "--json",
            *conn_args(nats_server, subjects),
            env={"MAINSPRING_POSTGRES_DSN": ""},
        )
    assert out.returncode == 30, out.stdout + out.stderr
    waits = json.loads(out.stdout)["details"]["waits"]
    assert [(w["name"], w["status"]) for w in waits] == [("approval", "abandoned")]
