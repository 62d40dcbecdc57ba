"""W9, agent-shaped runs: how much slower than the work itself a run is.

``--runs`` runs of ``tests.apps:agent_turn`` start at once; each, one step after the
other: an LLM-like effect (its handler sleeps 50 ms), two tool effects (5 ms each), a
wait for an ``approval`` event, one more LLM-like effect. The handlers run in a separate
process (``mainspring handlers``) with an in-flight limit of at least ``--runs`` per
kind, so no request queues for a handler slot. Each handler measures its own work
inside itself (``perf_counter`` around the sleep) and returns it; the run returns the sum.

The driver sends the approval as soon as it sees the wait open: before it starts the
run it subscribes to the run's journal notifications (the headers-only copies
nats-server republishes for every append anyway, which ``Client.result`` listens to as
well) and sends when one says ``wait.started``. That adds one small delivery to the
driver per append of the run and nothing to the worker or the handlers; polling
``status`` instead would read the whole journal each time, and for 100 runs at once
that load would distort what is measured.

Per run::

    overhead = (wall - gap - work) / work

- ``wall``: the client's ``start`` call to its ``result`` returning (``perf_counter``);
- ``work``: the handler-measured seconds, summed (≈ 110 ms);
- ``gap``: the actor-recorded time (``at``) of ``wait.started`` to the moment the driver
  calls ``send_event`` (wall clock, same host). It is the driver's detection delay,
  which is not the runtime's, so it is taken out. It also holds the append of
  ``wait.started`` itself (the actor stamps ``at`` before storing the event), so the
  figure slightly flatters the runtime; ``gap_p50_ms`` / ``gap_p99_ms`` say by how much,
  and ``gross_overhead_*`` is the same ratio without taking the gap out. Everything
  from ``send_event`` on (the event's publish, the resume, the last effect, the result
  reaching the client) counts as overhead.

``overhead_p50`` / ``overhead_p99``: percentiles over the runs, as fractions (0.05 = 5 %).

The runs start together and so move in step: each of their phases reaches the worker
and the handler process as one burst of ``--runs`` requests, and what a run waits for
its turn in that burst counts as overhead (it is what a user of a loaded deployment
sees). ``--runs 1`` gives the overhead of a run on an idle deployment.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import anyio

import mainspring as ms
from bench._env import Environment, common_fields, connect, handlers_ready, log, percentile
from schemas import WaitStarted
from streams import HDR_TYPE

KINDS = ("bench.llm", "bench.tool")
_ENDS = {"run.completed", "run.failed", "run.cancelled"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=100, help="runs started at once (default 100)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--concurrency", type=int, default=1000, help="worker --concurrency")
    p.add_argument(
        "--handler-concurrency",
        type=int,
        help="in-flight requests per kind in the handler process (default: --runs, at least 64)",
    )


@dataclass(frozen=True)
class Timing:
    """One run as the driver saw it; ``gap`` is filled in from the journal afterwards."""

    run_id: str
    wall: float
    work: float
    sent_at: float
    """wall-clock time (``time.time()``) of the ``send_event`` call"""


async def agent_run(client: ms.Client, rid: str, timeout: float) -> Timing:
    """Start one ``agent_turn``, approve it once its wait is open, await its result."""
    sub = await client.nc.subscribe(client.subjects.watch_run(rid))  # before the start
    try:
        t0 = time.perf_counter()
        await client.start("agent_turn", None, run_id=rid)
        with anyio.fail_after(timeout):
            while True:
                msg = await sub.next_msg(timeout=None)
                kind = (msg.headers or {}).get(HDR_TYPE)
                if kind == "wait.started":
                    break
                if kind in _ENDS:
                    raise RuntimeError(f"run {rid} ended ({kind}) before it waited")
    finally:
        await sub.unsubscribe()
    sent_at = time.time()
    await client.send_event(rid, "approval", {"approved": True, "by": "bench"})
    work = await client.result(rid, timeout=timeout, output_type=float)
    wall = time.perf_counter() - t0
    return Timing(rid, wall, work, sent_at)


async def approval_gap(client: ms.Client, t: Timing) -> float:
    """Seconds from the journal's ``wait.started`` to the driver's ``send_event`` call."""
    opened = [
        e.event.at for e in await client.history(t.run_id) if isinstance(e.event, WaitStarted)
    ]
    if len(opened) != 1:
        raise RuntimeError(f"run {t.run_id}: expected one wait.started, found {len(opened)}")
    return t.sent_at - opened[0].timestamp()


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    runs: int = args.runs
    handler_concurrency: int = args.handler_concurrency or max(runs, 64)
    if handler_concurrency < runs:
        log(f"handler concurrency {handler_concurrency} < {runs} runs: effects will queue")
    env.spawn_worker(args.concurrency)
    env.spawn_handlers(handler_concurrency)
    timings: list[Timing] = []
    async with connect(env) as client:
        await handlers_ready(env, client, KINDS)
        for i in range(args.warmup):
            await agent_run(client, f"warmup-{i}", args.timeout)
        log(f"warm-up done ({args.warmup} run(s)); {runs} agent runs at once")

        async def one(i: int) -> None:
            timings.append(await agent_run(client, f"w9-{i}", args.timeout))

        cpu = env.cpu_meter()
        cpu.start()
        async with anyio.create_task_group() as tg:
            for i in range(runs):
                tg.start_soon(one, i)
        busy = cpu.stop()
        gaps = [await approval_gap(client, t) for t in timings]
    overhead = [(t.wall - g - t.work) / t.work for t, g in zip(timings, gaps, strict=True)]
    gross = [(t.wall - t.work) / t.work for t in timings]
    works = [t.work for t in timings]
    walls = [t.wall for t in timings]
    o50, o99 = percentile(overhead, 50), percentile(overhead, 99)
    log(
        f"overhead p50 {o50:.1%}, p99 {o99:.1%} (work p50 {percentile(works, 50) * 1000:.1f} ms,"
        f" wall p50 {percentile(walls, 50) * 1000:.1f} ms, approval gap p50"
        f" {percentile(gaps, 50) * 1000:.2f} ms)"
    )
    return {
        **common_fields("w9", env),
        "runs": runs,
        "warmup": args.warmup,
        "concurrency": args.concurrency,
        "handler_concurrency": handler_concurrency,
        "overhead_p50": round(o50, 4),
        "overhead_p99": round(o99, 4),
        "overhead_max": round(max(overhead), 4),
        "gross_overhead_p50": round(percentile(gross, 50), 4),
        "gross_overhead_p99": round(percentile(gross, 99), 4),
        "work_p50_ms": round(percentile(works, 50) * 1000, 3),
        "wall_p50_ms": round(percentile(walls, 50) * 1000, 3),
        "wall_p99_ms": round(percentile(walls, 99) * 1000, 3),
        "gap_p50_ms": round(percentile(gaps, 50) * 1000, 3),
        "gap_p99_ms": round(percentile(gaps, 99) * 1000, 3),
        "cpu_busy": busy,
    }
