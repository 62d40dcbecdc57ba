"""The run actor: the single writer of one run's journal.

For each inbox message it (1) loads and replays the run if it is not in memory,
(2) turns the message into a journal fact, (3) journals the decisions the code
makes until it waits again, then the worker acks the message. A crash before
the ack redelivers the message; every step is idempotent against the journal.
Side publications (timer schedules, child starts) happen *before* the journal
fact that records them, with deterministic ids, so a crash never loses them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from datetime import timedelta
from enum import Enum
from typing import NamedTuple

import msgspec
import structlog
from nats.aio.msg import Msg

from actors._decisions import decision_event, error_info
from actors._facts import DEADLINE_SEQ, Ignored, fact_for, limit_failure
from actors._machine import Machine
from actors._payloads import event_body, resolve_input, too_large
from actors._replay import Replayer
from actors._runtime import Runtime, utcnow
from schemas import (
    NULL,
    TERMINAL_EVENTS,
    CancelRun,
    ChildDone,
    EffectCompleted,
    EffectRequested,
    EffectResult,
    ErrorCode,
    ErrorInfo,
    EventReceived,
    EventRejected,
    InboxUnion,
    InvalidNameError,
    JournalConflict,
    JournalCorrupt,
    JournalEvent,
    JournalForged,
    PayloadTooLarge,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunParked,
    RunStarted,
    StartRun,
    TimerFire,
    VersionUnavailable,
    WakeRun,
    WorkflowNotFound,
    check_event_name,
    decode_inbox,
    usage_of,
)
from streams import GENESIS, HDR_MAC, StoredEvent, num_delivered, stream_seq

log = structlog.get_logger()
_MAX_CONFLICT_RETRIES = 5
_START = "." + str(StartRun.__struct_config__.tag)  # an inbox subject's last token


class Outcome(Enum):
    ACK = "ack"
    RETRY = "retry"  # nak with a growing delay: try again later


# Inputs for a run that does not exist yet are kept this many deliveries (backoff
# 0.5 s doubling: about a minute), then moved to the dead-letter stream. Kept
# unacknowledged longer, a flood of them would fill the partition's ack window.
ORPHAN_DELIVERIES = 7


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


class Input(NamedTuple):
    """An inbox message as the worker routed it (its subject parsed once, there)."""

    msg: Msg
    event: str | None
    """the resume event's name (``<prefix>.in.<p>.<run>.ev.<name>``); None for the
    inbox's own kinds (start, effect result, timer, child outcome, cancel, wake)"""


def junk_weight(ev: EventRejected) -> int:
    """Journal events a rejection cost: its own, plus the event.received it refused."""
    return 1 if ev.seq == 0 else 2


