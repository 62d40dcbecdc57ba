"""``mainspring backup`` and ``mainspring restore``: a deployment's streams, copied with
JetStream's own snapshots and brought back sequence for sequence (docs/operations.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_OK, Env


def _say(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


@connecting(json=False)
def backup(
    into: Annotated[Path, typer.Argument(help="a new (or empty) directory to write it into")],
    *,
    conn: Connection,
) -> None:
    """Back up the deployment's streams (journal and inbox of every shard, dead letters,
    run index, payload objects, start markers) into a directory.

    Stop every worker and handler first (the projector may run): the streams are copied
    one after the other, and runs must not move meanwhile. PostgreSQL is not in it: the
    projections are rebuilt from the journal after a restore (`mainspring projections
    rebuild`), or restored from a dump taken *before* this backup."""

    async def body(env: Env) -> int:
        from mainspring._backup import backup as take
        from mainspring._backup import check_quiet

        await check_quiet(env.nc, env.subjects, "backing up")
        print(f"backing up deployment {env.subjects.prefix!r} into {into}")
        manifest = await take(env.nc, env.subjects, into, _say)
        total = sum(c.bytes for c in manifest.streams)
        print(f"backed up {len(manifest.streams)} streams ({total} bytes) at {manifest.taken_at}")
        return EXIT_OK

    conn.run(body)


@connecting(json=False)
def restore(
    source: Annotated[Path, typer.Argument(help="a directory `mainspring backup` wrote")],
    *,
    conn: Connection,
) -> None:
    """Restore a deployment's streams from a backup, into a server that does not have
    them (its --prefix is the backup's; the option is not needed).

    Each stream comes back sequence for sequence, its consumers where they were; then
    every run's journal is verified. Afterwards run `mainspring projections rebuild
    --yes` against an empty database (or restore a PostgreSQL dump older than the
    backup), then start workers, handlers and the projector: waiting runs resume."""

    async def body(env: Env) -> int:
        from mainspring._backup import restore as bring_back
        from projections import check_stream
        from streams import Subjects

        manifest = await bring_back(env.nc, source, _say)
        subjects = Subjects(manifest.prefix, manifest.partitions, manifest.shards)
        checked = await check_stream(env.nc, subjects, None, env.keys())
        broken = [c.problem for c in checked.values() if c.problem]
        print(
            f"restored deployment {manifest.prefix!r} ({manifest.shards} shard(s), backup "
            f"of {manifest.taken_at}): {len(manifest.streams)} streams; {len(checked)} "
            f"run(s) verify {'intact' if not broken else 'NOT intact'}"
        )
        for problem in broken:
            print(f"ALTERED {problem}")
        return EXIT_OK if not broken else 1

    conn.run(body)
