"""``RunView``: what a run is doing, folded from its journal events.

One pure fold, used by the client (``status``) and the Postgres projector, so
both agree on what "waiting for approval" means. Waits and events are paired by
the replay machine's own rule (``WaitMatcher``); an ``event.rejected`` reopens the
wait the event was tried on. A run that ends closes the
waits it still had open: ``cancelled`` when the run was cancelled, ``abandoned``
when it failed or completed without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import msgspec

from schemas._common import ErrorInfo
from schemas._journal import (
    NULL,
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    EffectCompleted,
    EffectFailed,
    EffectRequested,
    EventReceived,
    EventRejected,
    JournalEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunParked,
    RunStarted,
    TimerFired,
    TimerStarted,
    WaitStarted,
    WaitTimedOut,
)
from schemas._states import EffectState, RunState, WaitState
from schemas._waits import WaitMatcher

TERMINAL_STATUSES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
_OPEN_STATUSES = (RunState.RUNNING, RunState.WAITING, RunState.PARKED)


@dataclass
class WaitView:
    seq: int
    name: str
    since: datetime
    deadline: datetime | None
    status: WaitState = WaitState.OPEN
    event_id: str | None = None


class _Usage(msgspec.Struct):
    """What a result reports about its cost (any handler may; llm.chat does)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


_usage_decoder = msgspec.json.Decoder(_Usage)


def usage_of(result: msgspec.Raw) -> _Usage:
    try:
        return _usage_decoder.decode(result)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _Usage()


@dataclass
class EffectView:
    seq: int
    effect_id: str
    kind: str
    requested_at: datetime
    status: EffectState = EffectState.REQUESTED
    attempts: int = 0
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def latency_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.requested_at).total_seconds() * 1000


