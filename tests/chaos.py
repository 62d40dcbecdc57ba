"""The chaos driver behind tests/test_chaos.py and ``python -m bench chaos``.

Several worker processes (short lease TTL) and a handler process serve the ``chaos``
workflow of tests/apps.py while a seeded plan starts runs, sends resume events (early,
late, duplicated), cancels some runs mid-way, and SIGKILLs, restarts, stops and adds
workers. Then every run must reach its expected end; the report says what happened.

A seed reproduces the workload (which runs, their shapes, events and cancellations,
the order of kills and graceful moves); the timing of a real machine does not repeat.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any, Literal

import anyio
from nats.aio.client import Client as NATS

import mainspring as ms
from schemas import ChildStarted, EffectCompleted, StepCompleted, fold
from streams import StoredEvent, Subjects
from tests.chaos_report import ChaosReport, LogFacts
from tests.harness import assert_journal_sound, types, wait_until
from tests.procs import Proc, spawn

Send = Literal["before_start", "early", "anytime", "late"]
Duplicate = Literal["none", "same_id", "new_id"]
SENDS: tuple[Send, ...] = ("before_start", "early", "anytime", "late")
DUPLICATES: tuple[Duplicate, ...] = ("none", "same_id", "new_id")


@dataclass(frozen=True)
class ChaosSettings:
    seed: int
    runs: int = 60
    kills: int = 30
    """worker SIGKILLs, one or two at a time, each followed by a replacement"""
    graceful: int = 6
    """graceful moves: a worker stopped (SIGINT) or one more started"""
    workers: int = 4
    """workers at the start; graceful moves keep between workers-1 and workers+1"""
    lease_ttl: float = 1.5
    pause: tuple[float, float] = (0.3, 0.7)
    """seconds between two chaos actions (uniform)"""
    settle_s: float = 45.0
    """after the last action, every run must end within this"""
    cancel_share: float = 0.2

    @property
    def actions(self) -> int:
        """About how many chaos actions there will be (kills come one or two at a time)."""
        return round(self.kills * 3 / 4 + self.graceful)


@dataclass(frozen=True)
class RunPlan:
    """What the driver does with one run (all drawn from the seed up front)."""

    run_id: str
    job: dict[str, Any]
    start_at: int
    """started once this many chaos actions have happened (so runs span the chaos)"""
    go: int
    send: Send
    send_after: float
    duplicate: Duplicate
    duplicate_after: float
    cancel_after: float | None
    """cancelled this long after its start (its job holds: it never ends otherwise)"""

    @property
    def kid(self) -> str | None:
        return f"{self.run_id}-kid" if self.job["child"] else None

    def expected(self) -> object:
        if self.cancel_after is not None:
            return "cancelled"
        rounds: int = self.job["rounds"]
        total = sum((i + 1) + 2 * (i + 1) for i in range(rounds))  # step, then effect
        return total + (3 if self.job["child"] else 0) + self.go


def plan_runs(settings: ChaosSettings, side: Path) -> list[RunPlan]:
    """The seeded workload: ``settings.runs`` runs started while the chaos goes on."""
    rng = Random(f"{settings.seed}:runs")
    doomed = set(
        rng.sample(range(settings.runs), max(1, round(settings.runs * settings.cancel_share)))
    )
    plans = []
    for i in range(settings.runs):
        held = i in doomed
        job = {
            "file": str(side),
            "rounds": rng.randint(5, 15),
            "delay": round(rng.uniform(0.05, 0.3), 3),
            "nap": round(rng.uniform(0.05, 0.5), 3),
            "at_most_once": rng.random() < 0.5,
            "child": rng.random() < 0.5,
            "hold": held,
        }
        send = rng.choices(SENDS, [1, 3, 3, 3])[0]
        duplicate = rng.choice(DUPLICATES)
        plans.append(
            RunPlan(
                run_id=f"chaos{i}",
                job=job,
                start_at=rng.randrange(settings.actions),
                go=rng.randint(1, 1000),
                send=send,
                send_after=round(rng.uniform(0, 4), 3),
                duplicate=duplicate,
                duplicate_after=round(rng.uniform(0, 3), 3),
                cancel_after=round(rng.uniform(0.1, 12), 3) if held else None,
            )
        )
    return plans


class Chaos:
    """One chaos session against a running nats-server (``run()`` once)."""

    def __init__(
        self,
        nc: NATS,
        url: str,
        subjects: Subjects,
        workdir: Path,
        settings: ChaosSettings,
        *,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.client = ms.Client(nc, subjects)
        self.url = url
        self.subjects = subjects
        self.dir = workdir
        self.settings = settings
        self._progress = progress
        self._t0 = 0.0
        self.side = workdir / "side.txt"
        self.rng = Random(f"{settings.seed}:actions")
        self.workers: list[Proc] = []
        self.logs: list[Path] = []
        self.report = ChaosReport(settings.seed, settings.runs)
        self.ends: dict[str, str] = {}
        self._settle = anyio.CancelScope()
        self._tick = anyio.Condition()
        self.actions = 0
        """chaos actions so far (runs start as they go by)"""
        self.calm = False
        """the chaos is over"""
        self._started_at: dict[int, float] = {}
        self._spawned_at: dict[int, float] = {}

    def progress(self, what: str) -> None:
        self._progress(f"[chaos {anyio.current_time() - self._t0:6.1f}s] {what}")

    # ------------------------------------------------------------------ processes
    def _spawn_worker(self) -> Proc:
        log = self.dir / f"worker{len(self.logs) + 1}.log"
        self.logs.append(log)
        ttl = ("--lease-ttl", str(self.settings.lease_ttl))
        proc = spawn("worker", "tests.apps:registry", self.url, self.subjects, log, extra=ttl)
        self.workers.append(proc)
        self._spawned_at[proc.popen.pid] = anyio.current_time()
        return proc

    def _census(self) -> tuple[list[Proc], list[Proc]]:
        """Live workers that have started, and those of them that started at least two
        lease rounds ago (they hold partitions by now, and hand some to newcomers)."""
        now = anyio.current_time()
        for w in self.workers:
            if w.popen.pid not in self._started_at and _started(w):
                self._started_at[w.popen.pid] = now
                self.report.start_times.append(now - self._spawned_at[w.popen.pid])
        started = [w for w in self.workers if w.popen.pid in self._started_at]
        ripe_at = now - self.settings.lease_ttl * 2 / 3
        return started, [w for w in started if self._started_at[w.popen.pid] <= ripe_at]

    def _victims(self, n: int) -> list[Proc]:
        """Up to ``n`` started workers; one that holds partitions always survives.
        Half the time the newest go first: the partitions they were just handed
        bounce back to their previous holders (which may remember those runs)."""
        started, ripe = self._census()
        survivor = self.rng.choice(ripe)
        others = [w for w in started if w is not survivor]
        if self.rng.random() < 0.5:
            others.sort(key=lambda w: self._started_at[w.popen.pid], reverse=True)
            return others[:n]
        return self.rng.sample(others, min(n, len(others)))

    def _reap(self) -> None:
        """Workers that exited on their own (crashed): count them, replace them."""
        for proc in [w for w in self.workers if w.popen.poll() is not None]:
            self.workers.remove(proc)
            self.report.crashed.append(proc.log.name)
            self.progress(f"{proc.log.name} exited by itself (code {proc.popen.returncode})")
            self._spawn_worker()

    async def _pace(self) -> None:
        """A random pause, then two started workers, one of them a holder: one may
        die, and the holder survives to hand partitions to the newcomers."""
        await anyio.sleep(self.rng.uniform(*self.settings.pause))  # the plan's pace

        async def ready() -> bool:
            self._reap()
            started, ripe = self._census()
            return len(started) >= 2 and bool(ripe)

        await wait_until(ready, timeout=60, interval=0.05)

    async def _chaos(self) -> None:
        s = self.settings
        r = self.report
        graceful_left = s.graceful
        while r.kills < s.kills or graceful_left:
            await self._pace()
            async with self._tick:
                self.actions += 1
                self._tick.notify_all()
            self._reap()
            kill_actions_left = (s.kills - r.kills) / 1.3
            if graceful_left and self.rng.random() < graceful_left / (
                graceful_left + kill_actions_left
            ):
                graceful_left -= 1
                await self._graceful()
            else:
                # one or two at a time; their replacements start meanwhile
                victims = self._victims(min(self.rng.choice([1, 1, 2]), s.kills - r.kills))
                for victim in victims:
                    victim.kill9()
                    self.workers.remove(victim)
                    r.kills += 1
                for _ in victims:
                    self._spawn_worker()
            if self.actions % 5 == 0:
                self.progress(
                    f"{r.kills} kills, {r.stops + r.starts} graceful moves, "
                    f"{len(self.ends)} runs ended"
                )
        async with self._tick:
            self.calm = True
            self._tick.notify_all()
        self.progress(f"chaos over; every run must end within {s.settle_s:g}s")
        self._settle.deadline = anyio.current_time() + s.settle_s

    async def _graceful(self) -> None:
        s = self.settings
        if len(self.workers) > s.workers - 1 and (
            len(self.workers) > s.workers or self.rng.random() < 0.5
        ):
            [victim] = self._victims(1)
            self.workers.remove(victim)
            await anyio.to_thread.run_sync(victim.stop)  # SIGINT: it releases its leases
            self.report.stops += 1
        else:
            self._spawn_worker()  # the others hand partitions back to it
            self.report.starts += 1

    # ------------------------------------------------------------------ runs
    async def _life(self, plan: RunPlan) -> None:
        c = self.client
        rid = plan.run_id
        async with self._tick:
            while self.actions < plan.start_at and not self.calm:
                await self._tick.wait()
        if plan.send == "before_start":
            await self._send(plan)
        await c.start("chaos", plan.job, run_id=rid)
        if plan.send == "early":
            await self._send(plan)
        async with anyio.create_task_group() as tg:
            if plan.cancel_after is not None:
                tg.start_soon(self._cancel_later, rid, plan.cancel_after)
            else:
                tg.start_soon(self._resume, plan)
            self.ends[rid] = await self._end_of(rid)
        kid = plan.kid
        cancelled = plan.cancel_after is not None and self.ends[rid] == "cancelled"
        if cancelled and kid is not None and await self._started_child(rid):
            # A held child ends only through its parent's cancellation (its own journal
            # may not even exist yet: its start can still be on its way).
            self.ends[kid] = await self._end_of(kid)

    async def _resume(self, plan: RunPlan) -> None:
        """Send `go` (unless sent before) when the plan says, then maybe a duplicate."""
        if plan.send == "late":
            await self.client.wait_for(plan.run_id, "waiting")
        elif plan.send == "anytime":
            await anyio.sleep(plan.send_after)  # when the plan sends it: the behaviour under test
        if plan.send in ("late", "anytime"):
            await self._send(plan)
        if plan.duplicate != "none":
            await anyio.sleep(plan.duplicate_after)  # likewise the plan's timing
            await self._send(plan, again=plan.duplicate == "new_id")

    async def _send(self, plan: RunPlan, *, again: bool = False) -> None:
        """`go` with the run's event id (a resend is dropped as a duplicate), or with a
        new id and the same payload (a second event the run never waits for)."""
        event_id = f"go-{plan.run_id}" + ("-again" if again else "")
        await self.client.send_event(plan.run_id, "go", plan.go, event_id=event_id)

    async def _cancel_later(self, rid: str, after: float) -> None:
        await anyio.sleep(after)  # a cancellation mid-way, when the plan says
        await self.client.cancel(rid, reason="chaos")

    async def _end_of(self, rid: str) -> str:
        try:
            return json.dumps(await self.client.result(rid))
        except ms.RunCancelledError:
            return "cancelled"
        except ms.RunFailedError as e:
            return f"failed {e.error.type}: {e.error.message}"

    async def _started_child(self, rid: str) -> bool:
        events = await self.client.history(rid)
        return any(isinstance(e.event, ChildStarted) for e in events)

    # ------------------------------------------------------------------ session
    async def run(self) -> ChaosReport:
        s = self.settings
        plans = plan_runs(s, self.side)
        t0 = self._t0 = anyio.current_time()
        handler = spawn(
            "handlers", "tests.apps:handlers", self.url, self.subjects, self.dir / "handlers.log"
        )
        self.logs.append(self.dir / "handlers.log")
        try:
            for _ in range(s.workers):
                self._spawn_worker()
            self.progress(
                f"seed {s.seed}: {s.runs} runs, {s.kills} kills, "
                f"{s.graceful} graceful moves, {s.workers} workers (lease TTL {s.lease_ttl:g}s)"
            )
            with self._settle:
                async with anyio.create_task_group() as tg:
                    for plan in plans:
                        tg.start_soon(self._life, plan)
                    await self._chaos()
        finally:
            for proc in [*self.workers, handler]:
                proc.kill9()
        self.report.duration_s = anyio.current_time() - t0
        await self._audit(plans)
        self.report.logs = LogFacts.read(self.logs)
        return self.report

    async def _audit(self, plans: list[RunPlan]) -> None:
        r = self.report
        journals: dict[str, list[StoredEvent]] = {}
        for plan in plans:
            for rid in (plan.run_id, plan.kid):
                if rid is not None and (events := await self.client.history(rid)):
                    journals[rid] = events
        for plan in plans:
            rid = plan.run_id
            end = self.ends.get(rid)
            want = plan.expected()
            if end is None:
                r.stuck[rid] = _where(journals.get(rid, []))
            elif end != (want if want == "cancelled" else json.dumps(want)):
                r.wrong[rid] = f"expected {want}, got {end}"
            elif want == "cancelled":
                r.cancelled += 1
            else:
                r.completed += 1
            kid = plan.kid
            parent = journals.get(rid, [])
            started_kid = any(isinstance(e.event, ChildStarted) for e in parent)
            if plan.cancel_after is not None and kid is not None and started_kid:
                # (a completing parent's output already says how its child ended)
                if self.ends.get(kid) == "cancelled":
                    r.children_cancelled += 1
                elif kid in self.ends:
                    r.wrong[kid] = f"expected cancelled (parent cancelled), got {self.ends[kid]}"
                else:
                    r.stuck[kid] = _where(journals.get(kid, []))
            if kid is not None and kid in journals and not started_kid:
                r.wrong[kid] = "a child run exists that its parent's journal never started"
        executed = Counter(self.side.read_text().splitlines() if self.side.exists() else [])
        # fx,<amo|alo>,<run>,<round>,<delivery>: one execution of an effect per line
        effects = Counter(line.rsplit(",", 1)[0] for line in executed.elements())
        for line, times in executed.items():
            if line.startswith("step,"):
                r.step_reruns += times - 1
        for key, times in effects.items():
            if key.startswith("fx,amo,"):
                r.effect_reruns_at_most_once += times - 1
            elif key.startswith("fx,alo,"):
                r.effect_reruns_at_least_once += times - 1
        executed_per_run = Counter(key.split(",")[2] for key in effects if key.startswith("fx,"))
        for rid, events in journals.items():
            try:
                assert_journal_sound(rid, events)
            except (AssertionError, ms.MainspringError) as e:
                r.unsound[rid] = str(e)[:300]
            facts = [
                (type(e.event).__name__, e.event.seq)
                for e in events
                if isinstance(e.event, StepCompleted | EffectCompleted)
            ]
            r.duplicate_journal_facts += len(facts) - len(set(facts))
            journaled = sum(isinstance(e.event, EffectCompleted) for e in events)
            r.effects_missing += max(0, journaled - executed_per_run[rid])


def _started(proc: Proc) -> bool:
    if proc.popen.poll() is not None:
        return False
    try:
        return "worker_started" in proc.log.read_text(errors="replace")
    except OSError:
        return False


def _where(events: list[StoredEvent]) -> str:
    """Where a run stands: status, open waits, its last journal events."""
    if not events:
        return "no journal"
    view = fold([e.event for e in events])
    return (
        f"{view.status} (waiting for {view.waiting_for}), {len(events)} events, "
        f"last: {types(events)[-5:]}"
    )
