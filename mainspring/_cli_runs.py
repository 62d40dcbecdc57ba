"""Run control from the command line: start, run (a spec), resume, cancel, validate.

Human output by default; ``--json`` prints one envelope (``schemas.Envelope``).
Exit codes: 0 completed/ok, 10 invalid input, 20 runtime or connection error,
30 run failed, 40 waiting, 50 cancelled, 60 still running.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import (
    EXIT_INVALID,
    EXIT_OK,
    EXIT_RUNNING,
    EXIT_WAITING,
    STATUS_EXIT,
    Env,
    JsonOpt,
)
from schemas import (
    ConfigError,
    Envelope,
    ErrorCode,
    ErrorInfo,
    JournalEvent,
    MainspringError,
    RunStarted,
    RunState,
    WaitInfo,
    WaitStarted,
    check_run_id,
    fold,
)

WaitOpt = Annotated[
    bool, typer.Option("--wait", help="wait until the run completes, fails or waits for an event")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds --wait waits at most")]


def register(app: typer.Typer) -> None:
    app.command()(start)
    app.command()(run)
    app.command()(resume)
    app.command()(cancel)
    app.command()(validate)


def read_json_arg(value: str | None, what: str) -> Any:
    """Inline JSON, or ``@file.json``; a mistake is exit 10 naming the problem."""
    if value is None:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {what} file {value[1:]}: {e}") from e
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as e:
        raise ConfigError(f"{what} is not valid JSON ({e}); pass JSON or @file.json") from e


def emit_details(command: str, details: object) -> int:
    """Print an ok envelope whose ``details`` carry a command's data (lists, reports)."""
    return emit(
        Envelope(
            ok=True,
            command=command,
            status="ok",
            exit_code=EXIT_OK,
            details=msgspec.to_builtins(details),
        ),
        True,
    )


def emit(env: Envelope, as_json: bool) -> int:
    if as_json:
        print(msgspec.json.encode(env).decode())
        return env.exit_code
    if env.run_id:
        print(f"run {env.run_id} ({env.workflow or '?'}): {env.status}")
    if env.wait:
        w = env.wait
        if w.prompt:
            print(f"  {w.prompt}")
        print(
            f"  waiting for event '{w.event}'"
            + (f" (payload schema: {msgspec.json.encode(w.schema).decode()})" if w.schema else "")
        )
        print(f"  resume with:  {w.resume_command}")
        print(f"  or publish:   {w.nats_command}")
    if env.result is not None:
        print(f"  result: {msgspec.json.encode(env.result).decode()}")
    if env.error:
        print(f"  error: {env.error.type}: {env.error.message}", file=sys.stderr)
    for problem in env.problems:
        print(f"  {problem}", file=sys.stderr)
    return env.exit_code


