"""W2, latency: single chains one after another; per-step latency from the journal's timestamps."""

from __future__ import annotations

import argparse
import time
from itertools import pairwise

from bench._env import Environment, common_fields, connect, log, percentile, warm_up
from schemas import event_type
from streams import StoredEvent


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=30, help="runs in sequence (default 30)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--concurrency", type=int, default=1000, help="worker --concurrency")


def step_gaps_ms(events: list[StoredEvent], steps: int) -> list[float]:
    """Gaps between the actor-recorded times of run.started and each following step.completed."""
    marks = [e.event.at for e in events if event_type(e.event) in ("run.started", "step.completed")]
    if len(marks) != steps + 1:
        raise RuntimeError(f"expected run.started + {steps} step.completed, got {len(marks)}")
    return [(b - a).total_seconds() * 1000 for a, b in pairwise(marks)]


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    steps: int = args.steps
    concurrency: int = args.concurrency
    env.spawn_worker(concurrency)
    step_ms: list[float] = []
    run_ms: list[float] = []
    async with connect(env) as client:
        await warm_up(client, args.warmup, steps=steps)
        log(f"{runs} runs x {steps} steps, one after another")
        cpu = env.cpu_meter()
        cpu.start()
        for i in range(runs):
            t0 = time.perf_counter()
            rid = await client.start("chain", steps, run_id=f"w2-{i}")
            out = await client.result(rid, timeout=args.timeout)
            run_ms.append((time.perf_counter() - t0) * 1000)
            if out != steps:
                raise RuntimeError(f"run {rid} returned {out!r}, expected {steps}")
            step_ms.extend(step_gaps_ms(await client.history(rid), steps))
        busy = cpu.stop()
    p50, p99 = percentile(step_ms, 50), percentile(step_ms, 99)
    log(f"step p50 {p50:.3f} ms, p99 {p99:.3f} ms; run p50 {percentile(run_ms, 50):.2f} ms")
    return {
        **common_fields("w2", env),
        "runs": runs,
        "steps": steps,
        "warmup": args.warmup,
        "concurrency": concurrency,
        "step_samples": len(step_ms),
        "step_p50_ms": round(p50, 3),
        "step_p99_ms": round(p99, 3),
        "step_max_ms": round(max(step_ms), 3),
        "run_p50_ms": round(percentile(run_ms, 50), 3),
        "run_p99_ms": round(percentile(run_ms, 99), 3),
        "cpu_busy": busy,
    }
