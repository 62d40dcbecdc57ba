"""Operator commands: projector, runs, status, inspect, logs, audit, replay, projections."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from mainspring._cli_runner import (
    EXIT_FAILED,
    EXIT_OK,
    STATUS_EXIT,
    Env,
    NatsOpt,
    PartitionsOpt,
    PgOpt,
    PrefixOpt,
    run_command,
)
from schemas import ConfigError, RunNotFound, check_run_id

audit_app = typer.Typer(
    help="Verify and export tamper-evident run histories.", no_args_is_help=True
)
projections_app = typer.Typer(help="Manage the Postgres projections.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command()(projector)
    app.command()(runs)
    app.command()(status)
    app.command()(inspect)
    app.command()(logs)
    app.command()(replay)
    app.add_typer(audit_app, name="audit")
    app.add_typer(projections_app, name="projections")


def _signer(path: str | None) -> Any:
    from projections import Signer

    key = path or os.environ.get("MAINSPRING_SIGNING_KEY")
    return Signer.load(key) if key else None


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*r) for r in rows)])


# ---------------------------------------------------------------------- projector
def projector(
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
    signing_key: Annotated[
        str | None,
        typer.Option(
            help="Ed25519 private key (PEM) to sign checkpoints [env: MAINSPRING_SIGNING_KEY]",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str, typer.Option(help="projector name (its position is kept per name)")
    ] = "main",
) -> None:
    """Project run journals into PostgreSQL until interrupted (applies migrations on start)."""

    async def body(env: Env) -> int:
        from projections import Projector

        await Projector(
            env.nc, env.pool, env.subjects, name=name, signer=_signer(signing_key)
        ).run()
        return EXIT_OK

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
        log_level="info",
    )


# ---------------------------------------------------------------------- queries
def runs(
    status: Annotated[
        str | None, typer.Option(help="running|waiting|completed|failed|cancelled|parked")
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="only runs of this workflow")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON envelope")] = False,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """List runs (from the projections), newest activity first."""

    async def body(env: Env) -> int:
        from projections import Queries

        rows = await Queries(env.pool).runs(status=status, workflow=workflow, limit=limit)
        print(
            _table(
                ["RUN", "WORKFLOW", "STATUS", "EVENTS", "WAITING FOR", "UPDATED"],
                [
                    [
                        r.run_id,
                        r.workflow,
                        r.status,
                        str(r.events),
                        ",".join(r.waiting_for) or "-",
                        _ts(r.updated_at),
                    ]
                    for r in rows
                ],
            )
        )
        return EXIT_OK

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
    )


async def _run_row(env: Env, run_id: str) -> Any:
    from projections import Queries

    check_run_id(run_id)
    row = await Queries(env.pool).run(run_id)
    if row is None:
        raise RunNotFound(
            f"no run {run_id!r} in the projections (is `mainspring projector` running?)"
        )
    return row


def _describe(row: Any, env: Env) -> list[str]:
    lines = [
        f"run       {row.run_id}",
        f"workflow  {row.workflow} (version {row.version})",
        f"status    {row.status}",
        f"events    {row.events} (effects: {row.effects_completed} done, "
        f"{row.effects_failed} failed, {row.effects_total} total)",
        f"cost      {row.tokens} tokens, ${row.cost_usd:.4f}",
        f"started   {_ts(row.started_at)}   updated {_ts(row.updated_at)}   "
        f"ended {_ts(row.ended_at)}",
    ]
    for name in row.waiting_for:
        lines.append(
            f"waiting   for '{name}': resume with "
            f"nats pub {env.subjects.event(row.run_id, name)} '<json>'"
        )
    if row.output is not None:
        lines.append(f"output    {msgspec.json.encode(row.output).decode()}")
    if row.error is not None:
        lines.append(f"error     {row.error.get('type')}: {row.error.get('message')}")
    return lines


def status(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    as_json: Annotated[
        bool, typer.Option("--json", help="print the run's JSON envelope (read from the journal)")
    ] = False,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """Show a run's status. Exit code: 0 completed, 30 failed, 40 waiting, 50 cancelled.

    Human output comes from the projections; --json from the journal itself (the
    envelope names what a waiting run accepts and how to resume it).
    """

    async def body(env: Env) -> int:
        if as_json:
            from mainspring._cli_runs import emit, envelope_for
            from streams import Journal

            events = await Journal(env.nc, env.subjects).load(check_run_id(run_id))
            if not events:
                raise RunNotFound(f"no run {run_id!r}")
            return emit(envelope_for("status", [e.event for e in events], env), True)
        row = await _run_row(env, run_id)
        print("\n".join(_describe(row, env)))
        return STATUS_EXIT.get(row.status, EXIT_OK)

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=not as_json,
    )


def inspect(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """Show everything about a run: status, waits, effects and its hash-chained events."""

    async def body(env: Env) -> int:
        from projections import Queries

        row = await _run_row(env, run_id)
        q = Queries(env.pool)
        out = _describe(row, env)
        waits = await q.waits(run_id)
        if waits:
            out += [
                "",
                _table(
                    ["WAIT", "NAME", "STATUS", "SINCE", "DEADLINE"],
                    [
                        [str(w["seq"]), w["name"], w["status"], _ts(w["since"]), _ts(w["deadline"])]
                        for w in waits
                    ],
                ),
            ]
        effects = await q.effects(run_id)
        if effects:
            out += [
                "",
                _table(
                    ["EFFECT", "KIND", "STATUS", "ATTEMPTS", "LATENCY"],
                    [
                        [
                            e["effect_id"],
                            e["kind"],
                            e["status"],
                            str(e["attempts"]),
                            f"{e['latency_ms']:.1f} ms" if e["latency_ms"] else "-",
                        ]
                        for e in effects
                    ],
                ),
            ]
        events = await q.events(run_id)
        out += [
            "",
            _table(
                ["N", "TYPE", "AT", "HASH"],
                [[str(e.n), e.type, _ts(e.at), e.hash.hex()[:16]] for e in events],
            ),
        ]
        print("\n".join(out))
        return STATUS_EXIT.get(row.status, EXIT_OK)

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
    )


def _timeline_detail(data: bytes) -> str:
    ev = msgspec.json.decode(data)
    skip = {"type", "run_id", "n", "at", "cause"}
    parts = []
    for key, value in ev.items():
        if key in skip or value in (None, {}, [], ""):
            continue
        text = msgspec.json.encode(value).decode()
        parts.append(f"{key}={text if len(text) <= 60 else text[:57] + '...'}")
    return " ".join(parts)


def logs(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """A readable timeline of a run's events."""

    async def body(env: Env) -> int:
        from projections import Queries

        await _run_row(env, run_id)
        for e in await Queries(env.pool).events(run_id):
            print(
                f"{e.at.strftime('%H:%M:%S.%f')[:-3]}  {e.n:>4}  {e.type:<17} "
                f"{_timeline_detail(e.data)}"
            )
        return EXIT_OK

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
    )


