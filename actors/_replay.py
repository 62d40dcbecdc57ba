"""``replay``: re-run today's workflow code against recorded journals.

The versioning safety net for CI: a run is *compatible* when every decision the
code makes matches its journal (``ctx.patched`` markers honoured) and the code
ends where the journal ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from actors._context import Context
from actors._machine import Machine
from actors._registry import Registry
from schemas import (
    TERMINAL_EVENTS,
    ErrorCode,
    JournalEvent,
    RunCompleted,
    RunFailed,
    RunStarted,
    WorkflowNotFound,
)


@dataclass(frozen=True)
class ReplayResult:
    run_id: str
    workflow: str
    events: int
    ok: bool
    problem: str = ""


def replay_history(events: list[JournalEvent], registry: Registry) -> ReplayResult:
    """Replay one run's events through the registered code; never touches the world."""
    first = events[0]
    assert isinstance(first, RunStarted)
    result = _Result(first.run_id, first.workflow, len(events))
    try:
        wf = registry.get(first.workflow)
    except WorkflowNotFound as e:
        return result.fail(str(e))
    try:
        value = msgspec.json.decode(first.input, type=wf.input_type)
    except msgspec.ValidationError as e:
        if isinstance(events[-1], RunFailed) and events[-1].error.type == ErrorCode.INPUT_INVALID:
            return result.good()
        return result.fail(f"the recorded input no longer fits the workflow's input type: {e}")
    machine = Machine(first, events)
    try:
        machine.start(wf.fn(Context(machine), value))
        for ev in events[1:]:
            if isinstance(ev, TERMINAL_EVENTS):
                break
            machine.feed(ev)
        machine.check_replay_complete()
        if machine.nondeterminism is not None:
            return result.fail(str(machine.nondeterminism))
        last = events[-1]
        main = machine.main
        ended = isinstance(last, RunCompleted) or (
            isinstance(last, RunFailed) and not last.error.type.startswith("limit.")
        )
        if ended and (main is None or not main.done()):
            return result.fail(
                f"the journal ends with {type(last).__struct_config__.tag} but the code "
                f"now continues ({len(machine.pending)} more decision(s) pending)"
            )
        return result.good()
    finally:
        machine.close()


@dataclass
class _Result:
    run_id: str
    workflow: str
    events: int

    def good(self) -> ReplayResult:
        return ReplayResult(self.run_id, self.workflow, self.events, True)

    def fail(self, problem: str) -> ReplayResult:
        return ReplayResult(self.run_id, self.workflow, self.events, False, problem)
