"""The Postgres schema, as versioned migrations the projector applies on start.

Add a migration by appending to ``MIGRATIONS``; never edit one that shipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]

MIGRATIONS: list[str] = [
    # 1: the first projections
    """
    CREATE TABLE runs (
        run_id            text PRIMARY KEY,
        workflow          text NOT NULL,
        version           text NOT NULL,
        status            text NOT NULL,
        input             jsonb,
        output            jsonb,
        error             jsonb,
        parent_run_id     text,
        depth             integer NOT NULL DEFAULT 0,
        events            integer NOT NULL,
        effects_total     integer NOT NULL DEFAULT 0,
        effects_completed integer NOT NULL DEFAULT 0,
        effects_failed    integer NOT NULL DEFAULT 0,
        waiting_for       text[] NOT NULL DEFAULT '{}',
        started_at        timestamptz,
        updated_at        timestamptz,
        ended_at          timestamptz,
        head_seq          bigint NOT NULL,
        head_hash         bytea NOT NULL
    );
    CREATE INDEX runs_status ON runs (status, updated_at DESC);
    CREATE INDEX runs_workflow ON runs (workflow, updated_at DESC);

    CREATE TABLE run_events (
        run_id     text NOT NULL,
        n          integer NOT NULL,
        stream_seq bigint NOT NULL UNIQUE,
        type       text NOT NULL,
        data       bytea NOT NULL,
        prev_hash  bytea NOT NULL,
        hash       bytea NOT NULL,
        at         timestamptz NOT NULL,
        PRIMARY KEY (run_id, n)
    );

    CREATE TABLE effects (
        effect_id    text PRIMARY KEY,
        run_id       text NOT NULL,
        seq          integer NOT NULL,
        kind         text NOT NULL,
        status       text NOT NULL,
        attempts     integer NOT NULL DEFAULT 0,
        requested_at timestamptz NOT NULL,
        finished_at  timestamptz,
        latency_ms   double precision,
        error        jsonb
    );
    CREATE INDEX effects_run ON effects (run_id, seq);
    CREATE INDEX effects_kind ON effects (kind, status);

    CREATE TABLE waits (
        run_id   text NOT NULL,
        seq      integer NOT NULL,
        name     text NOT NULL,
        status   text NOT NULL,
        since    timestamptz NOT NULL,
        deadline timestamptz,
        event_id text,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX waits_open ON waits (name) WHERE status = 'open';

    CREATE TABLE checkpoints (
        run_id    text NOT NULL,
        n         integer NOT NULL,
        hash      bytea NOT NULL,
        signature bytea,
        key_id    text,
        at        timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, n)
    );

    CREATE TABLE projector_positions (
        name       text PRIMARY KEY,
        stream_seq bigint NOT NULL,
        event_at   timestamptz,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 2: cost accounting (tokens and USD reported by effect results, e.g. llm.chat)
    """
    ALTER TABLE effects ADD COLUMN input_tokens integer NOT NULL DEFAULT 0;
    ALTER TABLE effects ADD COLUMN output_tokens integer NOT NULL DEFAULT 0;
    ALTER TABLE effects ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN tokens bigint NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN cost_usd double precision NOT NULL DEFAULT 0;
    """,
    # 3: shards: a stream sequence is unique within a shard's journal only
    """
    ALTER TABLE run_events DROP CONSTRAINT IF EXISTS run_events_stream_seq_key;
    """,
]

PROJECTION_TABLES = ("runs", "run_events", "effects", "waits", "checkpoints", "projector_positions")


async def migrate(conn: Conn) -> int:
    """Apply pending migrations in one transaction each; return the schema version.

    Tables go to the first schema of the connection's ``search_path``: a tenant's DSN
    names its own (``?search_path=tenant_a``), made here if it does not exist yet."""
    async with conn.transaction():
        # Projectors starting at once on a new database would race in CREATE ... IF NOT
        # EXISTS (PostgreSQL then fails one on its catalog's unique index): one at a time.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('mainspring:migrate'))")
        await _own_schema(conn)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS mainspring_schema (version integer NOT NULL)"
        )
    async with conn.transaction():
        # serialise concurrent projectors starting at once
        await conn.execute("LOCK TABLE mainspring_schema IN EXCLUSIVE MODE")
        current = await conn.fetchval("SELECT max(version) FROM mainspring_schema") or 0
        for version, sql in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            await conn.execute(sql)
            await conn.execute("INSERT INTO mainspring_schema (version) VALUES ($1)", version)
            current = version
    return int(current)


async def _own_schema(conn: Conn) -> None:
    path = str(await conn.fetchval("SHOW search_path"))
    first = path.split(",")[0].strip().strip('"')
    if (
        first.isidentifier()
        and first != "public"
        and await conn.fetchval("SELECT current_schema() IS NULL")
    ):
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{first}"')


async def drop_projections(conn: Conn) -> None:
    """Drop every projection table (the stream is the source of truth)."""
    async with conn.transaction():
        for table in PROJECTION_TABLES:
            await conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        await conn.execute("DROP TABLE IF EXISTS mainspring_schema")


async def erase_rows(conn: Conn, run_ids: list[str]) -> int:
    """Delete what the projections hold of these runs (every table of this schema with
    a ``run_id`` column): the erasure of runs on request. How many rows went."""
    tables = await conn.fetch(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'run_id' "
        "AND table_schema = current_schema() ORDER BY table_name"
    )
    gone = 0
    async with conn.transaction():
        for row in tables:
            status = await conn.execute(
                f'DELETE FROM "{row["table_name"]}" WHERE run_id = ANY($1::text[])', run_ids
            )
            gone += int(status.rsplit(" ", 1)[-1])
    return gone
