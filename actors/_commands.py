"""Commands: decisions the workflow code made that the actor has not journaled yet."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas import RetryPolicy


@dataclass
class StepCmd:
    seq: int
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EffectCmd:
    seq: int
    kind: str
    payload: bytes
    retry: RetryPolicy
    timeout_s: float
    at_most_once: bool


@dataclass
class TimerCmd:
    seq: int
    fire_at: datetime


@dataclass
class WaitCmd:
    seq: int
    name: str
    deadline: datetime | None
    schema: bytes | None = None


@dataclass
class ChildCmd:
    seq: int
    child_run_id: str
    workflow: str
    input: bytes


@dataclass
class MarkerCmd:
    seq: int
    patch: str


@dataclass
class RejectFact:
    """Not a decision: a received event failed validation for the wait at ``seq``."""

    event_id: str
    name: str
    seq: int
    reason: str


Command = StepCmd | EffectCmd | TimerCmd | WaitCmd | ChildCmd | MarkerCmd | RejectFact


def describe(cmd: Command) -> str:
    """Human description used in nondeterminism errors."""
    if isinstance(cmd, StepCmd):
        return f"step '{cmd.name}'"
    if isinstance(cmd, EffectCmd):
        return f"effect '{cmd.kind}'"
    if isinstance(cmd, TimerCmd):
        return "sleep"
    if isinstance(cmd, WaitCmd):
        return f"wait_event '{cmd.name}'"
    if isinstance(cmd, ChildCmd):
        return f"child '{cmd.workflow}'"
    if isinstance(cmd, MarkerCmd):
        return f"patched '{cmd.patch}'"
    return f"reject event {cmd.event_id}"
