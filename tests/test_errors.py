"""One error tree, one list of error codes, statuses as enums: each rule checked here."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import mainspring as ms
import schemas
from actors import Context
from actors._decisions import error_info
from actors._machine import Machine
from schemas import (
    EffectState,
    ErrorCode,
    ErrorInfo,
    MainspringError,
    RunStarted,
    RunState,
    StepFailed,
    WaitState,
)
from tests.test_layout import ALLOWED

PACKAGES = tuple(ALLOWED)  # every package of ours, bottom to top


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every public exception class defined in our packages, by name."""
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names = [package] + [
            m.name
            for m in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}.")
            if not m.name.endswith(".__main__")  # runs the CLI when imported
        ]
        for name in names:
            module = importlib.import_module(name)
            for attr, obj in vars(module).items():
                if (
                    inspect.isclass(obj)
                    and issubclass(obj, BaseException)
                    and obj.__module__ == name
                    and not attr.startswith("_")
                ):
                    found[attr] = obj
    return found


CLASSES = _exception_classes()
TREE = (schemas._errors.__doc__ or "").split("Internal, not in the tree")[0]
INTERNAL = (schemas._errors.__doc__ or "").split("Internal, not in the tree")[1]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_exception_is_in_the_tree_or_says_it_is_internal(name: str) -> None:
    """An exception class of ours either derives from MainspringError and is drawn in the
    tree of schemas/_errors.py, or is listed there as internal and says so itself."""
    cls = CLASSES[name]
    if issubclass(cls, MainspringError):
        assert f" {name}" in TREE, f"{name} is a MainspringError missing from the tree"
    else:
        assert f"``{name}``" in INTERNAL, f"{name} is neither in the tree nor listed internal"
        assert "Internal" in (cls.__doc__ or ""), f"{name}'s docstring does not say internal"


def test_the_tree_draws_only_classes_that_exist() -> None:
    """Every name drawn in the tree is a MainspringError of ours (no stale entries)."""
    drawn = {
        line.split("── ")[1].split()[0].rstrip("*") for line in TREE.splitlines() if "── " in line
    }
    assert drawn <= set(CLASSES)
    assert all(issubclass(CLASSES[n], MainspringError) for n in drawn)


def test_step_failed_and_workflow_misuse_join_the_tree() -> None:
    """StepFailedError and WorkflowMisuse are MainspringErrors; WorkflowMisuse stays a
    RuntimeError for code that caught it so."""
    assert issubclass(ms.StepFailedError, ms.MainspringError)
    assert issubclass(ms.WorkflowMisuse, ms.MainspringError)
    assert issubclass(ms.WorkflowMisuse, RuntimeError)


def _started() -> RunStarted:
    return RunStarted(
        run_id="tree", n=1, at=datetime(2026, 1, 1, tzinfo=UTC), workflow="w", version="1"
    )


class _Foreign:
    """Not a Mainspring awaitable: what workflow code must not await."""

    def __await__(self) -> Any:
        yield "foreign"


def _run(make: Any, *feed: Any) -> Machine:
    m = Machine(_started())
    coro: Coroutine[Any, Any, Any] = make(Context(m))
    m.start(coro)
    for ev in feed:
        m.feed(ev)
    return m


def test_workflow_misuse_is_caught_both_ways_and_fails_the_run_by_its_name() -> None:
    """Workflow code catches WorkflowMisuse as RuntimeError or as MainspringError; when it
    escapes, the run's error type is still the class name."""
    caught: list[str] = []

    async def wf(ctx: Context) -> None:
        try:
            await _Foreign()
        except RuntimeError:
            caught.append("RuntimeError")
        try:
            await _Foreign()
        except MainspringError:
            caught.append("MainspringError")
        await _Foreign()

    m = _run(wf)
    assert caught == ["RuntimeError", "MainspringError"]
    assert m.main is not None
    exc = m.main.exception()
    assert isinstance(exc, ms.WorkflowMisuse)
    assert error_info(exc).type == "WorkflowMisuse"


def test_a_failed_step_is_caught_as_a_mainspring_error_and_keeps_its_error() -> None:
    """A failed step raises StepFailedError where it is awaited, catchable as a
    MainspringError; it carries the step's own error (what the run fails with)."""
    seen: list[ErrorInfo | None] = []

    async def wf(ctx: Context) -> None:
        try:
            await ctx.step(lambda: None, name="s")
        except MainspringError as e:
            seen.append(getattr(e, "error", None))
            raise

    boom = ErrorInfo(type="ValueError", message="boom")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    m = _run(wf, StepFailed(run_id="tree", n=2, at=at, seq=1, name="s", error=boom))
    assert seen == [boom]
    assert m.main is not None
    exc = m.main.exception()
    assert isinstance(exc, ms.StepFailedError)
    assert exc.error == boom
    assert error_info(exc).type == "StepFailedError"  # a MainspringError without a .type


