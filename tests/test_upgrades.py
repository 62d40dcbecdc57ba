"""Rolling upgrades: workers of two code versions side by side during a deploy. Each run
runs on the version that started it: new workers carry the old version as
``previous=True``; a worker without a run's version parks it with a clear status
(``version.unavailable``) and it goes on where a worker that has the version takes it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from actors import Worker, WorkerOptions
from client import Client
from schemas import ErrorCode, RunStarted
from streams import Subjects
from tests.harness import keys_for, wait_status, wait_until

pytestmark = pytest.mark.anyio
OPTS = WorkerOptions(lease_ttl_s=3.0)


async def _deploy_v1(ctx: ms.Context, who: str) -> str:
    await ctx.step(lambda: "prepared", name="prepare")
    await ctx.wait_event("go")
    return f"v1:{who}"


async def _deploy_v2(ctx: ms.Context, who: str) -> str:
    """The new code: a different first step (v1 runs would not replay on it)."""
    await ctx.step(lambda: "checked", name="check")
    await ctx.wait_event("go")
    return f"v2:{who}"


def _v1() -> ms.Registry:
    reg = ms.Registry()
    reg.workflow(name="deploy", version="1")(_deploy_v1)
    return reg


def _v2(*, keep_v1: bool) -> ms.Registry:
    reg = ms.Registry()
    if keep_v1:  # the old code stays, for the runs it started
        reg.workflow(name="deploy", version="1", previous=True)(_deploy_v1)
    reg.workflow(name="deploy", version="2")(_deploy_v2)
    return reg


@asynccontextmanager
async def _worker(nc: NATS, subjects: Subjects, registry: ms.Registry) -> AsyncIterator[Worker]:
    worker = Worker(nc, registry, subjects=subjects, options=OPTS, keys=keys_for(subjects))
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        yield worker
        tg.cancel_scope.cancel()


def test_a_previous_version_is_registered_beside_the_current_one() -> None:
    reg = ms.Registry()

    @reg.workflow(name="w", version="2")
    async def now(ctx: ms.Context, _: None) -> None: ...

    @reg.workflow(name="w", version="1", previous=True)
    async def before(ctx: ms.Context, _: None) -> None: ...

    assert reg.get("w").fn is now
    assert reg.for_run("w", "1").fn is before
    assert reg.versions("w") == ["2", "1"]
    with pytest.raises(ms.WorkflowNotFound, match="started by version '0'"):
        reg.for_run("w", "0")
    with pytest.raises(ValueError, match="previous=True"):

        @reg.workflow(name="w", version="3")
        async def again(ctx: ms.Context, _: None) -> None: ...


async def test_two_versions_side_by_side_each_run_on_its_own(nc: NATS, subjects: Subjects) -> None:
    client = Client(nc, subjects, keys=keys_for(subjects))

    async def version_of(rid: str) -> str:
        first = (await client.history(rid))[0].event
        assert isinstance(first, RunStarted)
        return first.version

    # before the deploy: old workers only
    async with _worker(nc, subjects, _v1()) as old:
        before = [f"old{i}" for i in range(8)]
        for rid in before:
            await client.start("deploy", rid, run_id=rid)
        for rid in before:
            await wait_status(client, rid, "waiting")

        # the deploy: a new worker (v2, and v1 kept as previous) beside the old one
        async with _worker(nc, subjects, _v2(keep_v1=True)) as new:

            async def split() -> bool:
                return bool(old.partitions) and bool(new.partitions)

            await wait_until(split, timeout=20)
            during = [f"mid{i}" for i in range(8)]
            for rid in during:
                await client.start("deploy", rid, run_id=rid)
            for rid in during:
                await wait_status(client, rid, "waiting")
            for rid in before + during:
                await client.send_event(rid, "go", {})
            for rid in before + during:
                version = await version_of(rid)
                assert await client.result(rid, timeout=20) == f"v{version}:{rid}"
            started_by = {await version_of(rid) for rid in during}
            assert started_by == {"1", "2"}, "each worker started runs on its current version"

    # a worker without a run's version: the run is parked with the reason, not run on
    # other code; a worker that has the version then finishes it
    async with _worker(nc, subjects, _v1()):
        late = "late1"
        await client.start("deploy", late, run_id=late)
        await wait_status(client, late, "waiting")
    async with _worker(nc, subjects, _v2(keep_v1=False)):
        await client.send_event(late, "go", {})
        parked = await wait_status(client, late, "parked")
        assert parked.error is not None
        assert parked.error.type == ErrorCode.VERSION_UNAVAILABLE
        assert "started by version '1'" in parked.error.message
    async with _worker(nc, subjects, _v2(keep_v1=True)):
        assert await client.result(late, timeout=30) == f"v1:{late}"