# ---------------------------------------------------------------------- replay
def replay(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="runs to replay", show_default=False)
    ] = None,
    app_spec: Annotated[
        str, typer.Option("--app", help="today's workflows: 'module:registry'")
    ] = "",
    all_runs: Annotated[
        bool, typer.Option("--all", help="replay every run in the journal")
    ] = False,
    workflow: Annotated[str | None, typer.Option(help="with --all: only this workflow")] = None,
    nats_url: NatsOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """Re-run today's code against recorded journals; exit 30 if any is incompatible."""
    from actors import Registry
    from mainspring._config import load_object

    if not app_spec:
        raise typer.BadParameter("--app is required (the workflows to check)")
    registry = load_object(app_spec)
    if not isinstance(registry, Registry):
        raise typer.BadParameter(f"{app_spec} is not a Registry")

    async def body(env: Env) -> int:
        from actors import replay_history
        from streams import Journal

        journal = Journal(env.nc, env.subjects)
        ids = list(run_ids or [])
        if all_runs:
            ids = await journal.run_ids()
        if not ids:
            raise ConfigError("name runs to replay, or pass --all")
        bad = 0
        for rid in ids:
            events = await journal.load(check_run_id(rid))
            if not events:
                raise RunNotFound(f"no journal for run {rid!r}")
            result = replay_history([e.event for e in events], registry)
            if workflow and result.workflow != workflow:
                continue
            mark = "ok  " if result.ok else "FAIL"
            print(
                f"{mark} {rid} ({result.workflow}, {result.events} events)"
                + ("" if result.ok else f"\n     {result.problem}")
            )
            bad += 0 if result.ok else 1
        print(f"{len(ids) - bad} compatible, {bad} incompatible")
        return EXIT_FAILED if bad else EXIT_OK

    run_command(body, nats_flag=nats_url, prefix=prefix, partitions=partitions)


