"""Chaos: worker SIGKILLs, restarts and graceful moves while runs mix steps, effects,
timers, events, children and cancellations; then every run must reach its expected end.

The driver is tests/chaos.py (shared with tests/test_chaos.py); workers and the handler
serve tests/apps.py. ``--seed`` (or MS_CHAOS_SEED) replays a workload.
"""

from __future__ import annotations

import argparse
import os
import random

import nats

from bench._env import Environment, common_fields, log
from tests.chaos import Chaos, ChaosSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ChaosSettings(seed=0)
    p.add_argument("--seed", type=int, help="workload seed (default: MS_CHAOS_SEED or random)")
    p.add_argument("--runs", type=int, default=d.runs, help="runs started during the chaos")
    p.add_argument("--kills", type=int, default=d.kills, help="worker SIGKILLs (default 30)")
    p.add_argument(
        "--graceful", type=int, default=d.graceful, help="workers stopped or added gracefully"
    )
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes at the start")
    p.add_argument("--lease-ttl", type=float, default=d.lease_ttl, help="worker --lease-ttl")


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    seed: int = args.seed
    if seed is None:
        seed = int(os.environ.get("MS_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    settings = ChaosSettings(
        seed=seed,
        runs=args.runs,
        kills=args.kills,
        graceful=args.graceful,
        workers=args.workers,
        lease_ttl=args.lease_ttl,
        settle_s=args.timeout,
    )
    nc = await nats.connect(env.url)
    try:
        report = await Chaos(nc, env.url, env.subjects, env.dir, settings, progress=log).run()
    finally:
        await nc.close()
    log(report.summary())
    ok = not (report.stuck or report.wrong or report.unsound) and not (
        report.duplicate_journal_facts or report.effect_reruns_at_most_once
    )
    if not ok:
        log(f"FAILED (seed {seed}): stuck {report.stuck}, wrong {report.wrong}")
    return {**common_fields("chaos", env), "ok": ok, **report.figures()}
