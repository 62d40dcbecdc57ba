"""Audit and projection-maintenance commands: audit verify/export/keygen, projections."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_FAILED, EXIT_OK, Env, ts
from schemas import RunNotFound, check_run_id

audit_app = typer.Typer(
    help="Verify and export tamper-evident run histories.", no_args_is_help=True
)
projections_app = typer.Typer(help="Manage the Postgres projections.", no_args_is_help=True)


# ---------------------------------------------------------------------- audit
@audit_app.command("verify")
@connecting(postgres=True, verifying=True)
def audit_verify(
    run_id: Annotated[
        str | None, typer.Argument(help="one run (default: --all)", show_default=False)
    ] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="every run")] = False,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="verify an exported JSONL file offline (no servers)", show_default=False
        ),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Verify hash chains in the stream and in Postgres, cross-check them and the signed
    checkpoints. Exit 0 when intact, 30 when anything was altered (each problem named),
    10 when the named run does not exist. The verify key comes from --public-key,
    MAINSPRING_VERIFY_KEY or the running `mainspring dev` (see `mainspring config show`)."""
    from projections import AuditReport, audit, load_public_key, verify_export

    def report(rep: AuditReport) -> int:
        code = EXIT_OK if rep.ok else EXIT_FAILED
        if conn.json:
            from mainspring._cli_runs import emit
            from schemas import Envelope

            details = {"runs": rep.runs, "events": rep.events, "notes": rep.notes}
            return emit(
                Envelope(
                    ok=rep.ok,
                    command="audit verify",
                    exit_code=code,
                    status="intact" if rep.ok else "altered",
                    run_id=run_id,
                    problems=[str(p) for p in rep.problems],
                    details=details,
                ),
                True,
            )
        for note in rep.notes:
            print(f"note: {note}")
        for problem in rep.problems:
            print(f"ALTERED {problem}")
        verdict = "intact" if rep.ok else f"{len(rep.problems)} problem(s)"
        print(f"verified {rep.runs} run(s), {rep.events} event(s): {verdict}")
        return EXIT_OK if rep.ok else EXIT_FAILED

    if file is not None:
        key_path = conn.flags["verify_key"] or os.environ.get("MAINSPRING_VERIFY_KEY")
        try:
            lines = file.read_bytes().splitlines()
        except OSError as e:
            print(f"error: cannot read {file}: {e}", file=sys.stderr)
            raise SystemExit(10) from None
        raise SystemExit(
            report(verify_export(lines, load_public_key(key_path) if key_path else None))
        )
    if run_id is None and not all_runs:
        raise typer.BadParameter("name a run, or pass --all")

    async def body(env: Env) -> int:
        rid = check_run_id(run_id) if run_id else None
        if rid is not None and not await _exists(env, rid):
            raise RunNotFound(
                f"no run {rid!r}: neither the journal nor the projections know it "
                "(`mainspring runs` lists runs)"
            )
        found = await audit(env.nc, env.subjects, env.pool, rid, env.verify_key(), keys=env.keys())
        return report(found)

    conn.run(body, postgres="wants")


async def _exists(env: Env, run_id: str) -> bool:
    """Whether the stream or the projections hold anything of the run (a run present in
    only one of them is an alteration for the audit to report, not a typo)."""
    from streams import read_records

    s = env.subjects
    records, _ = await read_records(
        env.nc, s.run_journal_stream(run_id), s.journal_run_filter(run_id), 1, size=1
    )
    if records:
        return True
    if env.pool is None:
        return False
    import asyncpg

    try:
        found = await env.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM run_events WHERE run_id = $1) "
            "OR EXISTS (SELECT 1 FROM runs WHERE run_id = $1)",
            run_id,
        )
    except asyncpg.UndefinedTableError:
        return False
    return bool(found)


