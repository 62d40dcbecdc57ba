"""``mainspring replay``: re-run today's code against recorded journals.

Code-first runs need ``--app`` (today's registry). Declarative runs need nothing: their
start recorded the whole document, so they replay with today's interpreter against the
document they ran; ``--spec FILE`` replays them against the file instead (is the edited
document still compatible with the runs already recorded?).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_FAILED, EXIT_OK, Env
from schemas import ConfigError, JournalEvent, RunNotFound, RunStarted, check_run_id

if TYPE_CHECKING:
    from actors import ReplayResult


def _recorded_document(first: RunStarted) -> dict[str, Any] | None:
    """The document a declarative run recorded in its input (None for code runs)."""
    from flows import is_flow

    if not is_flow(first.workflow):
        return None
    try:
        spec = msgspec.json.decode(first.input)["spec"]
    except (msgspec.DecodeError, KeyError, TypeError):
        return None
    return spec if isinstance(spec, dict) else None


def _document_id(document: dict[str, Any] | None) -> str | None:
    wf = (document or {}).get("workflow")
    return str(wf.get("id")) if isinstance(wf, dict) else None


def _with_document(events: list[JournalEvent], document: dict[str, Any]) -> list[JournalEvent]:
    """The journal as if its run had started with ``document`` (same recorded inputs)."""
    first = events[0]
    assert isinstance(first, RunStarted)
    recorded = msgspec.json.decode(first.input)
    replaced = msgspec.json.encode({**recorded, "spec": document})
    return [msgspec.structs.replace(first, input=msgspec.Raw(replaced)), *events[1:]]


@connecting()
def replay(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="runs to replay", show_default=False)
    ] = None,
    app_spec: Annotated[
        str,
        typer.Option(
            "--app", help="today's workflows: 'module:registry' (not needed for spec runs)"
        ),
    ] = "",
    spec_file: Annotated[
        str,
        typer.Option(
            "--spec",
            help="replay declarative runs against this document instead of the one they "
            "recorded (with --all: only runs of this document)",
        ),
    ] = "",
    all_runs: Annotated[
        bool, typer.Option("--all", help="replay every run in the journal")
    ] = False,
    workflow: Annotated[
        str | None,
        typer.Option(help="with --all: only this workflow (specs: flow.<document id>)"),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Re-run today's code against recorded journals; exit 30 if any is incompatible."""
    as_json = conn.json
    from actors import Registry, Replayer
    from flows import flow_registry, load_spec, resolve_refs, validate_spec
    from mainspring._config import load_app

    registry = flow_registry(load_app(app_spec, Registry) if app_spec else None)
    replayer = Replayer(registry)
    document = None
    if spec_file:
        document = resolve_refs(validate_spec(load_spec(spec_file))).document
    wanted = _document_id(document)

    async def body(env: Env) -> int:
        from actors import ReplayResult
        from flows import is_flow

        journal = env.journal()
        ids = list(run_ids or [])
        if all_runs:
            ids = await journal.run_ids()
        if not ids:
            raise ConfigError("name runs to replay, or pass --all")
        results = []
        for rid in ids:
            stored = await journal.load(check_run_id(rid))
            if not stored:
                raise RunNotFound(f"no journal for run {rid!r}")
            events = [e.event for e in stored]
            first = events[0]
            assert isinstance(first, RunStarted)
            if workflow and first.workflow != workflow:
                continue
            recorded = _recorded_document(first)
            if document is not None:
                if _document_id(recorded) != wanted:
                    if all_runs:
                        continue  # --all --spec: only the runs of that document
                    result = ReplayResult(
                        rid,
                        first.workflow,
                        len(events),
                        False,
                        f"run {rid} ran "
                        + (
                            f"the document {_document_id(recorded)!r}"
                            if recorded is not None
                            else f"the code workflow {first.workflow!r}"
                        )
                        + f", not {wanted!r} of {spec_file}",
                    )
                    results.append(result)
                    _say(result, as_json)
                    continue
                events = _with_document(events, document)
            if not is_flow(first.workflow) and first.workflow not in registry:
                hint = "pass --app module:registry with today's code"
                result = ReplayResult(
                    rid,
                    first.workflow,
                    len(events),
                    False,
                    f"run {rid} is a run of the code workflow {first.workflow!r}: {hint}",
                )
            else:
                result = replayer.check(events)
            results.append(result)
            _say(result, as_json)
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
                    details=[_details(r) for r in results],
                ),
                True,
            )
        print(f"{len(results) - len(bad)} compatible, {len(bad)} incompatible")
        return code

    conn.run(body)


def _details(result: ReplayResult) -> dict[str, Any]:
    """A result as ``--json`` has shown it so far: ``divergence`` (structured, new with
    ``Replayer``) is left out until the envelope's details add it on purpose."""
    shown: dict[str, Any] = msgspec.to_builtins(result)
    shown.pop("divergence")
    return shown


def _say(result: ReplayResult, as_json: bool) -> None:
    if as_json:
        return
    mark = "ok  " if result.ok else "FAIL"
    print(
        f"{mark} {result.run_id} ({result.workflow}, {result.events} events)"
        + ("" if result.ok else f"\n     {result.problem}")
    )