def _flow_step(events: list[JournalEvent], event_name: str) -> tuple[str | None, dict[str, Any]]:
    """For declarative runs recorded before waits carried their step (see ``_wait_shown``):
    the first await_event step waiting for ``event_name``, as the document has it."""
    from flows import is_flow

    first = events[0]
    if not isinstance(first, RunStarted) or not is_flow(first.workflow):
        return None, {}
    try:
        spec = msgspec.json.decode(first.input)["spec"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return None, {}
    for step in spec.get("workflow", {}).get("steps", []):
        if step.get("kind") == "await_event" and step.get("event_name") == event_name:
            return step.get("id"), step
    return None, {}


def _wait_shown(events: list[JournalEvent], started: WaitStarted) -> tuple[Any, dict[str, Any]]:
    """The payload schema a wait accepts, and what to show about it (step id, prompt,
    summary, audience): declarative waits record these, ``${...}`` filled in, in an
    annotation of their schema."""
    from flows import WAIT_ANNOTATION

    schema = msgspec.json.decode(started.schema)
    if isinstance(schema, dict) and isinstance(schema.get(WAIT_ANNOTATION), dict):
        shown = schema.pop(WAIT_ANNOTATION)
        return schema, shown
    step_id, step = _flow_step(events, started.name)
    return schema, {**step, "step": step_id} if step_id else {}


def print_warnings(warnings: list[Any]) -> None:
    """Spec warnings on stderr (stdout stays one envelope under --json)."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def envelope_for(command: str, events: list[JournalEvent], env: Env) -> Envelope:
    """The envelope of a run, from its journal (the source of truth)."""
    view = fold(events)
    wait = None
    step_id = None
    if view.status == RunState.WAITING:
        open_wait = view.open_waits[0]
        started = next(e for e in events if isinstance(e, WaitStarted) and e.seq == open_wait.seq)
        schema, step = _wait_shown(events, started)
        step_id = step.get("step")
        subject = env.subjects.event(view.run_id, open_wait.name)
        example = "'<json>'"
        wait = WaitInfo(
            event=open_wait.name,
            subject=subject,
            schema=schema,
            deadline=open_wait.deadline.isoformat() if open_wait.deadline else None,
            prompt=step.get("prompt"),
            audience=step.get("audience"),
            resume_command=f"mainspring resume {view.run_id} {open_wait.name} --payload {example}",
            nats_command=f"nats pub {subject} {example}",
        )
    result = msgspec.json.decode(view.output) if view.output is not None else None
    code = STATUS_EXIT.get(view.status, EXIT_OK)
    return Envelope(
        ok=code in (EXIT_OK, EXIT_WAITING, EXIT_RUNNING),
        command=command,
        status=view.status,
        exit_code=code,
        run_id=view.run_id,
        workflow=view.workflow,
        current_step_id=step_id,
        wait=wait,
        result=result,
        error=view.error,
    )


async def _after(
    command: str, env: Env, run_id: str, wait: bool, timeout: float, workflow: str
) -> Envelope:
    from client import Client

    client = Client(env.nc, env.subjects)
    if not wait:
        return Envelope(
            ok=True,
            command=command,
            status="started",
            exit_code=EXIT_OK,
            run_id=run_id,
            workflow=workflow,
        )
    import anyio

    with anyio.move_on_after(timeout):
        await client.wait_for(run_id, RunState.WAITING)
    events = await client.history(run_id)
    if not events:
        return Envelope(
            ok=True,
            command=command,
            status="started",
            exit_code=EXIT_OK,
            run_id=run_id,
            workflow=workflow,
            problems=["no worker has picked the run up yet; is one running?"],
        )
    return envelope_for(command, [e.event for e in events], env)


def _run_cli(conn: Connection, body: Callable[[Env], Awaitable[Envelope]]) -> None:
    """Run ``body`` and print the envelope it returns (as JSON under --json)."""

    async def wrapped(env: Env) -> int:
        return emit(await body(env), conn.json)

    conn.run(wrapped)


@connecting()
def start(
    workflow: Annotated[str, typer.Argument(help="registered workflow name")],
    input: Annotated[
        str | None, typer.Option("--input", help="input as JSON or @file.json", show_default=False)
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(help="your run id (idempotent); default: a new ULID", show_default=False),
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 60.0,
    *,
    conn: Connection,
) -> None:
    """Start a run of a registered workflow."""
    payload = read_json_arg(input, "--input")

    async def body(env: Env) -> Envelope:
        from client import Client

        rid = await Client(env.nc, env.subjects).start(workflow, payload, run_id=run_id)
        return await _after("start", env, rid, wait, timeout, workflow)

    _run_cli(conn, body)


@connecting()
def run(
    spec_file: Annotated[
        Path, typer.Argument(help="a checkpointflow/v1 or mainspring/v1 YAML/JSON file")
    ],
    input: Annotated[
        str | None, typer.Option("--input", help="inputs as JSON or @file.json", show_default=False)
    ] = None,
    run_id: Annotated[
        str | None, typer.Option(help="your run id (idempotent)", show_default=False)
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 60.0,
    *,
    conn: Connection,
) -> None:
    """Validate a declarative workflow and start it as `flow.<document id>` (needs a
    worker with the spec interpreter, as `mainspring dev` has). With --wait: exit 40 and a
    resume command when it waits."""
    from flows import flow_name, load_spec, resolve_refs, validate_spec

    inputs = read_json_arg(input, "--input") or {}

    async def body(env: Env) -> Envelope:
        from client import Client

        spec = validate_spec(load_spec(spec_file))
        print_warnings(spec.warnings)
        spec = resolve_refs(spec)
        name = flow_name(spec.workflow.get("id"))
        from jsonschema import Draft202012Validator

        errors = list(Draft202012Validator(spec.workflow["inputs"]).iter_errors(inputs))
        if errors:
            raise ConfigError(
                f"--input does not match the spec's inputs: {errors[0].message} "
                f"- at `{errors[0].json_path}`"
            )
        rid = await Client(env.nc, env.subjects).start(
            name, {"spec": spec.document, "inputs": inputs}, run_id=run_id
        )
        return await _after("run", env, rid, wait, timeout, name)

    _run_cli(conn, body)


@connecting()
def resume(
    run_id: Annotated[str, typer.Argument(help="the waiting run")],
    event: Annotated[str, typer.Argument(help="the event name it waits for")],
    payload: Annotated[
        str | None,
        typer.Option("--payload", help="event payload as JSON or @file.json", show_default=False),
    ] = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 60.0,
    *,
    conn: Connection,
) -> None:
    """Send an event to a run. The payload is checked against the schema the run's
    wait accepts (exit 10 naming the field); same as publishing to ms.event.<run>.<event>."""
    data = read_json_arg(payload, "--payload")

    async def body(env: Env) -> Envelope:
        from jsonschema import Draft202012Validator

        from client import Client

        client = Client(env.nc, env.subjects)
        history = await client.history(check_run_id(run_id))
        if not history:
            raise ConfigError(f"no run {run_id!r}")
        current = envelope_for("resume", [e.event for e in history], env)
        if current.wait and current.wait.event == event and current.wait.schema:
            errors = list(Draft202012Validator(current.wait.schema).iter_errors(data))
            if errors:
                raise ConfigError(
                    f"the payload does not match what '{event}' accepts: "
                    f"{errors[0].message} - at `{errors[0].json_path}`"
                )
        last = history[-1].n
        await client.send_event(run_id, event, data)
        if not wait:
            return Envelope(
                ok=True,
                command="resume",
                status="sent",
                exit_code=EXIT_OK,
                run_id=run_id,
                workflow=current.workflow,
            )
        import anyio

        with anyio.move_on_after(timeout):
            await client.wait_for(run_id, RunState.WAITING, after=last)
        return envelope_for("resume", [e.event for e in await client.history(run_id)], env)

    _run_cli(conn, body)


@connecting()
def cancel(
    run_id: Annotated[str, typer.Argument(help="the run to cancel")],
    reason: Annotated[str, typer.Option(help="recorded in the journal")] = "",
    *,
    conn: Connection,
) -> None:
    """Cancel a run (its children too); exit 50 once cancelled."""

    async def body(env: Env) -> Envelope:
        from client import Client

        client = Client(env.nc, env.subjects)
        if not await client.history(check_run_id(run_id)):
            raise ConfigError(f"no run {run_id!r}")
        await client.cancel(run_id, reason)
        status = await client.wait_for(run_id, timeout=30)
        events = [e.event for e in await client.history(run_id)]
        env_ = envelope_for("cancel", events, env)
        if status.status == RunState.CANCELLED:
            env_.ok = True
        return env_

    _run_cli(conn, body)


def validate(
    spec_file: Annotated[Path, typer.Argument(help="a checkpointflow/v1 or mainspring/v1 file")],
    as_json: JsonOpt = False,
) -> None:
    """Check a declarative workflow without running it: exit 0 when valid, 10 with every
    problem at file:line:column otherwise. Warnings (valid, but looks unintended) go to
    stderr with their file:line:column and do not change the exit code."""
    from flows import SpecInvalid, load_spec, resolve_refs, validate_spec

    try:
        spec = validate_spec(load_spec(spec_file))
        print_warnings(spec.warnings)
        spec = resolve_refs(spec)
    except SpecInvalid as e:
        env = Envelope(
            ok=False,
            command="validate",
            status="invalid",
            exit_code=EXIT_INVALID,
            problems=[str(p) for p in e.errors],
            error=ErrorInfo(type=ErrorCode.SPEC_INVALID, message=f"{len(e.errors)} problem(s)"),
        )
    except MainspringError as e:
        env = Envelope(
            ok=False,
            command="validate",
            status="invalid",
            exit_code=EXIT_INVALID,
            error=ErrorInfo(type=type(e).__name__, message=str(e)),
        )
    else:
        env = Envelope(
            ok=True,
            command="validate",
            status="valid",
            exit_code=EXIT_OK,
            workflow=str(spec.workflow.get("id")),
            details={"steps": len(spec.steps), "warnings": [str(w) for w in spec.warnings]},
        )
        if not as_json:
            print(f"{spec_file}: valid ({len(spec.steps)} steps)")
            raise SystemExit(EXIT_OK)
    raise SystemExit(emit(env, as_json))
