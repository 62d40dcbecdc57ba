"""``mainspring erase``: remove runs' data on request, keeping the rest verifiable."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_OK, Env
from schemas import ConfigError, check_run_id


@connecting(postgres=True, json=False)
def erase(
    run_ids: Annotated[list[str], typer.Argument(help="the runs to erase", show_default=False)],
    reason: Annotated[
        str,
        typer.Option(help="why (a request's reference): kept in the erasure record"),
    ],
    yes: Annotated[bool, typer.Option("--yes", help="erasing cannot be undone: confirm")] = False,
    *,
    conn: Connection,
) -> None:
    """Erase runs on request (e.g. a data-protection request): their journal entries,
    inputs, timers, dead letters, large payloads and projection rows.

    Stop every worker, handler and projector of the deployment first: the journal stream
    is rebuilt with each entry of these runs replaced by a placeholder, every other entry
    at its own sequence. The run index keeps a record (when, --reason, how many entries,
    the hash of the last), which `audit verify --all` reports; everything else still
    verifies. Run with the operator's credentials and the deployment keys. A crash is
    finished by running the same command again. See docs/security.md."""
    wanted = sorted({check_run_id(r) for r in run_ids})
    if not reason.strip():
        raise typer.BadParameter("--reason must say why (it is kept in the record)")
    if not yes:
        raise ConfigError(
            f"erasing {', '.join(wanted)} cannot be undone: stop the deployment's "
            "workers, handlers and projectors, then run again with --yes"
        )

    async def body(env: Env) -> int:
        from projections import Erased, check_stream, erase_rows
        from streams import Leases, Objects, erase_runs, purge_run_inputs

        def say(line: str) -> None:
            print(f"  {line}", file=sys.stderr, flush=True)

        leases = Leases(env.nc, env.subjects, "erase")
        await leases.open()
        if await leases.live_members() > 1:
            raise ConfigError(
                "workers of this deployment are running: stop every worker, handler and "
                "projector before erasing (a worker would append to a journal being rebuilt)"
            )
        keys = env.keys()
        digests: set[str] = set()
        for rid in wanted:
            found = await check_stream(env.nc, env.subjects, rid, keys)
            digests |= {ref.digest for checker in found.values() for _, ref in checker.refs}
        print(f"erasing {len(wanted)} run(s): {', '.join(wanted)}")
        erasures = await erase_runs(env.nc, env.subjects, keys, wanted, reason, say)
        inputs = sum([await purge_run_inputs(env.nc, env.subjects, rid) for rid in wanted])
        erased: dict[str, Erased] = {}
        rest = await check_stream(env.nc, env.subjects, None, keys, erased)
        broken = [c.problem for c in rest.values() if c.problem]
        shared = {ref.digest for checker in rest.values() for _, ref in checker.refs}
        objects = Objects(env.nc, env.subjects)
        payloads = sum([await objects.delete(d) for d in sorted(digests - shared)])
        rows = 0
        if env.pool is not None:
            async with env.pool.acquire() as pg:
                rows = await erase_rows(pg, wanted)
        for e in erasures:
            print(f"erased {e.run_id}: {e.entries} journal entries (last hash {e.head_hash})")
        print(
            f"also removed: {inputs} inbox/timer/dead-letter message(s), {payloads} payload "
            f"object(s) no other run refers to, {rows} projection row(s)"
            + ("" if env.pool is not None else " (no PostgreSQL configured: none checked)")
        )
        print(
            f"the {len(rest)} other run(s) verify {'intact' if not broken else 'NOT intact'}; "
            "the erasure is recorded in the run index (`mainspring audit verify --all`)"
        )
        for problem in broken:
            print(f"ALTERED {problem}")
        return EXIT_OK

    conn.run(body, postgres="wants")