# ---------------------------------------------------------------------------- codes
def test_error_codes_are_unique_and_each_has_a_one_line_meaning() -> None:
    """Every ErrorCode has a distinct wire value and a one-line meaning for tooling."""
    values = [code.value for code in ErrorCode]
    assert len(values) == len(set(values))
    for code in ErrorCode:
        assert code.meaning.strip(), f"{code.name} has no meaning"
        assert "\n" not in code.meaning
        assert ErrorCode(code.value) is code


def test_class_name_codes_are_their_class_names() -> None:
    """The codes a run records as an exception's class name stay that class's name (a
    rename would silently change the wire value)."""
    from actors._futures import WorkflowMisuse
    from handlers._builtins import CommandFailed, HttpStatusError, LlmUnavailable

    named = {
        ErrorCode.WAIT_TIMEOUT: schemas.WaitTimeoutError,
        ErrorCode.WORKFLOW_MISUSE: WorkflowMisuse,
        ErrorCode.COMMAND_FAILED: CommandFailed,
        ErrorCode.HTTP_STATUS_ERROR: HttpStatusError,
        ErrorCode.LLM_UNAVAILABLE: LlmUnavailable,
    }
    assert {code: cls.__name__ for code, cls in named.items()} == {c: c.value for c in named}
    assert {c for c in ErrorCode if c.value[0].isupper()} == set(named)


def test_wire_values_of_error_codes_never_change() -> None:
    """Journals, envelopes and projections store these values: pinned, add only."""
    assert {code.name: code.value for code in ErrorCode} == {
        "WORKFLOW_NOT_FOUND": "workflow.not_found",
        "INPUT_INVALID": "input.invalid",
        "OUTPUT_INVALID": "output.invalid",
        "NONDETERMINISM": "nondeterminism",
        "VERSION_UNAVAILABLE": "version.unavailable",
        "CANCELLED": "cancelled",
        "WORKFLOW_MISUSE": "WorkflowMisuse",
        "WAIT_TIMEOUT": "WaitTimeoutError",
        "LIMIT_EVENTS": "limit.events",
        "LIMIT_CHILD_DEPTH": "limit.child_depth",
        "LIMIT_COST": "limit.cost",
        "LIMIT_WALL_TIME": "limit.wall_time",
        "LIMIT_ACTIVE_RUNS": "limit.active_runs",
        "PAYLOAD_TOO_LARGE": "payload_too_large",
        "PAYLOAD_UNAVAILABLE": "payload_unavailable",
        "PAYLOAD_INVALID": "payload.invalid",
        "RESULT_INVALID": "result.invalid",
        "EFFECT_TIMEOUT": "effect.timeout",
        "EFFECT_INTERRUPTED": "effect.interrupted",
        "EFFECT_DELIVERY_LIMIT": "effect.delivery_limit",
        "EFFECT_FAILED": "effect.failed",
        "CHILD_FAILED": "child.failed",
        "CHILD_CANCELLED": "child.cancelled",
        "TERMINAL": "terminal",
        "SPEC_INVALID": "spec.invalid",
        "FOREACH_ITEMS": "foreach.items",
        "CLI_SHELL": "cli.shell",
        "CLI_REFUSED": "cli.refused",
        "CLI_OUTPUT": "cli.output",
        "COMMAND_FAILED": "CommandFailed",
        "HTTP_STATUS": "http.status",
        "HTTP_STATUS_ERROR": "HttpStatusError",
        "LLM_REQUEST": "llm.request",
        "LLM_UNAVAILABLE": "LlmUnavailable",
    }


def test_error_codes_encode_as_their_plain_values() -> None:
    """An ErrorInfo built with a member encodes byte for byte as one built with the
    string, and compares equal to it: stored journals and hashes do not change."""
    import msgspec

    with_member = ErrorInfo(type=ErrorCode.LIMIT_COST, message="m")
    with_string = ErrorInfo(type="limit.cost", message="m")
    assert msgspec.json.encode(with_member) == msgspec.json.encode(with_string)
    assert with_member == with_string
    assert ms.TerminalError("x").type == "terminal"


DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_cli_docs_list_every_error_code_with_its_meaning() -> None:
    """docs/cli.md's table of error codes is the enum: every code, its meaning, no other."""
    text = (DOCS / "cli.md").read_text()
    section = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    documented = {code.strip().strip("`"): meaning.strip() for code, meaning in rows}
    assert documented == {code.value: code.meaning for code in ErrorCode}


