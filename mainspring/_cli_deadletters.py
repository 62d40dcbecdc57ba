"""`mainspring dead-letters`: what consumers could not apply and why; re-inject after a fix."""

from __future__ import annotations

from typing import Annotated

import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_OK, Env

_SOURCES = "inbox, late, junk, fx, projector"


@connecting()
def dead_letters(
    reinject: Annotated[
        int | None,
        typer.Option(
            "--reinject",
            metavar="SEQ",
            help="publish dead letter SEQ to its run's inbox again (after a fix), then "
            "remove it; only inbox messages can go back (journal events never do)",
        ),
    ] = None,
    source: Annotated[
        str, typer.Option("--source", help=f"only letters from this source: {_SOURCES}")
    ] = "*",
    run: Annotated[str, typer.Option("--run", help="only letters of this run")] = "*",
    limit: Annotated[int, typer.Option("--limit", help="at most this many, oldest first")] = 100,
    *,
    conn: Connection,
) -> None:
    """List dead letters: messages a worker, handler or projector could not apply, each
    with the reason, where it came from and its original headers. Sources: `inbox`
    (undecodable, failed activations, inputs for runs that never existed), `late`
    (events for ended runs), `junk` (invalid event names, junk past a run's bound),
    `fx` (effect requests handlers could not take), `projector` (records PostgreSQL
    refused). Kept 30 days, at most 1000 per source and run."""

    async def body(env: Env) -> int:
        from mainspring._cli_runs import emit_details
        from streams import dead_letters as listing
        from streams import reinject as put_back

        if reinject is not None:
            letter = await put_back(env.nc, env.subjects, reinject)
            if conn.json:
                emit_details("dead-letters", {"reinjected": letter.summary()})
            else:
                print(f"re-injected dead letter {reinject} into {letter.subject}")
            return EXIT_OK
        found = await listing(env.nc, env.subjects, source=source, run_id=run, limit=limit)
        if conn.json:
            emit_details("dead-letters", [letter.summary() for letter in found])
            return EXIT_OK
        if not found:
            print("no dead letters")
            return EXIT_OK
        for letter in found:
            print(
                f"{letter.seq}  {letter.at[:19]}  {letter.source:<9} "
                f"run={letter.run_id or '-'}  deliveries={letter.deliveries}\n"
                f"    subject: {letter.subject}\n    reason:  {letter.reason}"
            )
        hint = (
            "re-inject one after fixing its cause: "
            f"mainspring dead-letters --reinject <seq> --prefix {env.subjects.prefix}"
        )
        print(hint)
        return EXIT_OK

    conn.run(body)