@audit_app.command("export")
@connecting(postgres=True, json=False)
def audit_export(
    run_id: Annotated[str, typer.Argument(help="the run to export")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="file (default: stdout)", show_default=False),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Write a run's history as JSONL that `audit verify --file` checks offline."""

    async def body(env: Env) -> int:
        from projections import export_run

        if output is None:
            await export_run(
                env.nc, env.subjects, env.pool, check_run_id(run_id), sys.stdout.buffer
            )
        else:
            with output.open("wb") as out:
                count = await export_run(env.nc, env.subjects, env.pool, check_run_id(run_id), out)
            print(f"wrote {count} events of run {run_id} to {output}", file=sys.stderr)
        return EXIT_OK

    conn.run(body, postgres="wants")


@audit_app.command("keygen")
def audit_keygen(
    directory: Annotated[
        Path, typer.Argument(help="where to write signing.pem and signing.pub.pem")
    ] = Path("."),
) -> None:
    """Create an Ed25519 key pair for signing checkpoints (keep signing.pem secret)."""
    from projections import Signer

    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / "signing.pem", directory / "signing.pub.pem"
    if private.exists():
        print(f"error: {private} exists; not overwriting a key", file=sys.stderr)
        raise SystemExit(10)
    signer = Signer.generate()
    signer.save(private, public)
    print(
        f"wrote {private} (MAINSPRING_SIGNING_KEY, for the projector) and {public} "
        f"(MAINSPRING_VERIFY_KEY, for audits); key id {signer.key_id}"
    )


# ---------------------------------------------------------------------- projections
@projections_app.command("status")
@connecting(postgres=True)
def projections_status(
    name: Annotated[str, typer.Option(help="projector name")] = "main",
    *,
    conn: Connection,
) -> None:
    """How far the projections are behind the journal (events and seconds)."""

    async def body(env: Env) -> int:
        from datetime import UTC
        from datetime import datetime as dt

        from projections import Queries

        lag = await Queries(env.pool).lag(name)
        from streams import Journal

        last = sum(await Journal(env.nc, env.subjects).last_seqs())
        if lag is None:
            print(f"projector '{name}' has not projected anything; the journal ends at {last}")
            return EXIT_OK
        behind = max(last - lag.position, 0)
        if conn.json:
            from mainspring._cli_runs import emit
            from schemas import Envelope

            details = {
                "position": lag.position,
                "journal_last": last,
                "behind": behind,
                "updated_at": lag.updated_at.isoformat() if lag.updated_at else None,
            }
            return emit(
                Envelope(
                    ok=True,
                    command="projections status",
                    status="ok",
                    exit_code=EXIT_OK,
                    details=details,
                ),
                True,
            )
        age = (dt.now(UTC) - lag.updated_at).total_seconds() if lag.updated_at else 0.0
        print(
            f"projector '{name}': position {lag.position} of {last} ({behind} behind); "
            f"last commit {age:.1f}s ago, newest projected event at {ts(lag.event_at)}"
        )
        return EXIT_OK

    conn.run(body, postgres="needs")


@projections_app.command("rebuild")
@connecting(postgres=True, signing=True, json=False)
def projections_rebuild(
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    *,
    conn: Connection,
) -> None:
    """Drop every projection table and rebuild it from the journal stream.

    Checkpoints of finished runs are re-signed with the configured signing key; without
    one they come back unsigned, and the command says so loudly. Stop running projectors
    first; they would write into the tables being rebuilt.
    """
    if not yes and not typer.confirm("Drop and rebuild all Mainspring projections?"):
        raise SystemExit(EXIT_OK)

    async def body(env: Env) -> int:
        from projections import Projector, Queries, drop_projections

        before = await Queries(env.pool).signatures()
        signer = env.signer()
        async with env.pool.acquire() as conn:
            await drop_projections(conn)
        proj = Projector(env.nc, env.pool, env.subjects, signer=signer, keys=env.keys())
        position = await proj.catch_up()
        after = await Queries(env.pool).signatures()
        print(f"rebuilt: {proj.stats.events} events projected, journal position {position}")
        if signer is not None:
            was = ", ".join(before.key_ids)
            print(
                f"re-signed {after.signed} checkpoint(s) with key {signer.key_id}"
                + (f" (before: {was})" if was and before.key_ids != (signer.key_id,) else "")
            )
        elif after.unsigned:
            lost = (
                f"{before.signed} checkpoint(s) were signed (key {', '.join(before.key_ids)}); "
                if before.signed
                else ""
            )
            print(
                f"WARNING: {lost}the {after.unsigned} rebuilt checkpoint(s) are UNSIGNED: no "
                "signing key is configured (--signing-key, MAINSPRING_SIGNING_KEY). Until they "
                "are signed, `audit verify` cannot prove that a finished run was not "
                "truncated. Rebuild again with the key to re-sign them.",
                file=sys.stderr,
            )
        return EXIT_OK

    conn.run(body, postgres="needs")