# ---------------------------------------------------------------------- audit
@audit_app.command("verify")
def audit_verify(
    run_id: Annotated[
        str | None, typer.Argument(help="one run (default: --all)", show_default=False)
    ] = None,
    all_runs: Annotated[bool, typer.Option("--all", help="every run")] = False,
    public_key: Annotated[
        str | None,
        typer.Option(
            help="Ed25519 public key (PEM) of the checkpoint signer [env: MAINSPRING_VERIFY_KEY]",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="verify an exported JSONL file offline (no servers)", show_default=False
        ),
    ] = None,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """Verify hash chains in the stream and in Postgres, cross-check them and the signed
    checkpoints. Exit 0 when intact, 30 when anything was altered (each problem named)."""
    from projections import AuditReport, audit, load_public_key, verify_export

    key_path = public_key or os.environ.get("MAINSPRING_VERIFY_KEY")
    key = load_public_key(key_path) if key_path else None

    def report(rep: AuditReport) -> int:
        for note in rep.notes:
            print(f"note: {note}")
        for problem in rep.problems:
            print(f"ALTERED {problem}")
        verdict = "intact" if rep.ok else f"{len(rep.problems)} problem(s)"
        print(f"verified {rep.runs} run(s), {rep.events} event(s): {verdict}")
        return EXIT_OK if rep.ok else EXIT_FAILED

    if file is not None:
        try:
            lines = file.read_bytes().splitlines()
        except OSError as e:
            print(f"error: cannot read {file}: {e}", file=sys.stderr)
            raise SystemExit(10) from None
        raise SystemExit(report(verify_export(lines, key)))
    if run_id is None and not all_runs:
        raise typer.BadParameter("name a run, or pass --all")

    async def body(env: Env) -> int:
        return report(
            await audit(
                env.nc, env.subjects, env.pool, check_run_id(run_id) if run_id else None, key
            )
        )

    run_command(
        body, nats_flag=nats_url, prefix=prefix, partitions=partitions, postgres=postgres_dsn
    )


@audit_app.command("export")
def audit_export(
    run_id: Annotated[str, typer.Argument(help="the run to export")],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="file (default: stdout)", show_default=False),
    ] = None,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
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

    run_command(
        body, nats_flag=nats_url, prefix=prefix, partitions=partitions, postgres=postgres_dsn
    )


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
def projections_status(
    name: Annotated[str, typer.Option(help="projector name")] = "main",
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """How far the projections are behind the journal (events and seconds)."""

    async def body(env: Env) -> int:
        from datetime import UTC
        from datetime import datetime as dt

        from projections import Queries

        lag = await Queries(env.pool).lag(name)
        info = await env.nc.jetstream().stream_info(env.subjects.journal_stream)
        last = info.state.last_seq
        if lag is None:
            print(f"projector '{name}' has not projected anything; the journal ends at {last}")
            return EXIT_OK
        behind = max(last - lag.position, 0)
        age = (dt.now(UTC) - lag.updated_at).total_seconds() if lag.updated_at else 0.0
        print(
            f"projector '{name}': position {lag.position} of {last} ({behind} behind); "
            f"last commit {age:.1f}s ago, newest projected event at {_ts(lag.event_at)}"
        )
        return EXIT_OK

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
    )


@projections_app.command("rebuild")
def projections_rebuild(
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    signing_key: Annotated[
        str | None,
        typer.Option(
            help="key to re-sign checkpoints [env: MAINSPRING_SIGNING_KEY]", show_default=False
        ),
    ] = None,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """Drop every projection table and rebuild it from the journal stream.

    Stop running projectors first; they would write into the tables being rebuilt.
    """
    if not yes and not typer.confirm("Drop and rebuild all Mainspring projections?"):
        raise SystemExit(EXIT_OK)

    async def body(env: Env) -> int:
        from projections import Projector, drop_projections

        async with env.pool.acquire() as conn:
            await drop_projections(conn)
        proj = Projector(env.nc, env.pool, env.subjects, signer=_signer(signing_key))
        position = await proj.catch_up()
        print(f"rebuilt: {proj.stats.events} events projected, stream position {position}")
        return EXIT_OK

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
    )
