"""Operator commands: projector, runs, status, inspect, logs, replay (audit: _cli_audit)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
import typer

from mainspring._cli_runner import (
    EXIT_FAILED,
    EXIT_OK,
    STATUS_EXIT,
    Env,
    JsonOpt,
    NatsOpt,
    PartitionsOpt,
    PgOpt,
    PrefixOpt,
    run_command,
    signer_from,
)
from schemas import ConfigError, RunNotFound, check_run_id


def register(app: typer.Typer) -> None:
    app.command()(projector)
    app.command()(runs)
    app.command()(status)
    app.command()(inspect)
    app.command()(logs)
    app.command()(replay)
    from mainspring._cli_audit import audit_app, projections_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(projections_app, name="projections")


def ts(value: datetime | None) -> str:
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
            env.nc, env.pool, env.subjects, name=name, signer=signer_from(signing_key)
        ).run()
        return EXIT_OK

    run_command(
        body,
        nats_flag=nats_url,
        prefix=prefix,
        partitions=partitions,
        postgres=postgres_dsn,
        needs_postgres=True,
        service=True,
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
                        ts(r.updated_at),
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
        f"started   {ts(row.started_at)}   updated {ts(row.updated_at)}   ended {ts(row.ended_at)}",
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
    as_json: JsonOpt = False,
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
        if as_json:
            events = await q.events(run_id)
            return await _envelope(
                env,
                "inspect",
                run_id,
                {
                    "waits": waits,
                    "effects": await q.effects(run_id),
                    "events": [
                        {"n": e.n, "type": e.type, "at": e.at, "hash": e.hash.hex()} for e in events
                    ],
                    "tokens": row.tokens,
                    "cost_usd": row.cost_usd,
                },
            )
        if waits:
            out += [
                "",
                _table(
                    ["WAIT", "NAME", "STATUS", "SINCE", "DEADLINE"],
                    [
                        [str(w["seq"]), w["name"], w["status"], ts(w["since"]), ts(w["deadline"])]
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
                [[str(e.n), e.type, ts(e.at), e.hash.hex()[:16]] for e in events],
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


async def _envelope(env: Env, command: str, run_id: str, details: object) -> int:
    """A run's envelope (from its journal) with command-specific details, printed."""
    from mainspring._cli_runs import emit, envelope_for
    from streams import Journal

    events = await Journal(env.nc, env.subjects).load(run_id)
    envelope = envelope_for(command, [e.event for e in events], env)
    envelope.details = msgspec.to_builtins(details)
    return emit(envelope, True)


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
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    prefix: PrefixOpt = "ms",
    partitions: PartitionsOpt = 16,
) -> None:
    """A readable timeline of a run's events."""

    async def body(env: Env) -> int:
        from projections import Queries

        await _run_row(env, run_id)
        if as_json:
            timeline = [
                {"n": e.n, "type": e.type, "at": e.at, "event": msgspec.json.decode(e.data)}
                for e in await Queries(env.pool).events(run_id)
            ]
            return await _envelope(env, "logs", run_id, timeline)
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
    as_json: JsonOpt = False,
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
        results = []
        for rid in ids:
            events = await journal.load(check_run_id(rid))
            if not events:
                raise RunNotFound(f"no journal for run {rid!r}")
            result = replay_history([e.event for e in events], registry)
            if workflow and result.workflow != workflow:
                continue
            results.append(result)
            if not as_json:
                mark = "ok  " if result.ok else "FAIL"
                print(
                    f"{mark} {rid} ({result.workflow}, {result.events} events)"
                    + ("" if result.ok else f"\n     {result.problem}")
                )
        bad = [r for r in results if not r.ok]
        code = EXIT_FAILED if bad else EXIT_OK
        if as_json:
            from mainspring._cli_runs import emit
            from schemas import Envelope

            return emit(
                Envelope(
                    ok=not bad,
                    command="replay",
                    exit_code=code,
                    status="incompatible" if bad else "compatible",
                    problems=[r.problem for r in bad],
                    details=msgspec.to_builtins(results),
                ),
                True,
            )
        print(f"{len(results) - len(bad)} compatible, {len(bad)} incompatible")
        return code

    run_command(body, nats_flag=nats_url, prefix=prefix, partitions=partitions)
