"""Partition ownership: one owner at a time; a standby takes over when the owner goes."""

from __future__ import annotations

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from streams import Subjects
from tests.apps import registry
from tests.harness import wait_status, wait_until

pytestmark = pytest.mark.anyio


async def test_standby_worker_takes_over_released_partitions(nc: NATS, subjects: Subjects) -> None:
    """A second worker gets nothing while the first is alive, everything once it stops."""
    opts = ms.WorkerOptions(lease_ttl_s=1.5)
    client = ms.Client(nc, subjects)
    first = ms.Worker(nc, registry, subjects=subjects, options=opts)
    second = ms.Worker(nc, registry, subjects=subjects, options=opts)
    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as first_group:
            await first_group.start(first.run)
            assert first.partitions == list(range(subjects.partitions))
            await outer.start(second.run)
            rid = await client.start("waiter", 60, run_id="handover")
            await wait_status(client, rid, "waiting")
            # a live owner's partitions are not taken, even after several lease periods
            await anyio.sleep(opts.lease_ttl_s * 2)  # observing an absence, not settling
            assert second.partitions == []
            first_group.cancel_scope.cancel()
        await wait_until(lambda: _owns_all(second, subjects), timeout=10)
        await client.send_event(rid, "go", {"approved": True, "by": "standby"})
        assert await client.result(rid, timeout=10) == {"approved": True, "by": "standby"}
        outer.cancel_scope.cancel()


async def _owns_all(worker: ms.Worker, subjects: Subjects) -> bool:
    return worker.partitions == list(range(subjects.partitions))
