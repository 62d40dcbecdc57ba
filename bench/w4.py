"""W4, crash recovery: two workers share the runs; SIGKILL one mid-flight; the survivor takes
its partitions over. Counts duplicates, and times the takeover and the recovery."""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio
from nats.aio.msg import Msg

import mainspring as ms
from bench._env import (
    Environment,
    balanced,
    common_fields,
    connect,
    lease_holders,
    log,
    warm_up,
)
from schemas import event_type
from streams import Subjects


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=50, help="runs started at once (default 50)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds each step sleeps")
    p.add_argument("--concurrency", type=int, default=10, help="worker --concurrency")
    p.add_argument(
        "--kill-after", type=float, default=1.5, help="seconds after the first start to SIGKILL"
    )
    p.add_argument(
        "--replacement",
        action="store_true",
        help="the old W4: one worker, and a new one spawned at the kill (no survivor)",
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class Audit:
    takeovers: list[float] = field(default_factory=list)
    """per affected run: its first event after the kill, minus the kill (s)"""
    duplicate_steps: int = 0
    """step.completed events beyond ``steps`` in a run's journal (must stay 0)."""
    completed_before_kill: int = 0
    """runs whose run.completed was stamped before the kill"""
    first_after_kill: datetime | None = None
    """the earliest event stamped after the kill: the new worker's first progress"""


async def _audit(
    client: ms.Client, ids: list[str], steps: int, killed_at: datetime, affected: set[str]
) -> Audit:
    audit = Audit()
    for rid in ids:
        events = [e.event for e in await client.history(rid)]
        tags = [event_type(ev) for ev in events]
        audit.duplicate_steps += max(0, tags.count("step.completed") - steps)
        audit.completed_before_kill += any(
            tag == "run.completed" and ev.at < killed_at
            for tag, ev in zip(tags, events, strict=True)
        )
        after = [ev.at for ev in events if ev.at >= killed_at]
        if rid in affected and after:
            audit.takeovers.append((min(after) - killed_at).total_seconds())
        if after and (audit.first_after_kill is None or min(after) < audit.first_after_kill):
            audit.first_after_kill = min(after)
    return audit


class _Freed:
    """When the survivor said the killed worker is gone, and when it held each lease."""

    def __init__(self) -> None:
        self.gone_at: float | None = None
        self.taken_at: dict[int, float] = {}


async def _watch_takeover(client: ms.Client, subjects: Subjects, victim: str, out: _Freed) -> None:
    async def freed(msg: Msg) -> None:
        if out.gone_at is None and msg.data.decode() == victim:
            out.gone_at = time.perf_counter()

    sub = await client.nc.subscribe(subjects.lease_round(), cb=freed)
    kv = await client.nc.jetstream().key_value(subjects.lease_bucket)
    watcher = await kv.watch(">")
    try:
        async for entry in watcher:
            lease = entry is not None and entry.key[1:].isdigit() and entry.key[0] == "p"
            if lease and entry.value and entry.value.decode() != victim:
                p = int(entry.key[1:])
                out.taken_at.setdefault(p, time.perf_counter())
    finally:
        await sub.unsubscribe()
        await watcher.stop()  # type: ignore[no-untyped-call]


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    steps: int = args.steps
    concurrency: int = args.concurrency
    kill_after: float = args.kill_after
    side = env.dir / "side-effects.txt"
    first = env.spawn_worker(concurrency)
    results: dict[str, object] = {}
    done: list[float] = []
    s = env.subjects
    async with connect(env) as client:
        await warm_up(client, 1)
        victim = next(iter((await lease_holders(client, s)).values()))
        if not args.replacement:
            env.spawn_worker(concurrency)  # the survivor, running before the kill
            held = await balanced(client, s, 2)
            log(f"two workers hold {Counter(held.values()).most_common()} partitions")
        ids = [f"w4-{i}" for i in range(runs)]
        all_done = anyio.Event()
        inp = {"file": str(side), "steps": steps, "delay": args.delay}

        async def one(rid: str) -> None:
            await client.start("slow_chain", inp, run_id=rid)
            results[rid] = await client.result(rid, timeout=args.timeout)
            done.append(time.perf_counter())
            if len(done) == runs:
                all_done.set()

        async with anyio.create_task_group() as tg:
            t0 = time.perf_counter()
            log(f"starting {runs} runs x {steps} steps ({args.delay}s each)")
            for rid in ids:
                tg.start_soon(partial(one, rid))
            # the kill lands at --kill-after, mid-flight: that is the workload, not a settle
            await anyio.sleep(max(0.0, t0 + kill_after - time.perf_counter()))
            lost = {p for p, w in (await lease_holders(client, s)).items() if w == victim}
            freed = _Freed()
            watch = anyio.CancelScope()

            async def watching() -> None:
                with watch:
                    await _watch_takeover(client, s, victim, freed)

            tg.start_soon(watching)
            first.kill9()
            killed_at = datetime.now(UTC)
            lines_at_kill = len(_lines(side))
            t_kill = time.perf_counter()
            log(f"SIGKILLed worker {first.pid} at {t_kill - t0:.3f}s; {lines_at_kill} lines")
            if args.replacement:
                env.spawn_worker(concurrency)
            await all_done.wait()
            watch.cancel()
        recovery = max(done) - t_kill
        log(f"all {runs} results {recovery:.3f}s after the kill")
        affected = {rid for rid in ids if s.partition(rid) in lost}
        audit = await _audit(client, ids, steps, killed_at, affected)
    taken = [freed.taken_at[p] - t_kill for p in lost if p in freed.taken_at]
    # leases flapping: a live worker losing a partition it held (the killed one's log aside)
    flaps = sum(
        (env.dir / f"worker-{n}.log").read_text().count("partition_lost")
        for n in range(2, len(env.workers) + 1)
    )
    lines = _lines(side)
    per_line = Counter(lines)
    expected = {f"{rid},{i}" for rid in ids for i in range(steps)}
    first_progress = None  # kill to the new worker's first journaled event (incl. one step)
    if audit.first_after_kill is not None:
        first_progress = round((audit.first_after_kill - killed_at).total_seconds(), 4)
    if audit.completed_before_kill == runs:
        log("warning: every run completed before the kill; nothing was recovered")
    return {
        **common_fields("w4", env),
        "runs": runs,
        "steps": steps,
        "delay_s": args.delay,
        "concurrency": concurrency,
        "kill_after_s": kill_after,
        "runs_completed": sum(1 for out in results.values() if out == steps),
        "completed_before_kill": audit.completed_before_kill,
        "lines_at_kill": lines_at_kill,
        "lines_total": len(lines),
        "duplicate_lines": len(lines) - len(per_line),
        "missing_lines": len(expected - set(per_line)),
        "duplicate_journal_steps": audit.duplicate_steps,
        "recovery_s": round(recovery, 4),
        "first_progress_s": first_progress,
        "survivor": not args.replacement,
        "affected_runs": len(audit.takeovers),
        "takeover_s": round(statistics.median(audit.takeovers), 4) if audit.takeovers else None,
        "takeover_max_s": round(max(audit.takeovers), 4) if audit.takeovers else None,
        "detect_s": None if freed.gone_at is None else round(freed.gone_at - t_kill, 4),
        "leases_taken_s": round(max(taken), 4) if taken else None,
        "survivor_partitions_lost": flaps,
    }
