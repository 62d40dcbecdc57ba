"""W5, audit replay speed: events per second verified from the stream (hash chains)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import anyio
import msgspec
import nats

from bench._env import Environment, common_fields, log
from projections import check_stream
from schemas import RunStarted, StepCompleted
from streams import GENESIS, Journal, ensure_topology


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=1000, help="journals to write (default 1000)")
    p.add_argument("--events", type=int, default=100, help="events per run (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="verification passes; best is reported")


async def _write_run(journal: Journal, run_id: str, events: int) -> None:
    """A genuine journal: appended with OCC and hash links, as a worker would."""
    at = datetime.now(UTC)
    stored = await journal.append(
        RunStarted(run_id=run_id, n=1, at=at, workflow="chain", version="1"),
        expected_seq=0,
        prev=GENESIS,
    )
    for n in range(2, events + 1):
        ev = StepCompleted(
            run_id=run_id,
            n=n,
            at=at,
            seq=n - 1,
            name="inc",
            result=msgspec.Raw(str(n - 1).encode()),
        )
        stored = await journal.append(ev, expected_seq=stored.seq, prev=stored.hash)


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    nc = await nats.connect(env.url)
    try:
        await ensure_topology(nc, env.subjects)
        journal = Journal(nc, env.subjects, keys=env.keys)
        total = args.runs * args.events
        log(f"writing {args.runs} journals x {args.events} events = {total} events")
        t0 = time.perf_counter()
        limiter = anyio.Semaphore(200)

        async def one(i: int) -> None:
            async with limiter:
                await _write_run(journal, f"w5-{i}", args.events)

        async with anyio.create_task_group() as tg:
            for i in range(args.runs):
                tg.start_soon(one, i)
        log(f"written in {time.perf_counter() - t0:.1f}s")
        rates = []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            checkers = await check_stream(nc, env.subjects, keys=env.keys)
            seconds = time.perf_counter() - t0
            verified = sum(c.n for c in checkers.values())
            bad = [c.problem for c in checkers.values() if c.problem]
            if verified != total or bad:
                raise RuntimeError(f"verified {verified} of {total}; problems: {bad[:3]}")
            rates.append(total / seconds)
            log(
                f"round {r + 1}: verified {total} events of {len(checkers)} runs in "
                f"{seconds:.2f}s = {rates[-1]:.0f} events/s"
            )
    finally:
        await nc.close()
    return {
        **common_fields("w5", env),
        "runs": args.runs,
        "events": total,
        "events_per_s": round(max(rates), 1),
        "rounds_events_per_s": [round(x, 1) for x in rates],
    }
