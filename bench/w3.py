"""W3, resume latency: runs parked on ``wait_event``; time from send_event to result."""

from __future__ import annotations

import argparse
import time
from functools import partial

import anyio

import mainspring as ms
from bench._env import Environment, common_fields, connect, log, percentile, warm_up


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=50, help="waiting runs (default 50)")
    p.add_argument("--concurrency", type=int, default=1000, help="worker --concurrency")


async def _wait_all(client: ms.Client, ids: list[str], timeout: float) -> None:
    async def one(rid: str) -> None:
        st = await client.wait_for(rid, "waiting", timeout=timeout)
        if st.status != "waiting":
            raise RuntimeError(f"run {rid} is {st.status}, expected waiting")

    async with anyio.create_task_group() as tg:
        for rid in ids:
            tg.start_soon(one, rid)


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    concurrency: int = args.concurrency
    env.spawn_worker(concurrency)
    resume_ms: list[float] = []
    async with connect(env) as client:
        await warm_up(client, 1)
        ids = [f"w3-{i}" for i in range(runs)]
        async with anyio.create_task_group() as tg:
            for rid in ids:
                tg.start_soon(partial(client.start, "wait_go", None, run_id=rid))
        await _wait_all(client, ids, args.timeout)
        log(f"{runs} runs waiting on 'go'; resuming one at a time")
        cpu = env.cpu_meter()
        cpu.start()
        for i, rid in enumerate(ids):
            t0 = time.perf_counter()
            await client.send_event(rid, "go", {"x": i})
            out = await client.result(rid, timeout=args.timeout)
            resume_ms.append((time.perf_counter() - t0) * 1000)
            if out != {"x": i}:
                raise RuntimeError(f"run {rid} returned {out!r}")
        busy = cpu.stop()
    p50, p99 = percentile(resume_ms, 50), percentile(resume_ms, 99)
    log(f"resume p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    return {
        **common_fields("w3", env),
        "runs": runs,
        "concurrency": concurrency,
        "resume_p50_ms": round(p50, 3),
        "resume_p99_ms": round(p99, 3),
        "resume_max_ms": round(max(resume_ms), 3),
        "cpu_busy": busy,
    }
