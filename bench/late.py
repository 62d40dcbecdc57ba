"""Late-event flood: resume latency of live runs while events pour in for an ended run.

Events sent to a run that has ended are answered cheaply (kept as dead letters, not
journaled, never redelivered) and must not slow other runs down. This measures the
resume latency of waiting runs (send_event to result, one at a time) first on a
quiet worker, then while ``--flood`` late events for one ended run, published as
fast as a raw publisher can, are being worked off.
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import anyio

import mainspring as ms
from bench._env import Environment, common_fields, connect, log, percentile, warm_up
from bench.w3 import _wait_all
from streams import dead_letters
from tests.harness import wait_until


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=100, help="waiting runs per phase (default 100)")
    p.add_argument("--flood", type=int, default=10_000, help="late events (default 10000)")


async def _resume_all(client: ms.Client, ids: list[str], timeout: float) -> list[float]:
    out: list[float] = []
    for i, rid in enumerate(ids):
        t0 = time.perf_counter()
        await client.send_event(rid, "go", {"x": i})
        if await client.result(rid, timeout=timeout) != {"x": i}:
            raise RuntimeError(f"run {rid} returned something else")
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    flood: int = args.flood
    env.spawn_worker(1000)
    async with connect(env) as client:
        await warm_up(client, 1)
        ids = [f"late-{phase}-{i}" for phase in ("quiet", "flood") for i in range(runs)]
        async with anyio.create_task_group() as tg:
            for rid in ids:
                tg.start_soon(partial(client.start, "wait_go", None, run_id=rid))
        await _wait_all(client, ids, args.timeout)
        quiet = await _resume_all(client, ids[:runs], args.timeout)
        log(f"quiet: resume p50 {percentile(quiet, 50):.3f} ms over {runs} runs")
        # the warm-up run has ended: flood it with events, as a raw publisher would
        ended, subject = "warmup-0", env.subjects.event("warmup-0", "go")
        t0 = time.perf_counter()
        for i in range(flood):
            await client.nc.publish(subject, b'{"late": %d}' % i)
        await client.nc.flush()
        published_s = time.perf_counter() - t0
        under = await _resume_all(client, ids[runs:], args.timeout)
        resumed_s = time.perf_counter() - t0
        # the flood is worked off when the worker has acknowledged every late event
        js = client.nc.jetstream()

        async def drained() -> bool:  # the server's count: there is no event to wait on
            return (await js.stream_info(env.subjects.inbox_stream)).state.messages == 0

        await wait_until(drained, timeout=args.timeout, interval=0.05)
        drained_s = time.perf_counter() - t0
        kept = len(await dead_letters(client.nc, env.subjects, source="late", run_id=ended))
    q50, f50 = percentile(quiet, 50), percentile(under, 50)
    log(
        f"flood of {flood}: published in {published_s:.2f}s, worked off in {drained_s:.2f}s "
        f"({flood / drained_s:.0f}/s); resume p50 {f50:.3f} ms under flood "
        f"({f50 / q50:.2f}x quiet); {kept} kept as dead letters (capped per run)"
    )
    return {
        **common_fields("late", env),
        "runs": runs,
        "flood": flood,
        "quiet_resume_p50_ms": round(q50, 3),
        "quiet_resume_p99_ms": round(percentile(quiet, 99), 3),
        "flood_resume_p50_ms": round(f50, 3),
        "flood_resume_p99_ms": round(percentile(under, 99), 3),
        "flood_resume_max_ms": round(max(under), 3),
        "flood_to_quiet_p50": round(f50 / q50, 2),
        "resumes_done_during_flood_s": round(resumed_s, 3),
        "flood_worked_off_s": round(drained_s, 3),
        "late_events_per_s": round(flood / drained_s),
        "dead_letters_kept": kept,
    }
