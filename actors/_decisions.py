"""Decisions of workflow code, carried out and recorded: command -> journal event."""

from __future__ import annotations

import inspect

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
from actors._runtime import Runtime
from schemas import (
    NULL,
    ChildStarted,
    EffectRequested,
    ErrorCode,
    ErrorInfo,
    EventRejected,
    JournalEvent,
    MainspringError,
    MarkerRecorded,
    ParentRef,
    PayloadTooLarge,
    RunFailed,
    RunStarted,
    StartRun,
    StepCompleted,
    StepFailed,
    TimerStarted,
    WaitStarted,
)


def error_info(exc: BaseException, default_type: str | None = None) -> ErrorInfo:
    etype = getattr(exc, "type", None) if isinstance(exc, MainspringError) else None
    return ErrorInfo(type=str(etype or default_type or type(exc).__name__), message=str(exc))


async def decision_event(cmd: Command, rt: Runtime, started: RunStarted) -> JournalEvent:
    """Carry out one decision of the code and return the journal event recording it.

    Side publications (timer schedules, child starts) happen here, *before* the event
    is journaled, with deterministic ids, so a crash never loses them.
    """
    rid = started.run_id
    if isinstance(cmd, StepCmd):
        try:
            value = cmd.fn(*cmd.args, **cmd.kwargs)
            if inspect.isawaitable(value):
                value = await value
            result = msgspec.json.encode(value)
            rt.objects.check_size(len(result), f"the result of step {cmd.name!r}")
        except Exception as exc:  # the step's own failure is a journaled fact
            return StepFailed(run_id=rid, seq=cmd.seq, name=cmd.name, error=error_info(exc))
        return StepCompleted(run_id=rid, seq=cmd.seq, name=cmd.name, result=msgspec.Raw(result))
    if isinstance(cmd, EffectCmd):
        return EffectRequested(
            run_id=rid,
            seq=cmd.seq,
            effect_id=f"{rid}.fx.{cmd.seq}",
            kind=cmd.kind,
            payload=msgspec.Raw(cmd.payload),
            retry=cmd.retry,
            timeout_s=cmd.timeout_s,
            at_most_once=cmd.at_most_once,
            inbox=rt.subjects.inbox(rid, "effect.result"),
        )
    if isinstance(cmd, TimerCmd):
        await rt.schedule(rid, cmd.seq, cmd.fire_at)
        return TimerStarted(run_id=rid, seq=cmd.seq, fire_at=cmd.fire_at)
    if isinstance(cmd, WaitCmd):
        if cmd.deadline is not None:
            await rt.schedule(rid, cmd.seq, cmd.deadline)
        return WaitStarted(
            run_id=rid,
            seq=cmd.seq,
            name=cmd.name,
            deadline=cmd.deadline,
            schema=NULL if cmd.schema is None else msgspec.Raw(cmd.schema),
        )
    if isinstance(cmd, ChildCmd):
        try:  # checked here: the child's start is sent before the fact is journaled
            rt.objects.check_size(len(cmd.input), f"the input of child {cmd.child_run_id}")
        except PayloadTooLarge as e:
            return RunFailed(run_id=rid, error=e.info)
        depth = started.depth + 1
        if depth > started.max_depth:
            return RunFailed(
                run_id=rid,
                error=ErrorInfo(
                    type=ErrorCode.LIMIT_CHILD_DEPTH,
                    message=f"child run {cmd.child_run_id} would be at depth {depth}; "
                    f"the limit is {started.max_depth}",
                ),
            )
        start = StartRun(
            run_id=cmd.child_run_id,
            workflow=cmd.workflow,
            input=msgspec.Raw(cmd.input),
            parent=ParentRef(run_id=rid, seq=cmd.seq),
            depth=depth,
        )
        await rt.send_inbox(start, f"start:{cmd.child_run_id}")
        return ChildStarted(
            run_id=rid,
            seq=cmd.seq,
            child_run_id=cmd.child_run_id,
            workflow=cmd.workflow,
            input=msgspec.Raw(cmd.input),
        )
    if isinstance(cmd, MarkerCmd):
        return MarkerRecorded(run_id=rid, seq=cmd.seq, patch=cmd.patch)
    assert isinstance(cmd, RejectFact)
    return EventRejected(
        run_id=rid,
        cause="actor",
        event_id=cmd.event_id,
        name=cmd.name,
        seq=cmd.seq,
        reason=cmd.reason,
    )
