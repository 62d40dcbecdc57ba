"""Operator commands: projector, runs, status, inspect, logs (replay: _cli_replay; audit
and projections: _cli_audit).

``status``, ``inspect`` and ``logs`` answer from the Postgres projections when a DSN is
configured, and from the run's journal (saying so) when none is.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import msgspec
import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_OK, STATUS_EXIT, Env, ts
from schemas import RunNotFound, RunState, check_run_id

JOURNAL_NOTE = (
    "no PostgreSQL configured: answering from the run's journal "
    "(`mainspring config show` says what is configured)"
)


def register(app: typer.Typer) -> None:
    from mainspring._cli_replay import replay

    app.command()(projector)
    app.command()(runs)
    app.command()(status)
    app.command()(inspect)
    app.command()(logs)
    app.command()(replay)
    from mainspring._cli_audit import audit_app, projections_app

    app.add_typer(audit_app, name="audit")
    app.add_typer(projections_app, name="projections")
    from mainspring._cli_security import keys_app, roles_app, tenants_app

    app.add_typer(keys_app, name="keys")
    app.add_typer(roles_app, name="roles")
    app.add_typer(tenants_app, name="tenants")
    app.command()(setup)
    from mainspring._cli_backup import backup, restore
    from mainspring._cli_erase import erase

    app.command()(erase)
    app.command()(backup)
    app.command()(restore)


@connecting(json=False)
def setup(
    max_active_runs: Annotated[
        int | None,
        typer.Option(
            help="cap on runs not yet ended (a tenant's quota): a start over it ends at "
            "once with limit.active_runs",
            show_default=False,
        ),
    ] = None,
    retain_days: Annotated[
        float | None,
        typer.Option(
            help="keep journal entries this many days, then drop the oldest (retention "
            "by the stream's max_age; pick more than any run lives: docs/security.md)",
            show_default=False,
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(
            help="stream replicas: 3 on a 3-node cluster (a node may fail); default: 1 for "
            "a new deployment, unchanged for an existing one",
            show_default=False,
        ),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Create the deployment's streams, KV buckets and object store (idempotent).

    With --shards N (fixed from then on) the journal and the inbox are N streams each.
    On a cluster their leaders are spread over the nodes; run setup again after nodes
    restarted to spread them again. With roles (`mainspring roles write`) only the
    operator may: run this once with --nats-nkey operator.nk before starting workers,
    handlers and the rest."""
    from streams import (
        EffectMarkers,
        Leases,
        TopologyConfig,
        ensure_topology,
        set_active_cap,
        set_retention,
        spread_leaders,
    )

    if max_active_runs is not None and max_active_runs < 1:
        raise typer.BadParameter("--max-active-runs must be at least 1")
    if retain_days is not None and retain_days < 1:
        raise typer.BadParameter("--retain-days must be at least 1")

    if replicas is not None and replicas not in (1, 3, 5):
        raise typer.BadParameter("--replicas is 1, 3 or 5")

    async def body(env: Env) -> int:
        await ensure_topology(env.nc, env.subjects, TopologyConfig(replicas=replicas))
        await EffectMarkers(env.nc, env.subjects).open()
        await Leases(env.nc, env.subjects, "setup").open()
        shards = env.subjects.shards
        print(
            f"deployment {env.subjects.prefix!r} is set up ({shards} shard"
            f"{'s' if shards > 1 else ''}): streams, buckets, object store"
        )
        leaders = await spread_leaders(env.nc, env.subjects) if shards > 1 else {}
        if leaders:
            nodes = sorted(set(leaders.values()))
            print(f"  stream leaders on {len(nodes)} node(s): {', '.join(nodes)}")
        if max_active_runs is not None:
            await set_active_cap(env.nc, env.subjects, max_active_runs)
            print(f"  at most {max_active_runs} runs not yet ended (restart workers to apply)")
        if retain_days is not None:
            await set_retention(env.nc, env.subjects, retain_days * 86400)
            print(f"  journal entries older than {retain_days:g} days are dropped, oldest first")
        return EXIT_OK

    conn.run(body)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*r) for r in rows)])


