"""W6, projection lag: p99 of (committed in Postgres - recorded in the journal) while W1
runs, and the projector's throughput rebuilding everything from the stream."""

from __future__ import annotations

import argparse
import time

import anyio
import asyncpg
import nats

from bench._env import Environment, common_fields, connect, log, percentile, warm_up
from bench.w1 import burst
from projections import Projector, drop_projections
from servers._postgres import PostgresServer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=200, help="W1 runs started at once (default 200)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="W1 bursts under projection")


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    pg = PostgresServer(env.dir / "pg").start()
    log(f"postgres up at {pg.dsn}")
    env.spawn_worker(1000)
    try:
        pool = await asyncpg.create_pool(pg.dsn, min_size=2, max_size=4)
        nc = await nats.connect(env.url)
        projector = Projector(nc, pool, env.subjects)
        try:
            async with anyio.create_task_group() as tg, connect(env) as client:
                await tg.start(projector.run)
                await warm_up(client, 1, steps=args.steps, timeout=args.timeout)
                projector.stats.keep_samples = True
                projector.stats.lag_samples.clear()
                rates = []
                for r in range(args.rounds):
                    seconds = await burst(client, f"w6r{r}", args.runs, args.steps, args.timeout)
                    rates.append(args.runs * args.steps / seconds)
                    log(f"round {r + 1}: W1 at {rates[-1]:.0f} steps/s under projection")
                tg.cancel_scope.cancel()
            await projector.catch_up()  # whatever the stopped loop had not committed yet
            samples = list(projector.stats.lag_samples)
            async with pool.acquire() as conn:
                await drop_projections(conn)
            rebuild = Projector(nc, pool, env.subjects)
            t0 = time.perf_counter()
            await rebuild.catch_up()
            seconds = time.perf_counter() - t0
            throughput = rebuild.stats.events / seconds
            log(f"rebuild: {rebuild.stats.events} events in {seconds:.2f}s = {throughput:.0f}/s")
        finally:
            await nc.close()
            await pool.close()
    finally:
        pg.stop()
    return {
        **common_fields("w6", env),
        "runs": args.runs,
        "steps": args.steps,
        "rounds": args.rounds,
        "events_sampled": len(samples),
        "lag_p50_s": round(percentile(samples, 50), 4),
        "lag_p99_s": round(percentile(samples, 99), 4),
        "lag_max_s": round(max(samples), 4),
        "w1_steps_per_s_under_projection": [round(x, 1) for x in rates],
        "projector_events_per_s": round(throughput, 1),
        "rebuild_events": rebuild.stats.events,
    }
