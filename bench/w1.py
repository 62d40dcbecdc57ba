"""W1, throughput: many chains started at once on one worker; durable steps per second."""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

import mainspring as ms
from bench._env import Environment, common_fields, connect, log, warm_up


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=200, help="runs started at once (default 200)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--concurrency", type=int, default=1000, help="worker --concurrency")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat the burst; report the median (default 1)"
    )


async def burst(
    client: ms.Client,
    tag: str,
    runs: int,
    steps: int,
    timeout: float,
    *,
    workflow: str = "chain",
) -> float:
    """Start ``runs`` chains at once; seconds from the first start to the last result.

    ``workflow``: any that takes a count and returns it when all went well
    (``echo_chain`` for W8)."""
    done: list[float] = []

    async def one(i: int) -> None:
        rid = await client.start(workflow, steps, run_id=f"{tag}-{i}")
        out = await client.result(rid, timeout=timeout)
        if out != steps:
            raise RuntimeError(f"run {rid} returned {out!r}, expected {steps}")
        done.append(time.perf_counter())

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(runs):
            tg.start_soon(one, i)
    return max(done) - t0


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    steps: int = args.steps
    concurrency: int = args.concurrency
    env.spawn_worker(concurrency)
    total = runs * steps
    rates: list[float] = []
    elapsed: list[float] = []
    async with connect(env) as client:
        await warm_up(client, 1, steps=steps)
        cpu = env.cpu_meter()
        cpu.start()
        for r in range(args.rounds):
            log(f"round {r + 1}: starting {runs} runs x {steps} steps at once")
            seconds = await burst(client, f"w1r{r}", runs, steps, args.timeout)
            elapsed.append(seconds)
            rates.append(total / seconds)
            log(f"round {r + 1}: {total} steps in {seconds:.3f}s = {rates[-1]:.0f} steps/s")
        busy = cpu.stop()
    return {
        **common_fields("w1", env),
        "runs": runs,
        "steps": steps,
        "concurrency": concurrency,
        "rounds": args.rounds,
        "elapsed_s": round(statistics.median(elapsed), 4),
        "steps_per_s": round(statistics.median(rates), 1),
        "rounds_steps_per_s": [round(x, 1) for x in rates],
        "cpu_busy": busy,
    }
