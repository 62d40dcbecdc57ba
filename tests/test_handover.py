"""Partition handover while an actor is busy: a worker never acts on memory kept across
a gap in its ownership (issue: runs stalled forever after rebalancing)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import mainspring as ms
from mainspring import NatsServer
from streams import (
    ConsumerSpec,
    Subjects,
    ensure_consumer,
    ensure_topology,
    partition_of,
    pull_loop,
)
from tests.apps import registry
from tests.harness import assert_journal_sound, running, types, wait_until
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


async def test_worker_lets_go_before_its_lease_can_expire(tmp_path: Path) -> None:
    """With the broker frozen (SIGSTOP) no renewal gets through: the worker stops
    consuming every partition within its lease TTL, and takes them back (from the
    journal) once the broker answers again."""
    server = NatsServer(tmp_path / "nats").start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        nc = await nats.connect(server.url)
        subjects = Subjects("frozen", 4)
        opts = ms.WorkerOptions(lease_ttl_s=1.5)
        async with running(nc, subjects, registry, options=opts) as h:
            worker = h.workers[0]
            every = list(range(subjects.partitions))
            assert worker.partitions == every
            os.kill(pid, signal.SIGSTOP)
            try:

                async def owns_none() -> bool:
                    return not worker.partitions

                # within the TTL: before anybody else could have taken over
                await wait_until(owns_none, timeout=1.5)
            finally:
                os.kill(pid, signal.SIGCONT)

            async def owns_all() -> bool:
                return worker.partitions == every

            await wait_until(owns_all, timeout=20)
            rid = await h.client.start("chain", 3)
            assert await h.client.result(rid, timeout=20) == 3
        await nc.close()
    finally:
        server.stop()


async def test_letting_a_partition_go_mid_pull_keeps_the_connection(tmp_path: Path) -> None:
    """Cancelling a partition's pull loop while the broker does not answer (what letting
    a partition go does) leaves the connection working once the broker is back: nothing
    is left waiting for a PONG that nats-py's reader would choke on."""
    server = NatsServer(tmp_path / "nats").start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        nc = await nats.connect(server.url)
        subjects = Subjects("pull", 1)
        await ensure_topology(nc, subjects)
        spec = ConsumerSpec(
            subjects.inbox_stream, subjects.inbox_consumer(0), subjects.inbox_partition(0)
        )
        await ensure_consumer(nc, spec)
        send, recv = anyio.create_memory_object_stream[Msg](max_buffer_size=10)
        os.kill(pid, signal.SIGSTOP)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(
                    lambda task_status: pull_loop(nc, spec, send, task_status=task_status)
                )
                await anyio.wait_all_tasks_blocked()  # the loop waits on the frozen broker
                tg.cancel_scope.cancel()
        finally:
            os.kill(pid, signal.SIGCONT)
        await nc.flush(timeout=5)  # a PING/PONG round trip on the same connection
        assert await nc.request("$JS.API.INFO", b"", timeout=5)
        send.close()
        recv.close()
        await nc.close()
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["kill9", "stop"])
async def test_a_gone_workers_partitions_are_taken_at_once_not_at_the_lease_ttl(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path, how: str
) -> None:
    """Two workers with a 60 s lease TTL (a lease round every 20 s): when one is
    SIGKILLed or stopped, the other takes its partitions as soon as its ring ping finds
    the connection gone (or hears the stop), so runs waiting there resume in seconds."""
    client = ms.Client(nc, subjects)
    url, ttl = nats_server.url, ("--lease-ttl", "60")
    a = spawn("worker", "tests.apps:registry", url, subjects, tmp_path / "a.log", extra=ttl)
    b = spawn("worker", "tests.apps:registry", url, subjects, tmp_path / "b.log", extra=ttl)
    try:

        async def holders() -> set[bytes]:
            found: set[bytes] = set()
            try:
                kv = await nc.jetstream().key_value(subjects.lease_bucket)
            except nats.js.errors.BucketNotFoundError:
                return found  # no worker has started yet
            for p in range(subjects.partitions):
                with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                    found.add((await kv.get(subjects.lease_key(p))).value or b"")
            return found

        async def both_hold() -> bool:
            return len(await holders()) == 2

        await wait_until(both_hold, timeout=60)
        rids = [
            _run_in_partition(p, subjects.partitions, "gone") for p in range(subjects.partitions)
        ]
        for rid in rids:
            await client.start("wait_go", None, run_id=rid)
        for rid in rids:
            await client.wait_for(rid, "waiting", timeout=20)
        a.kill9() if how == "kill9" else a.stop()
        for rid in rids:
            await nc.publish(subjects.event(rid, "go"), b"{}")
        with anyio.fail_after(15):  # far below the 20 s a lease round would take
            for rid in rids:
                assert await client.result(rid, timeout=15) == {}
    finally:
        a.kill9()
        b.kill9()
    if how == "kill9":
        assert "worker_gone" in (tmp_path / "b.log").read_text()
