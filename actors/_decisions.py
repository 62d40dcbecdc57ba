"""Decisions of workflow code, carried out and recorded: command -> journal event."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import msgspec

from actors._commands import (
    ChildCmd,
    Command,
    EffectCmd,
    MarkerCmd,
    RejectFact,
    StepCmd,
    TimerCmd,
    WaitCmd,
)
from actors._runtime import EPOCH as _EPOCH
from schemas import (
    NULL,
    ChildStarted,
    EffectRequested,
    ErrorInfo,
    EventRejected,
    JournalEvent,
    MainspringError,
    MarkerRecorded,
    ParentRef,
    PayloadTooLarge,
    RunFailed,
    StartRun,
    StepCompleted,
    StepFailed,
    TimerStarted,
    WaitStarted,
)

if TYPE_CHECKING:
    from actors._actor import RunActor


def error_info(exc: BaseException, default_type: str | None = None) -> ErrorInfo:
    etype = getattr(exc, "type", None) if isinstance(exc, MainspringError) else None
    return ErrorInfo(type=str(etype or default_type or type(exc).__name__), message=str(exc))


async def decision_event(cmd: Command, run: RunActor) -> JournalEvent:
    """Carry out one decision of the code and return the journal event recording it.

    Side publications (timer schedules, child starts) happen here, *before* the event
    is journaled, with deterministic ids, so a crash never loses them.
    """
    rid = run.run_id
    subjects = run.rt.subjects
    if isinstance(cmd, StepCmd):
        try:
            value = cmd.fn(*cmd.args, **cmd.kwargs)
            if inspect.isawaitable(value):
                value = await value
            result = msgspec.json.encode(value)
            run.rt.objects.check_size(len(result), f"the result of step {cmd.name!r}")
        except Exception as exc:  # the step's own failure is a journaled fact
            return StepFailed(
                run_id=rid, n=0, at=_EPOCH, seq=cmd.seq, name=cmd.name, error=error_info(exc)
            )
        return StepCompleted(
            run_id=rid, n=0, at=_EPOCH, seq=cmd.seq, name=cmd.name, result=msgspec.Raw(result)
        )
    if isinstance(cmd, EffectCmd):
        return EffectRequested(
            run_id=rid,
            n=0,
            at=_EPOCH,
            seq=cmd.seq,
            effect_id=f"{rid}.fx.{cmd.seq}",
            kind=cmd.kind,
            payload=msgspec.Raw(cmd.payload),
            retry=cmd.retry,
            timeout_s=cmd.timeout_s,
            at_most_once=cmd.at_most_once,
            inbox=subjects.inbox(rid, "effect.result"),
        )
    if isinstance(cmd, TimerCmd):
        await run.schedule(cmd.seq, cmd.fire_at)
        return TimerStarted(run_id=rid, n=0, at=_EPOCH, seq=cmd.seq, fire_at=cmd.fire_at)
    if isinstance(cmd, WaitCmd):
        if cmd.deadline is not None:
            await run.schedule(cmd.seq, cmd.deadline)
        return WaitStarted(
            run_id=rid,
            n=0,
            at=_EPOCH,
            seq=cmd.seq,
            name=cmd.name,
            deadline=cmd.deadline,
            schema=NULL if cmd.schema is None else msgspec.Raw(cmd.schema),
        )
    if isinstance(cmd, ChildCmd):
        assert run.started is not None
        try:  # checked here: the child's start is sent before the fact is journaled
            run.rt.objects.check_size(len(cmd.input), f"the input of child {cmd.child_run_id}")
        except PayloadTooLarge as e:
            return RunFailed(run_id=rid, n=0, at=_EPOCH, error=e.info)
        depth = run.started.depth + 1
        if depth > run.started.max_depth:
            return RunFailed(
                run_id=rid,
                n=0,
                at=_EPOCH,
                error=ErrorInfo(
                    type="limit.child_depth",
                    message=f"child run {cmd.child_run_id} would be at depth {depth}; "
                    f"the limit is {run.started.max_depth}",
                ),
            )
        start = StartRun(
            run_id=cmd.child_run_id,
            workflow=cmd.workflow,
            input=msgspec.Raw(cmd.input),
            parent=ParentRef(run_id=rid, seq=cmd.seq),
            depth=depth,
        )
        await run.rt.send_inbox(cmd.child_run_id, start, "start", f"start:{cmd.child_run_id}")
        return ChildStarted(
            run_id=rid,
            n=0,
            at=_EPOCH,
            seq=cmd.seq,
            child_run_id=cmd.child_run_id,
            workflow=cmd.workflow,
            input=msgspec.Raw(cmd.input),
        )
    if isinstance(cmd, MarkerCmd):
        return MarkerRecorded(run_id=rid, n=0, at=_EPOCH, seq=cmd.seq, patch=cmd.patch)
    assert isinstance(cmd, RejectFact)
    return EventRejected(
        run_id=rid,
        n=0,
        at=_EPOCH,
        cause="actor",
        event_id=cmd.event_id,
        name=cmd.name,
        seq=cmd.seq,
        reason=cmd.reason,
    )