# ---------------------------------------------------------------------- projector
@connecting(postgres=True, signing=True, json=False)
def projector(
    name: Annotated[
        str, typer.Option(help="projector name (its position is kept per name)")
    ] = "main",
    *,
    conn: Connection,
) -> None:
    """Project run journals into PostgreSQL until interrupted (applies migrations on start)."""

    async def body(env: Env) -> int:
        from projections import Projector

        await Projector(
            env.nc, env.pool, env.subjects, name=name, signer=env.signer(), keys=env.keys()
        ).run()
        return EXIT_OK

    conn.run(body, postgres="needs", service=True)


# ---------------------------------------------------------------------- queries
def _run_dict(r: Any) -> dict[str, Any]:
    """A run as ``runs --json`` lists it (its input is left out: it can be a whole spec)."""
    return {
        "run_id": r.run_id,
        "workflow": r.workflow,
        "version": r.version,
        "status": r.status,
        "exit_code": STATUS_EXIT.get(r.status, EXIT_OK),
        "parent_run_id": r.parent_run_id,
        "events": r.events,
        "effects_total": r.effects_total,
        "effects_completed": r.effects_completed,
        "effects_failed": r.effects_failed,
        "waiting_for": r.waiting_for,
        "tokens": r.tokens,
        "cost_usd": r.cost_usd,
        "output": r.output,
        "error": r.error,
        "started_at": r.started_at,
        "updated_at": r.updated_at,
        "ended_at": r.ended_at,
    }


