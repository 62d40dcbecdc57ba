"""Inbox messages become journal facts: effect results, timer firings, child outcomes."""

from __future__ import annotations

from dataclasses import dataclass

from actors._machine import Machine
from schemas import (
    ChildCompleted,
    ChildDone,
    ChildFailed,
    EffectCompleted,
    EffectFailed,
    EffectRequested,
    EffectResult,
    ErrorCode,
    ErrorInfo,
    InboxUnion,
    JournalEvent,
    RunFailed,
    RunStarted,
    TimerFire,
    TimerFired,
    WaitTimedOut,
)

DEADLINE_SEQ = 0  # the timer of a run's wall-time limit (commands start at 1)


@dataclass(frozen=True, slots=True)
class Ignored:
    """An inbox message that changes nothing in the run, and why (a duplicate, a
    timer of a wait already satisfied). Only final when judged against a run
    freshly loaded from its journal: memory may be behind it."""

    reason: str


def limit_failure(run_id: str, kind: str, message: str) -> RunFailed:
    """The terminal event of a run that crossed one of its limits."""
    return RunFailed(run_id=run_id, cause="actor", error=ErrorInfo(type=kind, message=message))


def fact_for(
    message: InboxUnion, machine: Machine, started: RunStarted, cause: str
) -> JournalEvent | Ignored:
    """The journal fact an inbox message becomes, or why it changes nothing."""
    m = machine
    rid = started.run_id
    if isinstance(message, EffectResult):
        if m.is_resolved(message.seq):
            return Ignored(f"effect {message.seq} already has its result (a duplicate)")
        if message.seq not in m.futures:
            return Ignored(f"the run has no outstanding effect {message.seq}")
        req = m.recorded.get(message.seq)
        if not isinstance(req, EffectRequested) or req.effect_id != message.effect_id:
            return Ignored(f"the run requested no effect {message.effect_id!r} at {message.seq}")
        if message.ok:
            return EffectCompleted(
                run_id=rid,
                cause=cause,
                seq=message.seq,
                effect_id=message.effect_id,
                result=message.result,
                attempts=message.attempts,
            )
        return EffectFailed(
            run_id=rid,
            cause=cause,
            seq=message.seq,
            effect_id=message.effect_id,
            error=message.error or ErrorInfo(type=ErrorCode.EFFECT_FAILED, message=""),
            attempts=message.attempts,
        )
    if isinstance(message, TimerFire):
        if message.seq == DEADLINE_SEQ:
            return limit_failure(
                rid,
                ErrorCode.LIMIT_WALL_TIME,
                f"run exceeded its wall-time limit of {started.max_duration_s:g}s",
            )
        if m.is_open_timer(message.seq):
            return TimerFired(run_id=rid, cause=cause, seq=message.seq)
        wait = m.waits_by_seq.get(message.seq)
        if wait is not None:
            return WaitTimedOut(run_id=rid, cause=cause, seq=message.seq, name=wait.name)
        return Ignored(f"timer {message.seq} is not running (it fired, or its wait ended)")
    if isinstance(message, ChildDone):
        if message.seq not in m.children:
            return Ignored(f"the run started no child at {message.seq}")
        if m.is_resolved(message.seq):
            return Ignored(f"child {message.child_run_id} already reported (a duplicate)")
        if message.ok:
            return ChildCompleted(
                run_id=rid,
                cause=cause,
                seq=message.seq,
                child_run_id=message.child_run_id,
                output=message.output,
            )
        return ChildFailed(
            run_id=rid,
            cause=cause,
            seq=message.seq,
            child_run_id=message.child_run_id,
            error=message.error or ErrorInfo(type=ErrorCode.CHILD_FAILED, message=""),
        )
    return Ignored(f"{type(message).__name__} is not an input of a running run")