def test_envelope_schema_lists_every_error_code() -> None:
    """The envelope's JSON Schema describes error.type with every code and its meaning,
    and docs/envelope.schema.json carries that same description."""

    def described(schema: dict[str, Any]) -> str:
        return str(schema["$defs"]["ErrorInfo"]["properties"]["type"]["description"])

    generated = described(schemas.envelope_schema())
    for code in ErrorCode:
        assert f"\n- {code.value}: {code.meaning}" in generated
    published = json.loads((DOCS / "envelope.schema.json").read_text())
    assert described(published) == generated, "regenerate docs/envelope.schema.json"


# --------------------------------------------------- no bare codes or statuses
ROOT = Path(__file__).resolve().parent.parent
ENUM_MODULES = {"schemas/_codes.py", "schemas/_states.py"}  # where the values are defined
# A string equal to a code or a status that is neither, with the reason.
NOT_A_CODE_OR_STATUS = {
    ("flows/_interpreter.py", "timed_out"): "a key of a spec's scope (steps.<id>.timed_out)",
}


def _exempt(tree: ast.Module) -> set[int]:
    """ids of string constants that are not codes or statuses whatever they read: journal
    tags (`tag="effect.failed"` names an event type), prose (`message=`) and `__all__`."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            skip |= {id(k.value) for k in node.keywords if k.arg == "tag"}
        elif isinstance(node, ast.Call):
            for k in node.keywords:
                if k.arg == "message":
                    skip |= {id(n) for n in ast.walk(k.value)}
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip |= {id(n) for n in ast.walk(node.value)}
    return skip


def _string_literals() -> list[tuple[str, int, str]]:
    """(path, line, value) of every string literal in our packages, outside the enums'
    own modules and the exemptions above. Parsed once, at collection (see test_layout)."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in ENUM_MODULES:
                continue
            tree = ast.parse(path.read_text(), rel)
            skip = _exempt(tree)
            found += [
                (rel, node.lineno, node.value)
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and (rel, node.value) not in NOT_A_CODE_OR_STATUS
            ]
    return found


LITERALS = _string_literals()


def test_no_error_code_is_written_as_a_bare_string() -> None:
    """Every ErrorInfo.type Mainspring writes comes from ErrorCode: no string literal in
    the packages equals a code (journal tags, messages and __all__ aside)."""
    codes = {code.value for code in ErrorCode}
    assert [f"{p}:{n}: {v!r}" for p, n, v in LITERALS if v in codes] == []


def test_no_status_is_written_as_a_bare_string() -> None:
    """Run, wait and effect statuses come from RunState, WaitState and EffectState: no
    string literal in the packages equals one."""
    statuses = {s.value for enum in (RunState, WaitState, EffectState) for s in enum}
    assert [f"{p}:{n}: {v!r}" for p, n, v in LITERALS if v in statuses] == []


# ----------------------------------------------------------------------- statuses
def test_a_folded_run_reports_its_statuses_as_enums_equal_to_the_stored_strings() -> None:
    """RunView's run, wait and effect statuses are enum members that are still the very
    strings stored and compared before (`status == "cancelled"` keeps working)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    view = schemas.fold(
        [
            _started(),
            schemas.EffectRequested(run_id="tree", n=2, at=at, seq=1, effect_id="e", kind="k"),
            schemas.EffectCompleted(run_id="tree", n=3, at=at, seq=1, effect_id="e"),
            schemas.WaitStarted(run_id="tree", n=4, at=at, seq=2, name="approval"),
        ]
    )
    statuses = (view.status, view.waits[2].status, view.effects[1].status)
    assert statuses == (RunState.WAITING, WaitState.OPEN, EffectState.COMPLETED)
    assert [type(s) for s in statuses] == [RunState, WaitState, EffectState]
    view.apply(schemas.RunCancelled(run_id="tree", n=5, at=at))
    assert type(view.status) is RunState
    assert view.status == "cancelled"
    assert view.waits[2].status == "cancelled"
    assert view.status in schemas.TERMINAL_STATUSES
    assert json.dumps({"status": view.status}) == '{"status": "cancelled"}'


def test_every_run_state_has_an_exit_code_and_is_documented() -> None:
    """The CLI maps every run state to an exit code, and the docs list every run and
    wait state the projections store."""
    from mainspring._cli_runner import STATUS_EXIT

    assert set(STATUS_EXIT) == set(RunState)
    tables = (DOCS / "projections-and-audit.md").read_text()
    runs_row = next(line for line in tables.splitlines() if line.startswith("| `runs` |"))
    waits_row = next(line for line in tables.splitlines() if line.startswith("| `waits` |"))
    assert all(state.value in runs_row for state in RunState)
    assert all(state.value in waits_row for state in WaitState)
