"""Audit: tampering in Postgres or the stream is detected, with the run and position."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from projections import Projector, Signer, audit, export_run, verify_export
from schemas import RunStarted, StepCompleted
from streams import GENESIS, Journal, Subjects, ensure_topology
from tests.apps import registry
from tests.harness import projected, running

pytestmark = pytest.mark.anyio


async def _finished_run(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool, signer: Signer, steps: int = 6
) -> None:
    projector = Projector(nc, pool, subjects, signer=signer)
    async with running(nc, subjects, registry, projector=projector) as h:
        await h.client.result(await h.client.start("chain", steps, run_id="audited"), timeout=10)
        await projected(projector, nc, subjects)


async def _problems(nc: NATS, subjects: Subjects, pool: asyncpg.Pool, signer: Signer) -> list[str]:
    report = await audit(nc, subjects, pool, "audited", signer.private.public_key())
    return [f"{p.source}:{p.n}:{p.kind}" for p in report.problems]


async def test_intact_run_verifies(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """An untouched run verifies in the stream, in Postgres and against its checkpoint."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    report = await audit(nc, subjects, pool, None, signer.private.public_key())
    assert report.ok, report.problems
    assert (report.runs, report.events) == (1, 8)


async def test_modified_byte_in_postgres(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """One byte changed in a stored event is reported as modified at its position."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    await pool.execute(
        "UPDATE run_events SET data = overlay(data placing '9'::bytea from "
        "position('\"result\":'::bytea in data) + 9 for 1) WHERE run_id = 'audited' AND n = 3"
    )
    assert await _problems(nc, subjects, pool, signer) == ["postgres:3:modified"]


async def test_deleted_row_in_postgres(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """A deleted event row is reported as deleted at its position."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    await pool.execute("DELETE FROM run_events WHERE run_id = 'audited' AND n = 4")
    assert await _problems(nc, subjects, pool, signer) == ["postgres:4:deleted"]


async def test_swapped_rows_in_postgres(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """Two events swapped is reported as reordered at the first of them."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    async with pool.acquire() as conn, conn.transaction():
        for old, new in ((3, -3), (5, 3), (-3, 5)):
            await conn.execute(
                "UPDATE run_events SET n = $2 WHERE run_id = 'audited' AND n = $1", old, new
            )
    assert await _problems(nc, subjects, pool, signer) == ["postgres:3:reordered"]


async def test_truncated_tail_in_postgres(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """Deleting the tail of a finished run leaves a valid chain; the signed checkpoint
    (and the stream) catch it."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    await pool.execute("DELETE FROM run_events WHERE run_id = 'audited' AND n > 5")
    problems = await _problems(nc, subjects, pool, signer)
    assert "postgres:6:truncated" in problems
    assert any(p.startswith("cross-check:6") for p in problems)


async def test_forged_checkpoint_signature(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool
) -> None:
    """A checkpoint not signed by the operator's key is reported."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    forged = Signer.generate().sign("audited", 8, b"\x00" * 32)
    await pool.execute("UPDATE checkpoints SET signature = $1", forged)
    assert await _problems(nc, subjects, pool, signer) == ["checkpoint:8:bad-signature"]


async def test_stream_with_a_wrong_link(nc: NATS, subjects: Subjects) -> None:
    """A journal written with a wrong link is caught by the stream-side verify."""
    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = await j.append(
        RunStarted(run_id="bad", n=1, at=at, workflow="w", version="1"),
        expected_seq=0,
        prev=GENESIS,
    )
    second = await j.append(
        StepCompleted(run_id="bad", n=2, at=at, seq=1, name="s"),
        expected_seq=first.seq,
        prev=first.hash,
    )
    await j.append(
        StepCompleted(run_id="bad", n=3, at=at, seq=2, name="s", result=msgspec.Raw(b"1")),
        expected_seq=second.seq,
        prev=b"\x07" * 32,
    )
    report = await audit(nc, subjects, None, "bad")
    assert [f"{p.source}:{p.n}:{p.kind}" for p in report.problems] == ["stream:3:link-broken"]


async def test_export_verifies_offline(nc: NATS, subjects: Subjects, pool: asyncpg.Pool) -> None:
    """An exported history verifies with only the file and the public key; edits are caught."""
    signer = Signer.generate()
    await _finished_run(nc, subjects, pool, signer)
    out = BytesIO()
    assert await export_run(nc, subjects, pool, "audited", out) == 8
    lines = out.getvalue().splitlines()
    public = signer.private.public_key()
    assert verify_export(lines, public).ok
    tampered = [line.replace(b'\\"result\\":3', b'\\"result\\":4') for line in lines]
    assert tampered != lines
    assert [p.kind for p in verify_export(tampered, public).problems] == ["modified"]
    truncated = [line for line in lines if b'"n":8' not in line or b"checkpoint" in line]
    kinds = [p.kind for p in verify_export(truncated, public).problems]
    assert "truncated" in kinds