@connecting(postgres=True, json="print a JSON envelope (the runs in `details`)")
def runs(
    status: Annotated[str | None, typer.Option(help="|".join(RunState))] = None,
    workflow: Annotated[
        str | None,
        typer.Option(help="only runs of this workflow (specs: flow.<document id>)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 50,
    stalled: Annotated[
        bool,
        typer.Option(
            "--stalled",
            help="only runs that look stuck, with the reason: a timer overdue, parked, or "
            "waiting on nothing with no input pending (reads the journal and inbox; no "
            "PostgreSQL needed)",
        ),
    ] = False,
    grace: Annotated[
        float, typer.Option("--grace", help="with --stalled: seconds a timer may be late")
    ] = 30.0,
    *,
    conn: Connection,
) -> None:
    """List runs (from the projections), newest activity first; `--stalled` lists the
    runs that look stuck and why (from the journal)."""

    async def body(env: Env) -> int:
        if stalled:
            return await _stalled(env, conn.json, grace, limit)
        from projections import Queries

        rows = await Queries(env.pool).runs(status=status, workflow=workflow, limit=limit)
        if conn.json:
            from mainspring._cli_runs import emit_details

            return emit_details("runs", [_run_dict(r) for r in rows])
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

    conn.run(body, postgres=None if stalled else "needs")


async def _stalled(env: Env, as_json: bool, grace: float, limit: int) -> int:
    from mainspring._stalled import stalled_runs

    found = (await stalled_runs(env.nc, env.subjects, env.journal(), grace_s=grace))[:limit]
    if as_json:
        from mainspring._cli_runs import emit_details

        details = [
            {
                "run_id": s.view.run_id,
                "workflow": s.view.workflow,
                "status": s.view.status,
                "events": s.view.events,
                "updated_at": s.view.updated_at,
                "inbox_pending": s.inbox_pending,
                "reason": s.reason,
            }
            for s in found
        ]
        return emit_details("runs", details)
    if not found:
        print("no stalled runs")
        return EXIT_OK
    for s in found:
        print(f"{s.view.run_id}  {s.view.workflow}  {s.view.status}  {ts(s.view.updated_at)}")
        print(f"    {s.reason}")
    return EXIT_OK


def _queries(env: Env) -> tuple[Any, str | None]:
    """Where one run's data comes from: the projections, or its journal (with a note)."""
    if env.pool is not None:
        from projections import Queries

        return Queries(env.pool), None
    from mainspring._cli_journal import JournalQueries

    return JournalQueries(env.journal()), JOURNAL_NOTE


async def _run_row(queries: Any, run_id: str, from_journal: bool) -> Any:
    check_run_id(run_id)
    row = await queries.run(run_id)
    if row is None:
        if from_journal:
            raise RunNotFound(f"no run {run_id!r} in the journal (`mainspring runs` lists runs)")
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
        lines += [
            f"waiting   for '{name}': resume with "
            f"mainspring resume {row.run_id} {name} --payload '<json>'",
            f"          (or publish the JSON to {env.subjects.event(row.run_id, name)})",
        ]
    if row.output is not None:
        lines.append(f"output    {msgspec.json.encode(row.output).decode()}")
    if row.error is not None:
        lines.append(f"error     {row.error.get('type')}: {row.error.get('message')}")
    return lines


@connecting(postgres=True, json="print the run's JSON envelope (read from the journal)")
def status(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    *,
    conn: Connection,
) -> None:
    """Show a run's status. Exit code: 0 completed, 30 failed or parked, 40 waiting,
    50 cancelled, 60 still running.

    Human output comes from the projections (from the journal when no PostgreSQL is
    configured); --json from the journal itself (the envelope names what a waiting run
    accepts and how to resume it).
    """

    async def body(env: Env) -> int:
        if conn.json:
            from mainspring._cli_runs import emit, envelope_for

            events = await env.journal().load(check_run_id(run_id))
            if not events:
                raise RunNotFound(f"no run {run_id!r}")
            return emit(envelope_for("status", [e.event for e in events], env), True)
        queries, note = _queries(env)
        if note:
            print(f"note: {note}", file=sys.stderr)
        row = await _run_row(queries, run_id, note is not None)
        print("\n".join(_describe(row, env)))
        return STATUS_EXIT.get(row.status, EXIT_OK)

    conn.run(body, postgres=None if conn.json else "wants")


@connecting(postgres=True)
def inspect(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    *,
    conn: Connection,
) -> None:
    """Show everything about a run: status, waits, effects and its hash-chained events
    (from the projections; from the journal when no PostgreSQL is configured)."""

    async def body(env: Env) -> int:
        q, note = _queries(env)
        row = await _run_row(q, run_id, note is not None)
        waits = await q.waits(run_id)
        effects = await q.effects(run_id)
        events = await q.events(run_id)
        if conn.json:
            return await _envelope(
                env,
                "inspect",
                run_id,
                {
                    "source": "journal" if note else "postgres",
                    "waits": waits,
                    "effects": effects,
                    "events": [
                        {"n": e.n, "type": e.type, "at": e.at, "hash": e.hash.hex()} for e in events
                    ],
                    "tokens": row.tokens,
                    "cost_usd": row.cost_usd,
                },
            )
        if note:
            print(f"note: {note}", file=sys.stderr)
        out = _describe(row, env)
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
        out += [
            "",
            _table(
                ["N", "TYPE", "AT", "HASH"],
                [[str(e.n), e.type, ts(e.at), e.hash.hex()[:16]] for e in events],
            ),
        ]
        print("\n".join(out))
        return STATUS_EXIT.get(row.status, EXIT_OK)

    conn.run(body, postgres="wants")


async def _envelope(env: Env, command: str, run_id: str, details: object) -> int:
    """A run's envelope (from its journal) with command-specific details, printed."""
    from mainspring._cli_runs import emit, envelope_for

    events = await env.journal().load(run_id)
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


@connecting(postgres=True)
def logs(
    run_id: Annotated[str, typer.Argument(help="the run's id")],
    *,
    conn: Connection,
) -> None:
    """A readable timeline of a run's events (from the projections; from the journal when
    no PostgreSQL is configured)."""

    async def body(env: Env) -> int:
        q, note = _queries(env)
        await _run_row(q, run_id, note is not None)
        events = await q.events(run_id)
        if conn.json:
            timeline = [
                {"n": e.n, "type": e.type, "at": e.at, "event": msgspec.json.decode(e.data)}
                for e in events
            ]
            return await _envelope(env, "logs", run_id, timeline)
        if note:
            print(f"note: {note}", file=sys.stderr)
        for e in events:
            print(
                f"{e.at.strftime('%H:%M:%S.%f')[:-3]}  {e.n:>4}  {e.type:<17} "
                f"{_timeline_detail(e.data)}"
            )
        return EXIT_OK

    conn.run(body, postgres="wants")
