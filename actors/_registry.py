"""Workflow registry: an object you create, decorate functions into, and hand to a worker."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints, overload

import msgspec

from schemas import VersionUnavailable, WorkflowNotFound, check_workflow_name

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])


@dataclass(frozen=True)
class WorkflowDef:
    name: str
    version: str
    fn: Callable[..., Coroutine[Any, Any, Any]]
    input_type: Any
    output_type: Any
    events: Callable[[Any], Collection[str] | None] | None = None
    """the resume-event names a run accepts, from its input (None: any valid name)"""

    def declared_events(self, raw_input: msgspec.Raw) -> Collection[str] | None:
        """Event names a run with this input declares; None when it declares none."""
        if self.events is None:
            return None
        try:
            value = msgspec.json.decode(raw_input, type=self.input_type)
        except msgspec.ValidationError:
            return None
        return self.events(value)


class Registry:
    """Named workflows. No global state: create one per application."""

    def __init__(self) -> None:
        self._workflows: dict[str, WorkflowDef] = {}
        """the current version of each workflow: new runs start on it"""
        self._previous: dict[tuple[str, str], WorkflowDef] = {}
        """(name, version) -> a previous version, kept for the runs it started"""

    @overload
    def workflow(self, fn: F, /) -> F: ...

    @overload
    def workflow(
        self,
        *,
        name: str | None = None,
        version: str = "1",
        events: Callable[[Any], Collection[str] | None] | None = None,
        previous: bool = False,
    ) -> Callable[[F], F]: ...

    def workflow(
        self,
        fn: F | None = None,
        *,
        name: str | None = None,
        version: str = "1",
        events: Callable[[Any], Collection[str] | None] | None = None,
        previous: bool = False,
    ) -> F | Callable[[F], F]:
        """Register ``async def f(ctx, input) -> output`` (usable bare or with arguments).

        ``version`` is recorded in every run the workflow starts, and a run only ever
        runs on the code of its own version: keep an older version registered with
        ``previous=True`` (under the same ``name``) while runs it started are going, and
        a worker runs those on it; new runs start on the one registered without. A run
        whose version a worker lacks is parked there (``version.unavailable``) until a
        worker that has it takes it. ``events``, given a run's input, names the resume
        events such a run can ever wait for; the worker then rejects others on arrival
        (declarative workflows declare theirs).
        """

        def register(func: F) -> F:
            if not inspect.iscoroutinefunction(func):
                raise TypeError(f"workflow {func.__name__} must be an `async def` function")
            wf_name = check_workflow_name(name or func.__name__)
            current = self._workflows.get(wf_name)
            if (wf_name, version) in self._previous or (current and current.version == version):
                raise ValueError(f"workflow {wf_name!r} version {version!r} is already registered")
            if current is not None and not previous:
                raise ValueError(
                    f"workflow {wf_name!r} is already registered (version {current.version!r}): "
                    "register older versions with previous=True"
                )
            params = list(inspect.signature(func).parameters)
            hints = get_type_hints(func)
            input_type = hints.get(params[1], Any) if len(params) > 1 else Any
            made = WorkflowDef(wf_name, version, func, input_type, hints.get("return", Any), events)
            if previous:
                self._previous[(wf_name, version)] = made
            else:
                self._workflows[wf_name] = made
            return func

        if fn is not None:
            return register(fn)
        return register

    def get(self, name: str) -> WorkflowDef:
        try:
            return self._workflows[name]
        except KeyError:
            known = ", ".join(sorted(self._workflows)) or "none"
            raise WorkflowNotFound(
                f"no workflow named {name!r} is registered on this worker (known: {known})"
            ) from None

    def for_run(self, name: str, version: str) -> WorkflowDef:
        """The code a run started by ``version`` of ``name`` runs on: that version,
        current or previous (``VersionUnavailable`` when this registry lacks it)."""
        current = self.get(name)
        if version in (current.version, "?"):  # "?": started where the name was unknown
            return current
        found = self._previous.get((name, version))
        if found is None:
            have = ", ".join(self.versions(name))
            raise VersionUnavailable(
                f"the run was started by version {version!r} of workflow {name!r}; this "
                f"worker has {have}: it waits for a worker that has {version!r} (keep it "
                "registered with previous=True until its runs end)"
            )
        return found

    def versions(self, name: str) -> list[str]:
        """The versions of ``name`` registered here, the current one first."""
        current = self._workflows.get(name)
        older = sorted(v for n, v in self._previous if n == name)
        return ([current.version] if current else []) + older

    def find(self, name: str) -> WorkflowDef | None:
        return self.get(name) if name in self else None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def __contains__(self, name: object) -> bool:
        return name in self._workflows
