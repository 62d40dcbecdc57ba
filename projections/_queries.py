"""Read side: what operators ask of the projections (runs, one run, its timeline)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True)
class RunRow:
    run_id: str
    workflow: str
    version: str
    status: str
    """a ``RunState`` value, as stored (kept a plain string: rows may come from a newer
    projector)"""
    input: Any
    output: Any
    error: Any
    parent_run_id: str | None
    events: int
    effects_total: int
    effects_completed: int
    effects_failed: int
    waiting_for: list[str]
    started_at: datetime | None
    updated_at: datetime | None
    ended_at: datetime | None
    head_hash: bytes
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class EventRow:
    n: int
    stream_seq: int
    type: str
    data: bytes
    prev_hash: bytes
    hash: bytes
    at: datetime


@dataclass(frozen=True)
class Signatures:
    """How the stored checkpoints are signed."""

    signed: int = 0
    unsigned: int = 0
    key_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lag:
    position: int
    event_at: datetime | None
    updated_at: datetime | None


def _decode_json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def _run(row: asyncpg.Record) -> RunRow:
    return RunRow(
        row["run_id"],
        row["workflow"],
        row["version"],
        row["status"],
        _decode_json(row["input"]),
        _decode_json(row["output"]),
        _decode_json(row["error"]),
        row["parent_run_id"],
        row["events"],
        row["effects_total"],
        row["effects_completed"],
        row["effects_failed"],
        list(row["waiting_for"]),
        row["started_at"],
        row["updated_at"],
        row["ended_at"],
        bytes(row["head_hash"]),
        row["tokens"],
        row["cost_usd"],
    )


class Queries:
    """Queries over the projections (an asyncpg pool you own)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 50
    ) -> list[RunRow]:
        rows = await self.pool.fetch(
            "SELECT * FROM runs WHERE ($1::text IS NULL OR status = $1) "
            "AND ($2::text IS NULL OR workflow = $2) ORDER BY updated_at DESC LIMIT $3",
            status,
            workflow,
            limit,
        )
        return [_run(r) for r in rows]

    async def run(self, run_id: str) -> RunRow | None:
        row = await self.pool.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id)
        return None if row is None else _run(row)

    async def events(self, run_id: str) -> list[EventRow]:
        rows = await self.pool.fetch(
            "SELECT n, stream_seq, type, data, prev_hash, hash, at FROM run_events "
            "WHERE run_id = $1 ORDER BY n",
            run_id,
        )
        return [
            EventRow(
                r["n"],
                r["stream_seq"],
                r["type"],
                bytes(r["data"]),
                bytes(r["prev_hash"]),
                bytes(r["hash"]),
                r["at"],
            )
            for r in rows
        ]

    async def effects(self, run_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT * FROM effects WHERE run_id = $1 ORDER BY seq", run_id)
        return [dict(r) for r in rows]

    async def waits(self, run_id: str, *, open_only: bool = False) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT * FROM waits WHERE run_id = $1 AND (NOT $2 OR status = 'open') ORDER BY seq",
            run_id,
            open_only,
        )
        return [dict(r) for r in rows]

    async def signatures(self) -> Signatures:
        """Signed and unsigned checkpoints, and the keys that signed them (none yet: zeros)."""
        try:
            row = await self.pool.fetchrow(
                "SELECT count(*) FILTER (WHERE signature IS NOT NULL) AS signed, "
                "count(*) FILTER (WHERE signature IS NULL) AS unsigned, "
                "array_remove(array_agg(DISTINCT key_id), NULL) AS key_ids FROM checkpoints"
            )
        except asyncpg.UndefinedTableError:
            return Signatures()
        assert row is not None
        return Signatures(row["signed"], row["unsigned"], tuple(sorted(row["key_ids"] or ())))

    async def lag(self, name: str = "main") -> Lag | None:
        """Where projector ``name`` is: its positions summed over the shards (the
        journal stream sequence with one shard), its newest event, its oldest commit."""
        row = await self.pool.fetchrow(
            "SELECT count(*) AS n, sum(stream_seq) AS position, max(event_at) AS event_at, "
            "min(updated_at) AS updated_at FROM projector_positions "
            "WHERE name = $1 OR left(name, length($1) + 1) = $1 || '@'",
            name,
        )
        if row is None or not row["n"]:
            return None
        return Lag(int(row["position"]), row["event_at"], row["updated_at"])
