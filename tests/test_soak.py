"""Chaos soak: workers and handlers SIGKILLed again and again while runs progress.

CI runs the short form; `MS_SOAK_SCALE=10 pytest -m soak` runs a longer one.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from mainspring import NatsServer
from streams import Subjects
from tests.harness import assert_journal_sound, step_seqs, wait_until
from tests.procs import Proc, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.soak]
SCALE = int(os.environ.get("MS_SOAK_SCALE", "1"))


async def test_kill_workers_and_handlers_repeatedly(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """Every run completes with the right output; journals stay sound; each journaled
    step exactly once, whatever is killed when."""
    runs, kills = 30 * SCALE, 4 * SCALE  # short form: two workers and two handlers killed
    side = tmp_path / "side.txt"
    env = {"MS_ACK_WAIT": "2"}
    logs = iter(range(10_000))

    def worker() -> Proc:
        return spawn(
            "worker",
            "tests.apps:registry",
            nats_server.url,
            subjects,
            tmp_path / f"w{next(logs)}.log",
            extra=("--lease-ttl", "3"),
        )

    def handler() -> Proc:
        return spawn(
            "handlers",
            "tests.apps:handlers",
            nats_server.url,
            subjects,
            tmp_path / f"h{next(logs)}.log",
            env=env,
        )

    procs = [worker(), handler()]
    client = ms.Client(nc, subjects)
    ids = [
        await client.start("mixed", {"file": str(side), "rounds": 3}, run_id=f"soak{i}")
        for i in range(runs)
    ]
    every_line = runs * 3
    killed = 0
    try:
        for k in range(kills):
            target = k % 2  # alternate: worker, handler
            seen = len(side.read_text().splitlines()) if side.exists() else 0
            if seen >= every_line:
                break  # a fast machine finished the work: nothing left to kill during

            async def progressed(seen: int = seen) -> bool:
                return side.exists() and len(side.read_text().splitlines()) > seen

            await wait_until(progressed, timeout=60)
            procs[target].kill9()
            killed += 1
            procs[target] = worker() if target == 0 else handler()
        with anyio.fail_after(120):
            results = [await client.result(rid) for rid in ids]
    finally:
        for proc in procs:
            proc.kill9()
    assert killed >= 1  # at least one kill landed while runs were in flight
    assert results == [sum(i + 2 * i for i in range(3))] * runs
    for rid in ids:
        events = await client.history(rid)
        assert_journal_sound(rid, events)
        assert step_seqs(events) == [1, 4, 7]
    lines = Counter(side.read_text().splitlines())
    assert set(lines) == {f"{rid},{i}" for rid in ids for i in range(3)}
