"""Partition ownership: live workers share the partitions; when one goes, the rest take over."""

from __future__ import annotations

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from streams import Subjects
from tests.apps import registry
from tests.harness import (
    sharded,  # noqa: F401  (the shards fixture: 1 and 4)
    wait_status,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def test_workers_share_partitions_and_take_over(nc: NATS, subjects: Subjects) -> None:
    """A second worker gets half the partitions (never one the first still holds); when
    the first stops, the second takes them all and the run it was waiting on continues."""
    opts = ms.WorkerOptions(lease_ttl_s=1.5)
    client = ms.Client(nc, subjects)
    first = ms.Worker(nc, registry, subjects=subjects, options=opts)
    second = ms.Worker(nc, registry, subjects=subjects, options=opts)
    every = list(range(subjects.partitions))
    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as first_group:
            await first_group.start(first.run)
            assert first.partitions == every
            await outer.start(second.run)

            async def balanced() -> bool:
                return len(first.partitions) == len(second.partitions) == len(every) // 2

            await wait_until(balanced, timeout=20)
            assert sorted(first.partitions + second.partitions) == every
            rid = await client.start("waiter", 60, run_id="handover")
            await wait_status(client, rid, "waiting")
            first_group.cancel_scope.cancel()

        async def second_owns_all() -> bool:
            return second.partitions == every

        await wait_until(second_owns_all, timeout=20)
        await client.send_event(rid, "go", {"approved": True, "by": "second"})
        assert await client.result(rid, timeout=10) == {"approved": True, "by": "second"}
        outer.cancel_scope.cancel()


async def test_input_waiting_when_a_worker_starts_is_taken_at_once(
    nc: NATS, subjects: Subjects
) -> None:
    """Runs started while no worker ran sit in every partition; a worker taking the
    partitions one after the other works them all off without waiting out the ack wait.
    (W4 once showed three runs stalled for exactly ack_wait_s after a takeover: a
    message fetched before its partition was recorded as held was left unacked.)"""
    client = ms.Client(nc, subjects)
    ids = [await client.start("chain", 3, run_id=f"early-{i}") for i in range(150)]
    worker = ms.Worker(nc, registry, subjects=subjects, options=ms.WorkerOptions(ack_wait_s=60))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        with anyio.fail_after(30):  # half the ack wait: nothing may depend on a redelivery
            for rid in ids:
                assert await client.result(rid) == 3
        tg.cancel_scope.cancel()