class RunActor:
    def __init__(self, run_id: str, rt: Runtime) -> None:
        self.run_id = run_id
        self.rt = rt
        self.mailbox: deque[Input] = deque()
        self.busy = False
        self.retired = False
        self.dead_lettered: dict[str, int] = {}
        """letters of this run per source since it was loaded (for the log's counts)"""
        self.log = log.bind(run_id=run_id)
        self.seen_events = 0
        """the most events this worker has known the run's journal to hold: a journal
        read back shorter lost history (kept across evictions)"""
        self._reset()

    def _reset(self) -> None:
        self.loaded = False
        self.assumed_new = False
        """loaded without reading the journal (a start): true until an append succeeds"""
        self.machine: Machine | None = None
        self.started: RunStarted | None = None
        self.started_seq = 0
        """journal stream sequence of run.started (0: not known)"""
        self.terminal: JournalEvent | None = None
        self.parked = False
        self.unavailable: VersionUnavailable | None = None
        """the run's version of its workflow is not registered here (parked till another
        worker, that has it, takes the run)"""
        self.last_type = ""
        self.n = 0
        self.last_seq = 0
        self.head = GENESIS
        self.cost_usd = 0.0
        self._declared: Collection[str] | None = None
        self._declared_known = False
        self.rejections = 0
        self.fed_live = False
        """the machine has taken an event since it was replayed (forced replay reloads)"""
        self.junk_events = 0
        """journal events spent on rejected input: not counted against max_events"""
        self.legacy_effects: set[int] = set()
        """effects whose request has no tag (legacy): their results may have none either"""

    def evict(self) -> None:
        """Forget everything in memory; the next input replays from the journal."""
        if self.machine is not None:
            self.machine.close()
        self._reset()

    def retire(self) -> None:
        """The worker let this run's partition go: take no more input. An activation
        in progress finishes (its appends are checked against the journal like any
        writer's); queued messages stay unacked for the partition's next owner."""
        self.retired = True
        self.mailbox.clear()
        if not self.busy:
            self.evict()

    # ------------------------------------------------------------------ entry
    async def handle(self, inp: Input) -> Outcome:
        is_start = inp.event is None and inp.msg.subject.endswith(_START)
        for attempt in range(_MAX_CONFLICT_RETRIES):
            try:
                fresh = not self.loaded
                if fresh and attempt == 0 and is_start:
                    # A start is almost always for a run that does not exist yet: append
                    # run.started as if the journal were empty (its OCC check says if it
                    # is not) instead of reading it first. Saves a read per run.
                    self.loaded = self.assumed_new = True
                elif fresh:
                    await self._load_or_park()
                outcome = await self._activate(inp, fresh=fresh)
                if self.assumed_new:  # nothing appended: what we assumed was never checked
                    self.evict()
                return outcome
            except JournalConflict as conflict:
                if not self.assumed_new:  # else: the run existed; read it and go on
                    self.log.info("journal_conflict", detail=str(conflict))
                self.seen_events = max(self.seen_events, self.n)
                self.evict()
                if self.retired:  # another worker owns the run now: leave it to them
                    return Outcome.RETRY
            except JournalCorrupt as corrupt:
                # Never extend a chain that does not verify: hold the run's inputs a few
                # deliveries (a repair may come), then keep each as a dead letter.
                self.log.error(
                    "journal_corrupt",
                    error=str(corrupt),
                    hint=f"run `mainspring audit verify {self.run_id}`; inputs are held",
                )
                self.evict()
                if num_delivered(inp.msg) < self.rt.options.poison_deliveries:
                    return Outcome.RETRY
                return await self._dead_letter(
                    inp.msg,
                    "forged" if isinstance(corrupt, JournalForged) else "corrupt",
                    f"{corrupt}; nothing was written to the run. Once its journal is "
                    "repaired, `mainspring dead-letters reinject` gives this input back",
                )
        return Outcome.RETRY

    # ------------------------------------------------------------------ load / replay
    async def _load_or_park(self) -> None:
        await self._load()
        if self.machine is not None and self.machine.nondeterminism is not None:
            await self._park(self.machine.nondeterminism)
        elif self.unavailable is not None:
            await self._park(self.unavailable, ErrorCode.VERSION_UNAVAILABLE)

    async def _load(self) -> None:
        events = await self.rt.journal.load(self.run_id)
        if len(events) < self.seen_events:
            raise JournalCorrupt(
                self.run_id,
                len(events) + 1,
                f"history vanished: the journal holds {len(events)} events where this "
                f"worker saw {self.seen_events} (the stream deleted, or restored from an "
                "older copy)",
            )
        self.loaded = True
        if not events:
            return
        first = events[0].event
        assert isinstance(first, RunStarted), f"run {self.run_id} journal starts with {first}"
        for e in events:
            if isinstance(e.event, EffectCompleted) and first.max_cost_usd:
                self.cost_usd += usage_of(e.event.result).cost_usd
            elif isinstance(e.event, EventRejected):
                self.rejections += 1
                self.junk_events += junk_weight(e.event)
            elif isinstance(e.event, EffectRequested) and e.mac is None:
                self.legacy_effects.add(e.event.seq)
        last = events[-1]
        self.n, self.last_seq, self.head = last.n, last.seq, last.hash
        self.started_seq = events[0].seq
        self.last_type = type(last.event).__struct_config__.tag  # type: ignore[assignment]
        self.started = first
        if isinstance(last.event, TERMINAL_EVENTS):
            self.terminal = last.event
            return
        self._replay(events)

    def _replay(self, events: list[StoredEvent]) -> None:
        try:
            self.machine = Replayer(self.rt.registry).resume([e.event for e in events])
        except VersionUnavailable as e:  # a deploy in progress: another worker has it
            self.unavailable = e
            self.parked = True
        except WorkflowNotFound as e:
            self.log.error("workflow_not_registered", error=str(e))
            self.parked = True
        except msgspec.ValidationError:
            pass  # the start path journaled run.failed(input.invalid)

    # ------------------------------------------------------------------ activation
    async def _activate(self, inp: Input, *, fresh: bool) -> Outcome:
        msg = inp.msg
        if inp.event is not None:
            return await self._on_event(msg, inp.event)
        try:
            message = decode_inbox(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            return await self._dead_letter(
                msg, "inbox", f"not a Mainspring inbox message ({msg.subject}): {e}"
            )
        message = await resolve_input(self.rt.objects, message)  # payloads sent by reference
        if isinstance(message, StartRun):
            return await self._on_start(msg, message)
        if self.assumed_new:  # not a start after all (on a start subject): read the journal
            self.evict()
            await self._load_or_park()
            return await self._activate(inp, fresh=True)
        if self.started is None:
            if isinstance(message, CancelRun):
                return Outcome.ACK
            return await self._orphan(msg, type(message).__name__)
        if self.terminal is not None:
            self._ignored(msg, type(message).__name__, f"the run has ended ({self.last_type})")
            await self._after_terminal()
            return Outcome.ACK
        if isinstance(message, CancelRun):
            await self._append(
                RunCancelled(
                    run_id=self.run_id,
                    reason=message.reason,
                    cause=f"inbox:{stream_seq(msg)}",
                )
            )
            return Outcome.ACK
        if isinstance(message, WakeRun):
            if self.parked:
                self.evict()
                await self._load()
            if self.parked or self.machine is None:
                return Outcome.ACK
            await self._advance()
            return Outcome.ACK
        if self.parked or self.machine is None:
            return Outcome.RETRY
        if fresh and self.machine.pending:
            # Decisions the code made before a crash come before anything new: a
            # timer's firing may have overtaken the journaling of its start.
            await self._advance()
            if self.terminal is not None or self.machine is None:
                return await self._activate(inp, fresh=True)
        forged = self._forged(msg, message)
        if forged is not None:
            return await self._dead_letter(
                msg, "forged", f"{type(message).__name__} refused: {forged}"
            )
        fact = fact_for(message, self.machine, self.started, f"inbox:{stream_seq(msg)}")
        if isinstance(fact, Ignored):
            if not fresh:
                # Memory may be behind the journal (another worker advanced the run
                # while this one did not own it): judge again against the journal.
                self.evict()
                await self._load_or_park()
                return await self._activate(inp, fresh=True)
            self._ignored(msg, type(message).__name__, fact.reason)
        else:
            await self._append(fact)
        await self._advance()
        return Outcome.ACK

    def _forged(self, msg: Msg, message: InboxUnion) -> str | None:
        """Why an input that only a worker or handler may send is not theirs (None: it
        is, or this deployment has no keys). Starts, cancels and wakes are the clients'
        and not tagged; resume events are anyone's."""
        keys = self.rt.keys
        if keys is None or not isinstance(message, EffectResult | TimerFire | ChildDone):
            return None
        header = msg.headers.get(HDR_MAC) if msg.headers else None
        if isinstance(message, EffectResult):
            assert self.machine is not None
            req = self.machine.recorded.get(message.seq)
            if not isinstance(req, EffectRequested) or req.effect_id != message.effect_id:
                return None  # no such effect outstanding: fact_for ignores it
            if header is None and message.seq in self.legacy_effects:
                return None  # requested before the deployment had keys
            return keys.check_result(msg.subject, msg.data, header, req.kind)
        return keys.check_input(msg.subject, msg.data, header)

    async def _on_event(self, msg: Msg, name: str) -> Outcome:
        headers = msg.headers or {}
        event_id = (
            headers.get("Ms-Event-Id") or headers.get("Nats-Msg-Id") or f"in-{stream_seq(msg)}"
        )
        try:
            check_event_name(name)
        except InvalidNameError as e:  # a raw publisher's subject: never journaled
            return await self._dead_letter(msg, "junk", str(e))
        if self.started is None:
            # Published before the run started: keep it a while for the run to exist.
            return await self._orphan(msg, f"event {name}")
        if self.terminal is not None:
            return await self._dead_letter(
                msg, "late", f"event {name!r} arrived after the run ended ({self.last_type})"
            )
        if self.parked or self.machine is None:
            return Outcome.RETRY
        if event_id in self.machine.seen_events or event_id in self.machine.rejected:
            self._ignored(msg, f"event {name}", f"duplicate event {event_id}")
            await self._advance()
            return Outcome.ACK
        data = await event_body(self.rt.objects, msg.data or b"null", name)
        reason = self._refusal(event_id, name, data)
        if reason is not None:
            return await self._reject(msg, name, event_id, reason)
        await self._append(
            EventReceived(
                run_id=self.run_id,
                cause=f"inbox:{stream_seq(msg)}",
                name=name,
                event_id=event_id,
                payload=msgspec.Raw(data),
            )
        )
        await self._advance()
        return Outcome.ACK

    def _refusal(self, event_id: str, name: str, data: bytes) -> str | None:
        """Why a resume event cannot be accepted on arrival (None: journal it)."""
        assert self.started is not None
        assert self.machine is not None
        verdict = self.machine.admit(event_id, name, data)
        if verdict.not_json is not None:
            return f"payload is not valid JSON: {verdict.not_json}"
        if not self._declared_known:
            wf = self.rt.registry.find(self.started.workflow)
            self._declared = wf.declared_events(self.started.input) if wf is not None else None
            self._declared_known = True
        declared = self._declared
        if declared is not None and name not in declared:
            accepted = ", ".join(sorted(declared)) or "none"
            return f"the workflow declares no event {name!r} (it accepts: {accepted})"
        if self.rejections >= self.started.max_rejections:
            # over the bound, junk is judged before it is journaled at all
            return verdict.refused
        return None

    async def _reject(self, msg: Msg, name: str, event_id: str, reason: str) -> Outcome:
        assert self.started is not None
        if self.rejections >= self.started.max_rejections:
            return await self._dead_letter(
                msg,
                "junk",
                f"{reason}; run {self.run_id} has rejected {self.rejections} events, its "
                f"limit, so further junk is dead-lettered instead of journaled",
            )
        await self._append(
            EventRejected(
                run_id=self.run_id,
                cause=f"inbox:{stream_seq(msg)}",
                event_id=event_id,
                name=name,
                seq=0,
                reason=reason,
            )
        )
        return Outcome.ACK

    def _ignored(self, msg: Msg, what: str, reason: str) -> None:
        """Log an input dropped as stale or duplicate (judged against the journal)."""
        self.log.info("input_ignored", input=what, inbox_seq=stream_seq(msg), reason=reason)

    async def _orphan(self, msg: Msg, what: str) -> Outcome:
        if num_delivered(msg) < ORPHAN_DELIVERIES:
            return Outcome.RETRY
        return await self._dead_letter(
            msg, "inbox", f"{what} for run {self.run_id}, which does not exist (kept ~1 min)"
        )

    async def _dead_letter(self, msg: Msg, source: str, reason: str) -> Outcome:
        """Keep an input that cannot be applied in the dead-letter stream, then ack it.

        Logged with a running count per source: every letter while they are few, then
        at 10, 100, 1000… so a flood of junk cannot flood the log too."""
        count = self.dead_lettered[source] = self.dead_lettered.get(source, 0) + 1
        if count <= 10 or _is_power_of_ten(count):
            self.log.warning(
                "input_dead_lettered",
                source=source,
                reason=reason,
                inbox_seq=stream_seq(msg),
                count=count,
            )
        await self.rt.dead_letter(msg, source=source, reason=reason, run_id=self.run_id)
        return Outcome.ACK

    async def _on_start(self, msg: Msg, start: StartRun) -> Outcome:
        if self.started is not None:
            # Redelivered start (e.g. the previous worker died mid-activation):
            # finish whatever the replayed code still has to do.
            if self.started_seq:  # in the index too (a crash may have come before)
                await self.rt.index.record(self.run_id, self.started_seq)
            if self.terminal is not None:
                await self._after_terminal()
            elif self.machine is not None:
                await self._advance()
            return Outcome.ACK
        opts = self.rt.options
        deadline = opts.max_duration_s if start.max_duration_s is None else start.max_duration_s
        if self.assumed_new and deadline > 0:
            # The deadline is scheduled before the fact: only for a run known to be new
            # (a redelivered start must not move an existing run's deadline).
            self.evict()
            await self._load_or_park()
            return await self._on_start(msg, start)
        cause = f"inbox:{stream_seq(msg)}"
        registry = self.rt.registry
        version = registry.get(start.workflow).version if start.workflow in registry else "?"
        started = RunStarted(
            run_id=self.run_id,
            cause=cause,
            workflow=start.workflow,
            version=version,
            input=start.input,
            parent=start.parent,
            depth=start.depth,
            max_events=opts.max_events,
            max_depth=opts.max_depth,
            max_rejections=opts.max_rejections,
            max_cost_usd=opts.max_cost_usd if start.max_cost_usd is None else start.max_cost_usd,
            max_duration_s=deadline,
        )
        cap = self.rt.active.cap
        if cap is not None and not await self._admitted():
            stored = await self._append(started)  # the run exists, and ends at once:
            assert isinstance(stored.event, RunStarted)  # its starter learns why
            self.started = stored.event
            await self._append(
                limit_failure(
                    self.run_id,
                    ErrorCode.LIMIT_ACTIVE_RUNS,
                    f"the deployment has its cap of {cap} runs not yet ended (`mainspring "
                    "setup --max-active-runs`); this run never began: start it again "
                    "once others have ended",
                )
            )
            return Outcome.ACK
        if started.max_duration_s > 0:  # scheduled before the fact, so a crash cannot lose it
            await self.rt.schedule(
                self.run_id, DEADLINE_SEQ, utcnow() + timedelta(seconds=started.max_duration_s)
            )
        stored = await self._append(started)
        assert isinstance(stored.event, RunStarted)
        self.started, self.started_seq = stored.event, stored.seq
        await self.rt.index.record(self.run_id, stored.seq)
        if start.workflow not in registry:
            await self._append(
                RunFailed(
                    run_id=self.run_id,
                    error=ErrorInfo(
                        type=ErrorCode.WORKFLOW_NOT_FOUND,
                        message=f"no worker has a workflow named {start.workflow!r}",
                    ),
                )
            )
            return Outcome.ACK
        wf = registry.get(start.workflow)
        try:
            msgspec.json.decode(start.input, type=wf.input_type)
        except msgspec.ValidationError as e:
            await self._append(
                RunFailed(
                    run_id=self.run_id,
                    error=ErrorInfo(
                        type=ErrorCode.INPUT_INVALID,
                        message=f"input of workflow {start.workflow}: {e}",
                    ),
                )
            )
            return Outcome.ACK
        self.machine = Replayer(registry).resume([self.started])  # nothing to replay yet
        await self._advance()
        return Outcome.ACK

    # ------------------------------------------------------------------ deciding
    async def _advance(self) -> None:
        """Journal the code's pending decisions until it waits for the outside world."""
        while self.machine is not None and self.terminal is None:
            if self.rt.options.forced_replay and self.fed_live:
                # Test mode: what the code decides next comes from code replayed
                # from the journal, never from state built up live.
                self.evict()
                await self._load()
                continue
            m = self.machine
            budget = self.started.max_cost_usd if self.started else 0.0
            if budget and self.cost_usd > budget:
                await self._append(
                    limit_failure(
                        self.run_id,
                        ErrorCode.LIMIT_COST,
                        f"run spent ${self.cost_usd:.4f}, over its budget of ${budget:.4f}",
                    )
                )
                return
            if m.nondeterminism is not None:
                await self._park(m.nondeterminism)
                return
            if m.pending:
                assert self.started is not None  # a machine is built from run.started
                await self._append(await decision_event(m.pending[0], self.rt, self.started))
                continue
            if m.main is not None and m.main.done():
                await self._append(self._completion(m))
            return

    def _completion(self, m: Machine) -> JournalEvent:
        assert m.main is not None
        exc = m.main.exception()
        if exc is None:
            try:
                out = msgspec.json.encode(m.main.result())
            except (TypeError, msgspec.EncodeError) as e:
                return RunFailed(
                    run_id=self.run_id,
                    error=ErrorInfo(
                        type=ErrorCode.OUTPUT_INVALID, message=f"workflow output is not JSON: {e}"
                    ),
                )
            return RunCompleted(run_id=self.run_id, output=msgspec.Raw(out))
        error = getattr(exc, "error", None)
        info = error if isinstance(error, ErrorInfo) else error_info(exc)
        return RunFailed(run_id=self.run_id, error=info)

    # ------------------------------------------------------------------ journal
    async def _append(self, event: JournalEvent) -> StoredEvent:
        n = self.n + 1
        started = self.started
        if isinstance(event, EventRejected):
            self.rejections += 1
            self.junk_events += junk_weight(event)
        if (
            started is not None
            and n - self.junk_events >= started.max_events
            and not isinstance(event, TERMINAL_EVENTS)
        ):
            event = RunFailed(
                run_id=self.run_id,
                error=ErrorInfo(
                    type=ErrorCode.LIMIT_EVENTS,
                    message=f"run reached its limit of {started.max_events} journal events",
                ),
            )
        event = msgspec.structs.replace(event, n=n, at=utcnow())
        try:
            stored = await self.rt.journal.append(event, expected_seq=self.last_seq, prev=self.head)
        except PayloadTooLarge as e:  # a value over the cap ends the run, never a retry loop
            event = too_large(event, e)
            stored = await self.rt.journal.append(event, expected_seq=self.last_seq, prev=self.head)
        self.n, self.last_seq, self.head = n, stored.seq, stored.hash
        self.assumed_new = False
        self.last_type = type(event).__struct_config__.tag  # type: ignore[assignment]
        if isinstance(event, EffectCompleted) and started is not None and started.max_cost_usd:
            self.cost_usd += usage_of(event.result).cost_usd  # only a budget needs it
        if isinstance(event, TERMINAL_EVENTS):
            self.terminal = event
            children = self.machine.open_children() if self.machine else []
            if self.machine is not None:
                self.machine.close()
                self.machine = None
            self.log.info("run_ended", outcome=self.last_type)
            if self.rt.active.cap is not None:  # once, here: not again for each late input
                await self.rt.active.release(self.run_id)  # (a crash before: the sweep)
            await self._after_terminal(children)
        elif self.machine is not None:
            self.machine.feed(event)
            self.fed_live = True
        return stored

    async def _admitted(self) -> bool:
        """Counted against the cap on runs not yet ended? When it is full, runs that
        ended without being released (a crash in between) are released first."""
        active = self.rt.active
        if await active.admit(self.run_id):
            return True

        async def ended(run_id: str) -> bool:
            last = await self.rt.journal.last(run_id, resolve=False)
            return last is not None and isinstance(last.event, TERMINAL_EVENTS)

        if await active.sweep(ended):
            return await active.admit(self.run_id)
        return False

    async def _after_terminal(self, open_children: list[str] | None = None) -> None:
        """Tell the parent; cancel children of a cancelled run. Idempotent (msg ids)."""
        ev = self.terminal
        started = self.started
        if ev is None or started is None:
            return
        if started.parent is not None:
            parent = started.parent
            done = ChildDone(
                run_id=parent.run_id,
                seq=parent.seq,
                child_run_id=self.run_id,
                ok=isinstance(ev, RunCompleted),
                output=ev.output if isinstance(ev, RunCompleted) else NULL,
                error=None
                if isinstance(ev, RunCompleted)
                else (
                    ev.error
                    if isinstance(ev, RunFailed)
                    else ErrorInfo(type=ErrorCode.CHILD_CANCELLED, message="child run cancelled")
                ),
            )
            await self.rt.send_inbox(done, f"done:{self.run_id}")
        if isinstance(ev, RunCancelled):
            for child in open_children or []:
                cancel = CancelRun(run_id=child, reason="parent cancelled")
                await self.rt.send_inbox(cancel, f"cancel:{child}")

    async def _park(self, error: Exception, code: ErrorCode = ErrorCode.NONDETERMINISM) -> None:
        self.log.error("run_parked", error=str(error), code=str(code))
        if self.last_type != "run.parked":
            await self._append(
                RunParked(
                    run_id=self.run_id,
                    cause="actor",
                    error=ErrorInfo(type=code, message=str(error)),
                )
            )
        self.parked = True
        if self.machine is not None:
            self.machine.close()
            self.machine = None
