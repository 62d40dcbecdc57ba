"""``ctx``: the workflow code's only door to the world."""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import msgspec

from actors._commands import ChildCmd, EffectCmd, StepCmd, TimerCmd, WaitCmd
from actors._futures import DFuture, GatherFuture
from actors._machine import Machine, new_child_id, seeded_uuid
from schemas import (
    ConfigError,
    RetryPolicy,
    check_effect_kind,
    check_event_name,
    check_workflow_name,
)

T = TypeVar("T")


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _encode(value: Any, what: str) -> bytes:
    try:
        return msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as e:
        raise ConfigError(f"{what} is not JSON-serialisable: {e}") from e


def _schema_of(type_: Any) -> bytes | None:
    """The JSON Schema a wait accepts, journaled so clients can show and check it.

    Computed once per type: replay calls every wait of a run's history again.
    """
    if type_ is Any:
        return None
    declared = getattr(type_, "json_schema", None)  # JsonSchema: already a schema
    if declared is not None:
        return msgspec.json.encode(declared)
    try:
        return _schema_cached(type_)
    except TypeError:  # an unhashable type description: compute it each time
        return _schema_uncached(type_)


def _schema_uncached(type_: Any) -> bytes | None:
    try:
        return msgspec.json.encode(msgspec.json.schema(type_))
    except (TypeError, ValueError):
        return None


_schema_cached = functools.lru_cache(maxsize=256)(_schema_uncached)


class JsonSchema:
    """A wait type given as JSON Schema (Draft 2020-12), e.g. from a declarative spec."""

    def __init__(self, schema: dict[str, Any]) -> None:
        from jsonschema import Draft202012Validator

        Draft202012Validator.check_schema(schema)
        self.json_schema = schema
        self._validator = Draft202012Validator(schema)

    def validate_json(self, data: bytes) -> Any:
        value = msgspec.json.decode(data)
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            first = errors[0]
            raise ValueError(f"{first.message} - at `{first.json_path}`")
        return value


class Context:
    """Passed to every workflow as its first argument.

    Every method that talks to the outside world is journaled: on replay the
    recorded result is returned instead of doing the work again. Futures are
    created when you *call* a method, so ``ctx.gather(ctx.effect(...), ...)``
    runs effects in parallel.
    """

    def __init__(self, machine: Machine) -> None:
        self._m = machine

    # --------------------------------------------------------------- identity
    @property
    def run_id(self) -> str:
        return self._m.run_id

    @property
    def workflow(self) -> str:
        return self._m.started.workflow

    @property
    def version(self) -> str:
        return self._m.started.version

    # --------------------------------------------------------------- deterministic values
    def now(self) -> datetime:
        """The time of the journal event being processed (same on replay)."""
        return self._m.now

    def random(self) -> float:
        """A float in [0, 1) from a per-run seeded generator (same on replay)."""
        return self._m.rng.random()

    def uuid(self) -> uuid.UUID:
        """A UUID4 from the per-run seeded generator (same on replay)."""
        return seeded_uuid(self._m.rng)

    def patched(self, name: str) -> bool:
        """True when this run takes the new code path introduced under ``name``.

        Runs that already passed this point with older code get False, so they
        replay the old path; new runs record a marker and get True.
        """
        return self._m.patched(name)

    # --------------------------------------------------------------- journaled work
    @overload
    def step(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        name: str | None = None,
        result_type: Any = Any,
        **kwargs: Any,
    ) -> DFuture[T]: ...

    @overload
    def step(
        self,
        fn: Callable[..., T],
        *args: Any,
        name: str | None = None,
        result_type: Any = Any,
        **kwargs: Any,
    ) -> DFuture[T]: ...

    def step(
        self,
        fn: Callable[..., Any],
        *args: Any,
        name: str | None = None,
        result_type: Any = Any,
        **kwargs: Any,
    ) -> DFuture[Any]:
        """Run a local function once and journal its result (sync or async).

        At-least-once: if the worker dies while the step runs, it runs again.
        """
        label = name or str(getattr(fn, "__name__", "step"))
        seq = self._m.next_seq()
        cmd = StepCmd(seq, label, fn, args, kwargs)
        return self._m.issue(cmd, result_type, label)

    def effect(
        self,
        kind: str,
        payload: Any = None,
        *,
        result_type: Any = Any,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float = 60.0,
        at_most_once: bool = False,
    ) -> DFuture[Any]:
        """Ask the handlers of ``kind`` to do something with side effects.

        The result is journaled when it arrives. ``timeout`` bounds one attempt;
        ``retry`` says how often the handler retries; ``at_most_once`` makes a
        redelivered request (handler died mid-effect) fail as interrupted
        instead of running again.
        """
        check_effect_kind(kind)
        seq = self._m.next_seq()
        cmd = EffectCmd(
            seq,
            kind,
            _encode(payload, f"payload of effect {kind}"),
            retry or RetryPolicy(),
            _seconds(timeout),
            at_most_once,
        )
        return self._m.issue(cmd, result_type, kind)

    def sleep(self, duration: timedelta | float) -> DFuture[None]:
        """A durable timer: survives worker restarts; fires on recovery if due."""
        seq = self._m.next_seq()
        fire_at = self._m.now + timedelta(seconds=_seconds(duration))
        return self._m.issue(TimerCmd(seq, fire_at), None, "sleep")

    @overload
    def wait_event(
        self, name: str, type: type[T], *, timeout: timedelta | float | None = None
    ) -> DFuture[T]: ...

    @overload
    def wait_event(
        self, name: str, type: Any = ..., *, timeout: timedelta | float | None = None
    ) -> DFuture[Any]: ...

    def wait_event(
        self,
        name: str,
        type: Any = Any,
        *,
        timeout: timedelta | float | None = None,
    ) -> DFuture[Any]:
        """Wait for an external event published to ``<prefix>.event.<run_id>.<name>``.

        The payload is validated against ``type``; an invalid one is recorded as
        rejected (with the reason) and the run keeps waiting. Events that arrive
        before the wait are kept. Raises ``WaitTimeoutError`` after ``timeout``.
        """
        check_event_name(name)
        seq = self._m.next_seq()
        deadline = None if timeout is None else self._m.now + timedelta(seconds=_seconds(timeout))
        return self._m.issue(WaitCmd(seq, name, deadline, _schema_of(type)), type, name)

    def child(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        result_type: Any = Any,
    ) -> DFuture[Any]:
        """Start a child run and await its output (``ChildFailedError`` if it fails)."""
        check_workflow_name(workflow)
        seq = self._m.next_seq()
        cmd = ChildCmd(
            seq,
            new_child_id(self._m.run_id, seq, run_id),
            workflow,
            _encode(input, f"input of child {workflow}"),
        )
        return self._m.issue(cmd, result_type, workflow)

    def gather(self, *aws: DFuture[Any] | Coroutine[Any, Any, Any]) -> DFuture[list[Any]]:
        """Await several futures or coroutines concurrently; results in argument order."""
        parts: list[DFuture[Any]] = []
        for aw in aws:
            if isinstance(aw, DFuture):
                parts.append(aw)
            elif inspect.iscoroutine(aw):
                parts.append(self._m.sched.spawn(aw))
            else:
                raise TypeError(
                    f"ctx.gather takes ctx.* futures or coroutines, got {type(aw).__name__}"
                )
        return GatherFuture(parts)
