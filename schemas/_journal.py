"""Journal events: the facts of a run, in order.

One tagged union (``JournalEvent``) with stable explicit tags. Rules (DESIGN.md §4):
never reuse or rename a tag, only add fields with defaults, never key stored
data to class or module paths. Golden samples in ``tests/golden`` pin the bytes.

Every event carries ``run_id``, its position ``n`` (1, 2, 3, ...), the time the
actor recorded it (``at``) and what caused it (``cause``: ``code`` for a
decision of the workflow code, ``inbox:<seq>`` for an input, ``actor`` for the
runtime's own bookkeeping). The hash-chain link travels beside the stored bytes
in message headers, not inside them.

Payload fields (inputs, outputs, results) are ``msgspec.Raw``: the exact JSON
the producer sent, decoded to a concrete type only where the workflow code asks.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Union

import msgspec

from schemas._common import ErrorInfo, ParentRef, RetryPolicy

NULL = msgspec.Raw(b"null")

UNSTAMPED = datetime(1970, 1, 1, tzinfo=UTC)
"""``at`` of an event not yet appended: the run actor stamps ``n`` and ``at`` when it
appends, so code that builds an event leaves both out."""


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every journal event. ``n`` and ``at`` are stamped at append (0 and
    ``UNSTAMPED`` until then); every stored event carries both."""

    run_id: str
    n: int = 0
    at: datetime = UNSTAMPED
    cause: str = "code"


# --- run lifecycle -------------------------------------------------------------


class RunStarted(Event, frozen=True, kw_only=True, tag="run.started"):
    workflow: str
    version: str
    input: msgspec.Raw = NULL
    parent: ParentRef | None = None
    depth: int = 0
    max_events: int = 10_000
    max_depth: int = 8
    max_cost_usd: float = 0.0
    """cost budget over effect results' ``cost_usd`` (0: none)"""
    max_duration_s: float = 0.0
    """wall-time limit from the start (0: none)"""
    max_rejections: int = 100
    """resume events journaled as rejected before further junk is dead-lettered instead"""


class RunCompleted(Event, frozen=True, kw_only=True, tag="run.completed"):
    output: msgspec.Raw = NULL


class RunFailed(Event, frozen=True, kw_only=True, tag="run.failed"):
    error: ErrorInfo


class RunCancelled(Event, frozen=True, kw_only=True, tag="run.cancelled"):
    reason: str = ""


class RunParked(Event, frozen=True, kw_only=True, tag="run.parked"):
    """Informational: the code no longer matches the journal; the run waits for a fix."""

    error: ErrorInfo


# --- local steps -----------------------------------------------------------------


class StepCompleted(Event, frozen=True, kw_only=True, tag="step.completed"):
    seq: int
    name: str
    result: msgspec.Raw = NULL


class StepFailed(Event, frozen=True, kw_only=True, tag="step.failed"):
    seq: int
    name: str
    error: ErrorInfo


# --- effects ----------------------------------------------------------------------


class EffectRequested(Event, frozen=True, kw_only=True, tag="effect.requested"):
    """Also the wire request handlers consume (subject names the kind)."""

    seq: int
    effect_id: str
    kind: str
    payload: msgspec.Raw = NULL
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float = 60.0
    at_most_once: bool = False
    inbox: str = ""


class EffectCompleted(Event, frozen=True, kw_only=True, tag="effect.completed"):
    seq: int
    effect_id: str
    result: msgspec.Raw = NULL
    attempts: int = 1


class EffectFailed(Event, frozen=True, kw_only=True, tag="effect.failed"):
    seq: int
    effect_id: str
    error: ErrorInfo
    attempts: int = 1


# --- timers and waits ------------------------------------------------------------------


class TimerStarted(Event, frozen=True, kw_only=True, tag="timer.started"):
    seq: int
    fire_at: datetime


class TimerFired(Event, frozen=True, kw_only=True, tag="timer.fired"):
    seq: int


class WaitStarted(Event, frozen=True, kw_only=True, tag="wait.started"):
    seq: int
    name: str
    deadline: datetime | None = None
    schema: msgspec.Raw = NULL
    """JSON Schema of the payload the wait accepts (null when the code declared none)"""


class WaitTimedOut(Event, frozen=True, kw_only=True, tag="wait.timed_out"):
    seq: int
    name: str


class EventReceived(Event, frozen=True, kw_only=True, tag="event.received"):
    """An external event arrived (possibly before any wait asked for it)."""

    name: str
    event_id: str
    payload: msgspec.Raw = NULL


class EventRejected(Event, frozen=True, kw_only=True, tag="event.rejected"):
    """A received event failed validation against the waiting code's type."""

    event_id: str
    name: str
    seq: int
    reason: str


# --- children and markers -----------------------------------------------------------


class ChildStarted(Event, frozen=True, kw_only=True, tag="child.started"):
    seq: int
    child_run_id: str
    workflow: str
    input: msgspec.Raw = NULL


class ChildCompleted(Event, frozen=True, kw_only=True, tag="child.completed"):
    seq: int
    child_run_id: str
    output: msgspec.Raw = NULL


class ChildFailed(Event, frozen=True, kw_only=True, tag="child.failed"):
    seq: int
    child_run_id: str
    error: ErrorInfo


class MarkerRecorded(Event, frozen=True, kw_only=True, tag="marker.recorded"):
    """``ctx.patched(name)`` took the new path at this point of the run."""

    seq: int
    patch: str


JournalEvent = Union[  # noqa: UP007 - msgspec needs a runtime Union of tagged structs
    RunStarted,
    RunCompleted,
    RunFailed,
    RunCancelled,
    RunParked,
    StepCompleted,
    StepFailed,
    EffectRequested,
    EffectCompleted,
    EffectFailed,
    TimerStarted,
    TimerFired,
    WaitStarted,
    WaitTimedOut,
    EventReceived,
    EventRejected,
    ChildStarted,
    ChildCompleted,
    ChildFailed,
    MarkerRecorded,
]

TERMINAL_EVENTS: tuple[type[Event], ...] = (RunCompleted, RunFailed, RunCancelled)

_journal_encoder = msgspec.json.Encoder()
_journal_decoder: msgspec.json.Decoder[JournalEvent] = msgspec.json.Decoder(JournalEvent)


def encode_event(event: JournalEvent) -> bytes:
    """The exact bytes stored in the journal (and hashed)."""
    return _journal_encoder.encode(event)


def decode_event(data: bytes) -> JournalEvent:
    """Strictly decode stored journal bytes; raises ``msgspec.ValidationError``."""
    return _journal_decoder.decode(data)


def event_type(event: Event) -> str:
    """The stable tag of an event (``effect.requested``)."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
