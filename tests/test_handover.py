"""Partition handover while an actor is busy: a worker never acts on memory kept across
a gap in its ownership (issue: runs stalled forever after rebalancing)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from mainspring import NatsServer
from streams import Subjects, partition_of
from tests.harness import assert_journal_sound, types, wait_until
from tests.procs import spawn

pytestmark = pytest.mark.anyio


def _run_in_partition(partition: int, partitions: int, stem: str) -> str:
    return next(
        f"{stem}{i}" for i in range(10_000) if partition_of(f"{stem}{i}", partitions) == partition
    )


async def test_partition_retaken_while_busy_loads_from_journal(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """Worker A gives a partition up while a run's actor is busy; B advances the run
    (timer fired, next timer started) and stops; A takes the partition back and the
    second timer's firing is applied, not dropped: the run completes."""
    client = ms.Client(nc, subjects)
    url, ttl = nats_server.url, ("--lease-ttl", "1.5")
    last = subjects.partitions - 1  # handed back first when a second worker arrives
    rid = _run_in_partition(last, subjects.partitions, "handover")
    entered, gate = tmp_path / "entered", tmp_path / "gate"
    a = spawn("worker", "tests.apps:registry", url, subjects, tmp_path / "a.log", extra=ttl)
    b = None
    try:
        await ms.Client(nc, subjects).start(
            "gated_timers", {"entered": str(entered), "gate": str(gate)}, run_id=rid
        )
        await wait_until(lambda: _exists(entered), timeout=30)
        kv = await nc.jetstream().key_value(subjects.lease_bucket)

        async def holder() -> bytes:
            try:
                return (await kv.get(subjects.lease_key(last))).value or b""
            except Exception:
                return b""

        a_id = await wait_until(holder, timeout=10)
        b = spawn("worker", "tests.apps:registry", url, subjects, tmp_path / "b.log", extra=ttl)

        async def b_holds() -> bool:
            return (await holder()) not in (b"", a_id)

        await wait_until(b_holds, timeout=30)  # A handed the partition back mid-step
        gate.touch()

        async def second_timer_started() -> bool:
            return types(await client.history(rid)).count("timer.started") == 2

        await wait_until(second_timer_started, timeout=30)  # B advanced the run
        b.stop()

        async def a_holds_again() -> bool:
            return (await holder()) == a_id

        await wait_until(a_holds_again, timeout=30)
        assert await client.result(rid, timeout=30) == "done"
    finally:
        a.kill9()
        if b is not None:
            b.kill9()
    events = await client.history(rid)
    assert_journal_sound(rid, events)
    assert types(events).count("timer.fired") == 2


async def _exists(path: Path) -> bool:
    return await anyio.Path(path).exists()
