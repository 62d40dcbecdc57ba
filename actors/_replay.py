"""Replay: a run's recorded journal fed into today's workflow code.

There is one implementation, ``Replayer``, for everyone who replays. A worker that
does not hold a run in memory rebuilds it with ``resume`` and continues it live.
``check`` gives a verdict instead, for ``mainspring replay`` and for users' CI: a run
is *compatible* when every decision the code makes matches its journal
(``ctx.patched`` markers honoured) and the code ends where the journal ended.
Replaying never touches the world: no step runs again, no effect is requested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from nats.aio.client import Client as NATS

from actors._commands import RejectFact, describe
from actors._context import Context
from actors._machine import Machine
from actors._registry import Registry
from schemas import (
    TERMINAL_EVENTS,
    ErrorCode,
    JournalCorrupt,
    JournalEvent,
    RunCompleted,
    RunFailed,
    RunNotFound,
    RunStarted,
    WorkflowNotFound,
    check_run_id,
    event_type,
)
from streams import Subjects, open_journal


@dataclass(frozen=True)
class Divergence:
    """Where replayed code first left its journal."""

    n: int | None
    """position of the journal event the code disagrees with"""
    seq: int
    """the code's decision number (command #seq)"""
    recorded: str
    """what the journal says, e.g. ``step 'prepare'`` or ``run.completed``"""
    now: str
    """what the code did instead, e.g. ``effect 'llm.mock'``"""


@dataclass(frozen=True)
class ReplayResult:
    """The verdict on one run: ``ok`` when today's code is compatible with its journal;
    otherwise ``problem`` says why, and ``divergence`` where the code and the journal
    first disagree (None when the code could not start: unknown workflow, input that
    no longer fits its type)."""

    run_id: str
    workflow: str
    events: int
    ok: bool
    problem: str = ""
    divergence: Divergence | None = None


class Replayer:
    """Replays recorded journals through a registry's workflow code.

    ``check`` judges one journal; ``check_run`` and ``check_all`` read journals from a
    NATS server first. ``resume`` leaves the replayed code suspended where its journal
    ends, for a worker to continue live. Declarative runs replay through
    ``flows.flow_registry(registry)``, against the document they recorded.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def check(self, events: Sequence[JournalEvent]) -> ReplayResult:
        """The verdict on one run's events (``run.started`` first), as recorded."""
        first = _started(events)
        last = events[-1]
        judged = _Judged(first.run_id, first.workflow, len(events))
        try:
            machine = self.resume(events)
        except WorkflowNotFound as e:
            return judged.fail(str(e))
        except msgspec.ValidationError as e:
            if isinstance(last, RunFailed) and last.error.type == ErrorCode.INPUT_INVALID:
                return judged.good()  # refused at the start then, refused now: compatible
            return judged.fail(f"the recorded input no longer fits the workflow's input type: {e}")
        try:
            error = machine.nondeterminism
            if error is not None:
                return judged.fail(
                    str(error), Divergence(error.n, error.seq, error.recorded, error.now)
                )
            main = machine.main
            ended = isinstance(last, RunCompleted) or (
                isinstance(last, RunFailed) and not last.error.type.startswith("limit.")
            )
            if ended and (main is None or not main.done()):
                pending = [c for c in machine.pending if not isinstance(c, RejectFact)]
                return judged.fail(
                    f"the journal ends with {event_type(last)} but the code "
                    f"now continues ({len(machine.pending)} more decision(s) pending)",
                    Divergence(
                        last.n,
                        pending[0].seq if pending else machine.seq,
                        event_type(last),
                        describe(pending[0]) if pending else "no end (it still awaits a result)",
                    ),
                )
            return judged.good()
        finally:
            machine.close()

    async def check_run(
        self, nc: NATS, run_id: str, *, subjects: Subjects | None = None
    ) -> ReplayResult:
        """The verdict on one run whose journal a NATS server holds (``RunNotFound``
        when it holds none)."""
        journal = open_journal(nc, subjects or Subjects())
        stored = await journal.load(check_run_id(run_id))
        if not stored:
            raise RunNotFound(f"no journal for run {run_id!r}")
        return self.check([s.event for s in stored])

    async def check_all(
        self, nc: NATS, *, subjects: Subjects | None = None, workflow: str | None = None
    ) -> list[ReplayResult]:
        """The verdicts on every run a NATS server holds (only ``workflow``'s when given),
        in run-id order."""
        journal = open_journal(nc, subjects or Subjects())
        results = []
        for run_id in await journal.run_ids():
            events = [s.event for s in await journal.load(run_id)]
            if events and (workflow is None or _started(events).workflow == workflow):
                results.append(self.check(events))
        return results

    def resume(self, events: Sequence[JournalEvent]) -> Machine:
        """The run's code replayed through ``events`` (up to a terminal event) and
        suspended where they end; the caller continues it live and closes it.

        A divergence does not raise: it is left in ``machine.nondeterminism`` (the worker
        parks the run). Raises ``WorkflowNotFound`` when the registry lacks the run's
        workflow, ``msgspec.ValidationError`` when the recorded input no longer fits.
        """
        first = _started(events)
        wf = self.registry.for_run(first.workflow, first.version)
        value = msgspec.json.decode(first.input, type=wf.input_type)
        machine = Machine(first, events)
        try:
            machine.start(wf.fn(Context(machine), value))
            for ev in events[1:]:
                if isinstance(ev, TERMINAL_EVENTS):
                    break
                machine.feed(ev)
            machine.check_replay_complete()
        except BaseException:
            machine.close()
            raise
        return machine


def replay_history(events: list[JournalEvent], registry: Registry) -> ReplayResult:
    """``Replayer(registry).check(events)``, under the name it had before ``Replayer``."""
    return Replayer(registry).check(events)


def _started(events: Sequence[JournalEvent]) -> RunStarted:
    first = events[0] if events else None
    if not isinstance(first, RunStarted):
        found = event_type(first) if first is not None else "nothing"
        run_id = first.run_id if first is not None else "?"
        raise JournalCorrupt(run_id, 1, f"a run's journal starts with run.started, not {found}")
    return first


@dataclass
class _Judged:
    run_id: str
    workflow: str
    events: int

    def good(self) -> ReplayResult:
        return ReplayResult(self.run_id, self.workflow, self.events, True)

    def fail(self, problem: str, divergence: Divergence | None = None) -> ReplayResult:
        return ReplayResult(self.run_id, self.workflow, self.events, False, problem, divergence)
