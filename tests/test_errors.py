"""One error tree: every exception class of ours is drawn in it, or says why it is not."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest

import mainspring as ms
import schemas
from actors import Context
from actors._decisions import error_info
from actors._machine import Machine
from schemas import ErrorInfo, MainspringError, RunStarted, StepFailed

PACKAGES = (
    "schemas",
    "streams",
    "servers",
    "client",
    "handlers",
    "actors",
    "projections",
    "flows",
    "mainspring",
)


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
