"""Chaos: no run ever stalls while workers are SIGKILLed, restarted, stopped and added.

CI runs the short form (30 kills); `MS_SOAK_SCALE=5 pytest -m soak tests/test_chaos.py`
runs a longer one. Each run prints its seed; `MS_CHAOS_SEED=<seed>` replays that
workload (the machine's timing will differ). The driver is tests/chaos.py, shared
with `python -m bench chaos`.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from streams import Subjects
from tests.chaos import Chaos, ChaosSettings

SCALE = int(os.environ.get("MS_SOAK_SCALE", "1"))
SEED = int(os.environ.get("MS_CHAOS_SEED") or random.SystemRandom().randrange(2**32))

pytestmark = [pytest.mark.anyio, pytest.mark.soak, pytest.mark.timeout(240 * SCALE)]


async def test_no_run_stalls_across_kills_and_moves(
    nc: NATS, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Across 30+ worker SIGKILLs and graceful moves, with partitions leaving busy
    actors, every run ends as expected (output or cancelled), journals stay sound, and
    no at-most-once effect runs twice."""
    subjects = Subjects("c" + uuid.uuid4().hex[:10], partitions=8)
    settings = ChaosSettings(seed=SEED, runs=60 * SCALE, kills=30 * SCALE, graceful=6 * SCALE)
    print(f"chaos seed {SEED} (MS_CHAOS_SEED={SEED} reproduces the workload)")
    report = await Chaos(nc, nats_server.url, subjects, tmp_path, settings, progress=print).run()
    print(report.summary())
    figures = report.figures()
    print({k: v for k, v in figures.items() if not isinstance(v, dict)})
    print("ignored inputs:", figures["ignored_inputs"])
    print("log warnings:", figures["log_warnings"])
    seed = f"(seed {SEED}; logs in {tmp_path})"
    assert not report.stuck, f"stuck runs {seed}: {report.stuck}"
    assert not report.wrong, f"runs ended wrong {seed}: {report.wrong}"
    assert not report.unsound, f"unsound journals {seed}: {report.unsound}"
    assert report.duplicate_journal_facts == 0, seed
    assert report.effect_reruns_at_most_once == 0, seed
    assert report.effects_missing == 0, seed
    assert report.kills >= 30, seed
    assert report.cancelled >= 1, f"no run was cancelled mid-way {seed}"
    assert report.logs.moves_while_busy > 0, (
        f"no partition left a busy actor: proved nothing {seed}"
    )
