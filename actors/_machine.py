"""The replay machine: a run's workflow code driven by its journal.

The machine is a pure function of the events fed to it. Live execution and
replay differ only in who produces the next event: in replay it comes from the
stored journal; live, the actor journals the machine's next pending command and
feeds the stored event back. After every fed event the code runs until no task
is ready, so a decision is made at the same point in both modes.

Commands get sequence numbers (``seq``) in the order the code issues them.
A command whose ``seq`` is already in the journal is *recorded* and must match
(kind and name); otherwise the run raises ``NondeterminismError`` and parks.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from datetime import datetime
from hashlib import sha256
from typing import Any, NamedTuple

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
    describe,
)
from actors._futures import DFuture, Scheduler, WTask
from schemas import (
    ChildCompleted,
    ChildFailed,
    ChildFailedError,
    ChildStarted,
    EffectCompleted,
    EffectFailed,
    EffectFailedError,
    EffectRequested,
    ErrorCode,
    ErrorInfo,
    EventReceived,
    EventRejected,
    JournalEvent,
    MainspringError,
    MarkerRecorded,
    NondeterminismError,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    TimerStarted,
    WaitMatcher,
    WaitStarted,
    WaitTimedOut,
    WaitTimeoutError,
    check_run_id,
)


class StepFailedError(MainspringError):
    """A local step raised; raised again where the workflow awaits it (live and replay).

    Carries the step's ``error``: a run that lets it escape fails with that error, not
    with this class's name.
    """

    def __init__(self, name: str, error: ErrorInfo) -> None:
        self.name = name
        self.error = error
        super().__init__(f"step {name} failed: {error.type}: {error.message}")


class _Parked(BaseException):
    """Unwinds workflow code after a nondeterminism error (must not be swallowed)."""


_DECISIONS = (
    StepCompleted,
    StepFailed,
    EffectRequested,
    TimerStarted,
    WaitStarted,
    ChildStarted,
    MarkerRecorded,
)


_RESULTS = (
    StepCompleted,
    StepFailed,
    EffectCompleted,
    EffectFailed,
    ChildCompleted,
    ChildFailed,
    TimerFired,
)


def _matches(cmd: Command, ev: JournalEvent) -> bool:
    if isinstance(cmd, StepCmd):
        return isinstance(ev, StepCompleted | StepFailed) and ev.name == cmd.name
    if isinstance(cmd, EffectCmd):
        return isinstance(ev, EffectRequested) and ev.kind == cmd.kind
    if isinstance(cmd, TimerCmd):
        return isinstance(ev, TimerStarted)
    if isinstance(cmd, WaitCmd):
        return isinstance(ev, WaitStarted) and ev.name == cmd.name
    if isinstance(cmd, ChildCmd):
        return isinstance(ev, ChildStarted) and ev.workflow == cmd.workflow
    if isinstance(cmd, MarkerCmd):
        return isinstance(ev, MarkerRecorded) and ev.patch == cmd.patch
    return False


_CALLS = {
    "step.completed": "step",
    "step.failed": "step",
    "effect.requested": "effect",
    "timer.started": "sleep",
    "wait.started": "wait_event",
    "child.started": "child",
    "marker.recorded": "patched",
}


def _describe_event(ev: JournalEvent) -> str:
    """A recorded decision in the words of the ctx call that made it (``step 'x'``)."""
    tag = str(type(ev).__struct_config__.tag)
    name = getattr(ev, "name", None) or getattr(ev, "kind", None) or getattr(ev, "patch", None)
    name = name or getattr(ev, "workflow", None)
    call = _CALLS.get(tag, tag)
    return f"{call} '{name}'" if name else call


def decode_payload(payload: msgspec.Raw, type_: Any) -> Any:
    """Decode an event payload for a wait: a msgspec type, or a validator object
    with ``validate_json(bytes)`` (JSON Schema waits); raises with the reason."""
    validate = getattr(type_, "validate_json", None)
    if validate is not None:
        return validate(bytes(payload))
    return msgspec.json.decode(payload, type=type_)


def child_run_id(parent: str, seq: int) -> str:
    candidate = f"{parent}-{seq}"
    if len(candidate) <= 128:
        return candidate
    return "c" + sha256(f"{parent}/{seq}".encode()).hexdigest()[:40]


class Admission(NamedTuple):
    """A resume event judged on arrival (``Machine.admit``)."""

    not_json: str | None = None
    """why the payload is not JSON at all: never journaled"""
    refused: str | None = None
    """why the wait it would go to now refuses it (journaled, then rejected by the
    code, until the run's rejection bound; beyond it refused on arrival)"""


class _Wait:
    __slots__ = ("future", "name", "seq", "type")

    def __init__(self, seq: int, name: str, type_: Any, future: DFuture[Any]) -> None:
        self.seq, self.name, self.type, self.future = seq, name, type_, future


class Machine:
    """Drives one run's workflow coroutine against its journal."""

    def __init__(self, started: RunStarted, recorded: Iterable[JournalEvent] | None = None) -> None:
        self.run_id = started.run_id
        self.started = started
        self.now: datetime = started.at
        self.rng = random.Random(sha256(started.run_id.encode()).digest())
        self.sched = Scheduler()
        self.main: WTask[Any] | None = None
        self.seq = 0
        # journaled decisions by seq (the whole loaded journal, plus live appends)
        self.recorded: dict[int, JournalEvent] = {}
        self.recorded_rejections: set[str] = set()
        self.pending: deque[Command] = deque()
        self.futures: dict[int, tuple[DFuture[Any], Any, str]] = {}
        self.resolved: set[int] = set()
        self.early_results: dict[int, JournalEvent] = {}
        self.waits: WaitMatcher[_Wait, EventReceived] = WaitMatcher()
        self.waits_by_seq: dict[int, _Wait] = {}
        self._admitted: tuple[str, int, Any] | None = None
        """(event id, wait seq, value) of the event ``admit`` decoded for its wait"""
        self.seen_events: set[str] = set()
        self.rejected: set[str] = set()
        self.timer_seqs: set[int] = set()
        self.children: dict[int, str] = {}
        self.nondeterminism: NondeterminismError | None = None
        for ev in recorded or ():
            self._index(ev)

    # ----------------------------------------------------------------- indexing
    def _index(self, ev: JournalEvent) -> None:
        if isinstance(ev, _DECISIONS):
            self.recorded[ev.seq] = ev
        elif isinstance(ev, EventRejected):
            self.recorded_rejections.add(ev.event_id)

    # ----------------------------------------------------------------- start/feed
    def start(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.main = self.sched.spawn(coro)
        self._run()

    def feed(self, ev: JournalEvent) -> None:
        """Apply one journal event (replayed or just appended), then run the code."""
        self._index(ev)
        self.now = ev.at
        if isinstance(ev, _DECISIONS):
            self._drop_pending(ev.seq)
        if isinstance(ev, _RESULTS):
            self._resolve(ev)
        elif isinstance(ev, WaitTimedOut):
            self._time_out(ev)
        elif isinstance(ev, EventReceived):
            self.seen_events.add(ev.event_id)
            self.waits.arrive(ev.name, ev)
            self.waits.match(ev.name, self._take)
        elif isinstance(ev, EventRejected):
            self._drop_reject(ev.event_id)
            if ev.seq == 0:  # unreadable payload: rejected on arrival, no wait involved
                self.rejected.add(ev.event_id)
            elif ev.event_id not in self.rejected and self.nondeterminism is None:
                self.nondeterminism = NondeterminismError(
                    self.run_id, ev.n, ev.seq, f"event {ev.event_id} rejected", "accepted it"
                )
        self._run()

    def _run(self) -> None:
        with contextlib.suppress(_Parked):
            self.sched.run_until_quiescent()

    def _drop_pending(self, seq: int) -> None:
        head = self.pending[0] if self.pending else None
        if head is not None and not isinstance(head, RejectFact) and head.seq == seq:
            self.pending.popleft()
            return
        for cmd in list(self.pending):
            if not isinstance(cmd, RejectFact) and cmd.seq == seq:
                self.pending.remove(cmd)

    def _drop_reject(self, event_id: str) -> None:
        for cmd in list(self.pending):
            if isinstance(cmd, RejectFact) and cmd.event_id == event_id:
                self.pending.remove(cmd)

    # ----------------------------------------------------------------- results
    def _resolve(self, ev: JournalEvent) -> None:
        seq: int = ev.seq  # type: ignore[union-attr]
        entry = self.futures.get(seq)
        if entry is None:
            self.early_results[seq] = ev
            return
        self.resolved.add(seq)
        fut, result_type, label = entry
        try:
            if isinstance(ev, StepCompleted | EffectCompleted):
                fut.set_result(msgspec.json.decode(ev.result, type=result_type))
            elif isinstance(ev, ChildCompleted):
                fut.set_result(msgspec.json.decode(ev.output, type=result_type))
            elif isinstance(ev, TimerFired):
                fut.set_result(None)
            elif isinstance(ev, StepFailed):
                fut.set_exception(StepFailedError(ev.name, ev.error))
            elif isinstance(ev, EffectFailed):
                fut.set_exception(EffectFailedError(label, ev.error, ev.attempts))
            elif isinstance(ev, ChildFailed):
                fut.set_exception(ChildFailedError(ev.child_run_id, ev.error))
        except msgspec.ValidationError as e:
            fut.set_exception(
                EffectFailedError(
                    label,
                    ErrorInfo(type=ErrorCode.RESULT_INVALID, message=f"{label} result: {e}"),
                    1,
                )
            )

    def _time_out(self, ev: WaitTimedOut) -> None:
        wait = self.waits_by_seq.pop(ev.seq, None)
        self.resolved.add(ev.seq)
        if wait is None or wait.future.done():
            return
        self.waits.close(wait.name, wait)
        wait.future.set_exception(WaitTimeoutError(wait.name))

    def _take(self, wait: _Wait, ev: EventReceived) -> bool:
        """The wait takes the event (True), or refuses it: a rejection to journal."""
        admitted, self._admitted = self._admitted, None
        try:
            if admitted is not None and admitted[:2] == (ev.event_id, wait.seq):
                value = admitted[2]  # decoded on arrival, for this very wait
            else:
                value = decode_payload(ev.payload, wait.type)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as e:
            self.rejected.add(ev.event_id)
            if ev.event_id not in self.recorded_rejections:
                self.pending.append(RejectFact(ev.event_id, ev.name, wait.seq, str(e)))
            return False
        self.waits_by_seq.pop(wait.seq, None)
        self.resolved.add(wait.seq)
        wait.future.set_result(value)
        return True

    def admit(self, event_id: str, name: str, payload: bytes) -> Admission:
        """Judge a resume event on arrival, decoding its payload once: for the wait it
        would go to now (kept, so that wait takes the value without decoding again),
        or, with no wait open for it, as plain JSON (a later wait decodes it then)."""
        wait = self.waits.next_wait(name)
        try:
            if wait is None:
                msgspec.json.decode(payload)
                return Admission()
            value = decode_payload(msgspec.Raw(payload), wait.type)
        except msgspec.ValidationError as e:
            return Admission(refused=str(e))
        except msgspec.DecodeError as e:
            return Admission(not_json=str(e))
        except ValueError as e:  # a JSON Schema wait's verdict
            return Admission(refused=str(e))
        self._admitted = (event_id, wait.seq, value)
        return Admission()

    # ----------------------------------------------------------------- commands
    def issue(self, cmd: Command, result_type: Any = Any, label: str = "") -> DFuture[Any]:
        """Called by ctx.* from workflow code: record or match a decision."""
        if self.nondeterminism is not None:
            raise _Parked
        fut: DFuture[Any] = DFuture()
        assert not isinstance(cmd, RejectFact)
        seq = cmd.seq
        recorded = self.recorded.get(seq)
        if recorded is not None:
            if not _matches(cmd, recorded):
                self._nondeterministic(recorded.n, seq, _describe_event(recorded), describe(cmd))
        else:
            self.pending.append(cmd)
        self.futures[seq] = (fut, result_type, label)
        if isinstance(cmd, WaitCmd):
            wait = _Wait(seq, cmd.name, result_type, fut)
            self.waits.open(cmd.name, wait)
            self.waits_by_seq[seq] = wait
            self.waits.match(cmd.name, self._take)
        elif isinstance(cmd, TimerCmd):
            self.timer_seqs.add(seq)
        elif isinstance(cmd, ChildCmd):
            self.children[seq] = cmd.child_run_id
        elif isinstance(cmd, MarkerCmd):
            fut.set_result(True)
        early = self.early_results.pop(seq, None)
        if early is not None:
            self._resolve(early)
        return fut

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def patched(self, patch: str) -> bool:
        """True on the new code path. Old runs that passed this point without the
        marker keep returning False here; new runs record a marker."""
        nxt = self.seq + 1
        recorded = self.recorded.get(nxt)
        if isinstance(recorded, MarkerRecorded) and recorded.patch == patch:
            self.seq = nxt
            self.issue(MarkerCmd(nxt, patch))
            return True
        if self.in_recorded_region():
            return False
        self.seq = nxt
        self.issue(MarkerCmd(nxt, patch))
        return True

    def in_recorded_region(self) -> bool:
        return any(seq > self.seq for seq in self.recorded)

    def _nondeterministic(self, n: int | None, seq: int, recorded: str, now: str) -> None:
        if self.nondeterminism is None:
            self.nondeterminism = NondeterminismError(self.run_id, n, seq, recorded, now)
        raise _Parked

    def check_replay_complete(self) -> None:
        """After replaying a whole journal: every recorded decision must have been re-issued."""
        if self.nondeterminism is not None:
            return
        missing = sorted(seq for seq in self.recorded if seq not in self.futures)
        if missing:
            ev = self.recorded[missing[0]]
            self.nondeterminism = NondeterminismError(
                self.run_id,
                ev.n,
                missing[0],
                _describe_event(ev),
                "nothing there (the code ended or now waits elsewhere)",
            )

    # ----------------------------------------------------------------- queries
    def is_open_timer(self, seq: int) -> bool:
        return seq in self.timer_seqs and seq not in self.resolved

    def is_open_wait(self, seq: int) -> bool:
        return seq in self.waits_by_seq

    def is_resolved(self, seq: int) -> bool:
        return seq in self.resolved

    def open_children(self) -> list[str]:
        return [rid for seq, rid in self.children.items() if seq not in self.resolved]

    def close(self) -> None:
        self.sched.close()


def new_child_id(parent: str, seq: int, given: str | None) -> str:
    return check_run_id(given) if given else child_run_id(parent, seq)


def seeded_uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)
