"""W4, crash recovery: SIGKILL the worker mid-flight, start another, count time and duplicates."""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import anyio

import mainspring as ms
from bench._env import Environment, common_fields, connect, log, warm_up
from schemas import event_type


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=50, help="runs started at once (default 50)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds each step sleeps")
    p.add_argument("--concurrency", type=int, default=10, help="worker --concurrency")
    p.add_argument(
        "--kill-after", type=float, default=1.5, help="seconds after the first start to SIGKILL"
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@dataclass
class Audit:
    duplicate_steps: int = 0
    """step.completed events beyond ``steps`` in a run's journal (must stay 0)."""
    completed_before_kill: int = 0
    """runs whose run.completed was stamped before the kill"""
    first_after_kill: datetime | None = None
    """the earliest event stamped after the kill: the new worker's first progress"""


async def _audit(client: ms.Client, ids: list[str], steps: int, killed_at: datetime) -> Audit:
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
        if after and (audit.first_after_kill is None or min(after) < audit.first_after_kill):
            audit.first_after_kill = min(after)
    return audit


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    steps: int = args.steps
    concurrency: int = args.concurrency
    kill_after: float = args.kill_after
    side = env.dir / "side-effects.txt"
    first = env.spawn_worker(concurrency)
    results: dict[str, object] = {}
    done: list[float] = []
    async with connect(env) as client:
        await warm_up(client, 1)
        ids = [f"w4-{i}" for i in range(runs)]
        inp = {"file": str(side), "steps": steps, "delay": args.delay}

        async def one(rid: str) -> None:
            await client.start("slow_chain", inp, run_id=rid)
            results[rid] = await client.result(rid, timeout=args.timeout)
            done.append(time.perf_counter())

        async with anyio.create_task_group() as tg:
            t0 = time.perf_counter()
            log(f"starting {runs} runs x {steps} steps ({args.delay}s each)")
            for rid in ids:
                tg.start_soon(partial(one, rid))
            # the kill lands at --kill-after, mid-flight: that is the workload, not a settle
            await anyio.sleep(max(0.0, t0 + kill_after - time.perf_counter()))
            first.kill9()
            killed_at = datetime.now(UTC)
            lines_at_kill = len(_lines(side))
            t_spawn = time.perf_counter()
            log(f"SIGKILLed worker {first.pid} at {t_spawn - t0:.3f}s; {lines_at_kill} lines")
            env.spawn_worker(concurrency)
        recovery = max(done) - t_spawn
        log(f"all {runs} results {recovery:.3f}s after spawning the new worker")
        audit = await _audit(client, ids, steps, killed_at)
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
    }