@dataclass
class RunView:
    run_id: str
    workflow: str = ""
    version: str = ""
    status: RunState = RunState.RUNNING
    input: msgspec.Raw = field(default_factory=lambda: NULL)
    output: msgspec.Raw | None = None
    error: ErrorInfo | None = None
    parent_run_id: str | None = None
    depth: int = 0
    events: int = 0
    started_at: datetime | None = None
    updated_at: datetime | None = None
    ended_at: datetime | None = None
    head_hash: bytes = b""
    waits: dict[int, WaitView] = field(default_factory=dict)
    effects: dict[int, EffectView] = field(default_factory=dict)
    children: dict[int, str] = field(default_factory=dict)
    timers: dict[int, datetime] = field(default_factory=dict)
    """open timers (``ctx.sleep``): seq -> when due"""
    deadline: datetime | None = None
    """when the run's wall-time limit falls due (None: no limit)"""
    _matcher: WaitMatcher[WaitView, str] = field(default_factory=WaitMatcher)
    """open waits and unmatched event ids, paired by the kernel's rule"""
    changed_waits: set[int] = field(default_factory=set)
    changed_effects: set[int] = field(default_factory=set)

    @property
    def cost_usd(self) -> float:
        return round(sum(fx.cost_usd for fx in self.effects.values()), 6)

    @property
    def tokens(self) -> int:
        return sum(fx.input_tokens + fx.output_tokens for fx in self.effects.values())

    @property
    def waiting_for(self) -> list[str]:
        return [w.name for w in self.waits.values() if w.status == WaitState.OPEN]

    @property
    def open_waits(self) -> list[WaitView]:
        return [w for w in self.waits.values() if w.status == WaitState.OPEN]

    def apply(self, ev: JournalEvent, link: bytes = b"") -> None:
        """Fold one event (in journal order) into the view."""
        self.events = ev.n
        self.updated_at = ev.at
        if link:
            self.head_hash = link
        if isinstance(ev, RunStarted):
            self.workflow, self.version, self.input = ev.workflow, ev.version, ev.input
            self.parent_run_id = ev.parent.run_id if ev.parent else None
            self.depth, self.started_at = ev.depth, ev.at
            if ev.max_duration_s > 0:
                self.deadline = ev.at + timedelta(seconds=ev.max_duration_s)
        elif isinstance(ev, RunCompleted):
            self.status, self.output, self.ended_at = RunState.COMPLETED, ev.output, ev.at
            self._close_waits(WaitState.ABANDONED)
        elif isinstance(ev, RunFailed):
            self.status, self.error, self.ended_at = RunState.FAILED, ev.error, ev.at
            self._close_waits(WaitState.ABANDONED)
        elif isinstance(ev, RunCancelled):
            self.status, self.ended_at = RunState.CANCELLED, ev.at
            self._close_waits(WaitState.CANCELLED)
        elif isinstance(ev, RunParked):
            self.status, self.error = RunState.PARKED, ev.error
            return
        elif isinstance(ev, EffectRequested):
            self.effects[ev.seq] = EffectView(ev.seq, ev.effect_id, ev.kind, ev.at)
            self.changed_effects.add(ev.seq)
        elif isinstance(ev, EffectCompleted | EffectFailed):
            fx = self.effects.get(ev.seq)
            if fx is not None:
                fx.status = (
                    EffectState.COMPLETED if isinstance(ev, EffectCompleted) else EffectState.FAILED
                )
                fx.attempts, fx.finished_at = ev.attempts, ev.at
                fx.error = ev.error if isinstance(ev, EffectFailed) else None
                if isinstance(ev, EffectCompleted):
                    usage = usage_of(ev.result)
                    fx.input_tokens, fx.output_tokens = usage.input_tokens, usage.output_tokens
                    fx.cost_usd = usage.cost_usd
                self.changed_effects.add(ev.seq)
        elif isinstance(ev, TimerStarted):
            self.timers[ev.seq] = ev.fire_at
        elif isinstance(ev, TimerFired):
            self.timers.pop(ev.seq, None)
        elif isinstance(ev, ChildStarted):
            self.children[ev.seq] = ev.child_run_id
        elif isinstance(ev, ChildCompleted | ChildFailed):
            self.children.pop(ev.seq, None)
        elif isinstance(ev, WaitStarted):
            opened = self.waits[ev.seq] = WaitView(ev.seq, ev.name, ev.at, ev.deadline)
            self.changed_waits.add(ev.seq)
            self._matcher.open(ev.name, opened)
            self._matcher.match(ev.name, self._satisfy)
        elif isinstance(ev, WaitTimedOut):
            wait = self.waits.get(ev.seq)
            if wait is not None and wait.status == WaitState.OPEN:
                wait.status = WaitState.TIMED_OUT
                self.changed_waits.add(ev.seq)
                self._matcher.close(wait.name, wait)
        elif isinstance(ev, EventReceived):
            self._matcher.arrive(ev.name, ev.event_id)
            self._matcher.match(ev.name, self._satisfy)
        elif isinstance(ev, EventRejected):
            self._reject(ev)
        if self.status in _OPEN_STATUSES and self.ended_at is None:
            self.status = RunState.WAITING if self.waiting_for else RunState.RUNNING

    def stall(self, *, now: datetime, inbox_pending: int, grace: timedelta) -> str | None:
        """Why this run looks stuck (None: it is not), for ``mainspring runs --stalled``:
        a timer overdue by more than ``grace``, or nothing outstanding (no open wait,
        timer, effect or child) with no input pending in its inbox."""
        if self.ended_at is not None:
            return None
        if self.status == RunState.PARKED:
            why = self.error.message if self.error else "its code and journal disagree"
            return f"parked: {why}; deploy code that replays it, then call client.wake()"
        due = [*self.timers.values(), *(w.deadline for w in self.open_waits if w.deadline)]
        if self.deadline is not None:
            due.append(self.deadline)
        overdue = [t for t in due if t < now - grace]
        if overdue:
            first = min(overdue)
            late = (
                f"was due at {first:%Y-%m-%d %H:%M:%S} ({(now - first).total_seconds():.0f}s ago)"
            )
            if inbox_pending:
                return (
                    f"a timer {late}; {inbox_pending} input(s) wait in its inbox: is a worker "
                    "consuming its partition?"
                )
            return f"a timer {late} and has not fired"
        busy = self.open_waits or self.timers or self.children
        if busy or any(fx.status == EffectState.REQUESTED for fx in self.effects.values()):
            return None
        if inbox_pending:
            return None
        return (
            "waits on nothing (no open wait, timer, effect or child run) and no input is "
            "pending in its inbox: nothing will wake it"
        )

    def _close_waits(self, status: WaitState) -> None:
        """The run ended: nothing will satisfy its open waits any more."""
        for wait in self.waits.values():
            if wait.status == WaitState.OPEN:
                wait.status = status
                self.changed_waits.add(wait.seq)
                self._matcher.close(wait.name, wait)

    def _satisfy(self, wait: WaitView, event_id: str) -> bool:
        """Provisionally: an ``event.rejected`` naming this pair reopens the wait."""
        wait.status, wait.event_id = WaitState.SATISFIED, event_id
        self.changed_waits.add(wait.seq)
        return True

    def _reject(self, ev: EventRejected) -> None:
        wait = self.waits.get(ev.seq)
        if wait is not None and wait.event_id == ev.event_id:
            wait.status, wait.event_id = WaitState.OPEN, None
            self.changed_waits.add(wait.seq)
            self._matcher.reopen(wait.name, wait)
            self._matcher.match(wait.name, self._satisfy)

    def take_changes(self) -> tuple[list[WaitView], list[EffectView]]:
        """Waits and effects changed since the last call (for incremental upserts)."""
        waits = [self.waits[s] for s in sorted(self.changed_waits)]
        effects = [self.effects[s] for s in sorted(self.changed_effects)]
        self.changed_waits.clear()
        self.changed_effects.clear()
        return waits, effects


def fold(events: list[JournalEvent]) -> RunView:
    """The view of a whole journal."""
    if not events:
        raise ValueError("a run view needs at least its run.started event")
    view = RunView(events[0].run_id)
    for ev in events:
        view.apply(ev)
    return view
