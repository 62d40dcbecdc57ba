"""The worker: owns inbox partitions (leases), feeds run actors, keeps memory bounded."""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict

import anyio
import nats.errors
import structlog
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from ulid import ULID

from actors._actor import Outcome, RunActor
from actors._registry import Registry
from actors._runtime import Runtime, WorkerOptions
from schemas import MainspringError
from streams import (
    ConsumerSpec,
    Lease,
    Leases,
    Subjects,
    ensure_consumer,
    ensure_topology,
    num_delivered,
    partition_of,
    pull_loop,
    retrying,
)

log = structlog.get_logger()


class Worker:
    """Runs workflows: ``await worker.run()`` until cancelled.

    One worker may own every partition; start more on other hosts and a dead
    one's partitions move to the survivors (see ``streams.Leases``).
    """

    def __init__(
        self,
        nc: NATS,
        registry: Registry,
        *,
        subjects: Subjects | None = None,
        options: WorkerOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.subjects = subjects or Subjects()
        self.options = options or WorkerOptions()
        self.worker_id = worker_id or f"w{ULID()}"
        self.rt = Runtime(nc, self.subjects, registry, self.options)
        self.leases = Leases(nc, self.subjects, self.worker_id, ttl_s=self.options.lease_ttl_s)
        self.actors: OrderedDict[str, RunActor] = OrderedDict()
        self._held: dict[int, tuple[Lease, anyio.CancelScope]] = {}
        self._inflight: dict[int, tuple[Msg, float]] = {}
        self._limiter = anyio.CapacityLimiter(self.options.concurrency)
        self.log = log.bind(worker=self.worker_id)

    @property
    def partitions(self) -> list[int]:
        """Partitions this worker consumes right now."""
        return sorted(self._held)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        nc = self.rt.nc
        await ensure_topology(nc, self.subjects)
        # A new (replicated) lease bucket may need a moment before it answers.
        await retrying(self.leases.open, "opening the lease bucket")
        await retrying(self.leases.announce, "announcing this worker")

        async def pong(msg: Msg) -> None:
            await msg.respond(b"ok")

        ping = await nc.subscribe(self.subjects.worker_ping(self.worker_id), cb=pong)
        send, recv = anyio.create_memory_object_stream[Msg](max_buffer_size=4096)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._dispatch, recv, tg)
                share = await retrying(self._fair_share, "counting live workers")
                await retrying(lambda: self._acquire(tg, send, share), "acquiring partitions")
                tg.start_soon(self._lease_loop, tg, send)
                tg.start_soon(self._heartbeats)
                self.log.info("worker_started", partitions=len(self._held))
                task_status.started()
        finally:
            send.close()  # lives as long as the worker: partitions come and go
            with anyio.CancelScope(shield=True):
                for lease, _scope in list(self._held.values()):
                    # best effort: if this fails the lease TTL frees the partition anyway
                    with contextlib.suppress(nats.errors.Error, MainspringError):
                        await self.leases.release(lease)
                self._held.clear()
                with contextlib.suppress(nats.errors.Error):
                    await ping.unsubscribe()
                for actor in self.actors.values():
                    actor.evict()

    # ------------------------------------------------------------------ partitions
    async def _fair_share(self) -> int:
        """Partitions this worker should hold: ⌈partitions ÷ live workers⌉."""
        return math.ceil(self.subjects.partitions / await self.leases.live_members())

    async def _acquire(self, tg: TaskGroup, send: MemoryObjectSendStream[Msg], share: int) -> None:
        """Take free (or dead workers') partitions up to this worker's fair share."""
        acquired: list[int] = []
        total = self.subjects.partitions
        start = partition_of(self.worker_id, total)  # workers start looking at different places
        for p in [(start + i) % total for i in range(total)]:
            if len(self._held) >= share:
                break
            if p in self._held:
                continue
            lease = await self.leases.try_acquire(p)
            if lease is None:
                continue
            spec = self._spec(p)
            # Recreate the consumer: whatever the previous owner left unacked is
            # delivered again now, not after an ack-wait.
            await ensure_consumer(self.rt.nc, spec, recreate=True)
            scope = await tg.start(self._consume, spec, send)
            self._held[p] = (lease, scope)
            acquired.append(p)
        if acquired:
            self.log.info("partitions_acquired", partitions=acquired)

    def _spec(self, partition: int) -> ConsumerSpec:
        s = self.subjects
        return ConsumerSpec(
            stream=s.inbox_stream,
            durable=s.inbox_consumer(partition),
            filter_subject=s.inbox_partition(partition),
            ack_wait_s=self.options.ack_wait_s,
        )

    async def _consume(
        self,
        spec: ConsumerSpec,
        send: MemoryObjectSendStream[Msg],
        *,
        task_status: TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.CancelScope() as scope, send.clone() as out:
            await pull_loop(self.rt.nc, spec, out, task_status=_Relay(task_status, scope))

    async def _lease_loop(self, tg: TaskGroup, send: MemoryObjectSendStream[Msg]) -> None:
        period = self.options.lease_ttl_s / 3
        while True:
            await anyio.sleep(period)
            try:
                await self._lease_round(tg, send)
            except (nats.errors.Error, MainspringError) as exc:
                # NATS briefly unreachable: keep consuming; if we stay cut off past the
                # TTL another worker may take over, and journal OCC keeps runs correct.
                self.log.warning("lease_round_failed", error=str(exc))

    async def _lease_round(self, tg: TaskGroup, send: MemoryObjectSendStream[Msg]) -> None:
        await self.leases.announce()
        for p, (lease, scope) in list(self._held.items()):
            if not await self.leases.renew(lease):
                self.log.warning("partition_lost", partition=p)
                scope.cancel()
                del self._held[p]
                self._drop_partition(p)
        share = await self._fair_share()
        await self._rebalance(share)
        await self._acquire(tg, send, share)

    async def _rebalance(self, share: int) -> None:
        """Hand partitions beyond this worker's fair share back, for newcomers to take.

        Activations already running finish; their messages go to the next owner too,
        where the journal makes them no-ops (and OCC settles any overlap).
        """
        excess = sorted(self._held)[share:]
        for p in excess:
            lease, scope = self._held.pop(p)
            scope.cancel()
            await self.leases.release(lease)
            self._drop_partition(p)
        if excess:
            self.log.info("partitions_released", partitions=excess, share=share)

    def _drop_partition(self, partition: int) -> None:
        for run_id in [r for r in self.actors if self.subjects.partition(r) == partition]:
            actor = self.actors[run_id]
            if not actor.busy:
                actor.evict()
                del self.actors[run_id]

    async def _heartbeats(self) -> None:
        """Keep long activations from being redelivered: +WPI every third of ack-wait."""
        period = self.options.ack_wait_s / 3
        while True:
            await anyio.sleep(period)
            now = time.monotonic()
            for msg, since in list(self._inflight.values()):
                if now - since > period:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    # ------------------------------------------------------------------ dispatch
    async def _dispatch(self, recv: MemoryObjectReceiveStream[Msg], tg: TaskGroup) -> None:
        async with recv:
            async for msg in recv:
                run_id, _ = self.subjects.parse_inbox(msg.subject)
                actor = self.actors.get(run_id)
                if actor is None:
                    actor = RunActor(run_id, self.rt)
                    self.actors[run_id] = actor
                else:
                    self.actors.move_to_end(run_id)
                actor.mailbox.append(msg)
                if not actor.busy:
                    actor.busy = True
                    tg.start_soon(self._drain, actor)

    async def _drain(self, actor: RunActor) -> None:
        try:
            while actor.mailbox:
                msg = actor.mailbox.popleft()
                key = id(msg)
                self._inflight[key] = (msg, time.monotonic())
                try:
                    async with self._limiter:
                        outcome = await actor.handle(msg)
                except Exception as exc:
                    actor.log.exception("activation_failed", error=str(exc))
                    actor.evict()
                    outcome = Outcome.RETRY
                finally:
                    self._inflight.pop(key, None)
                await _settle(msg, outcome)
        finally:
            actor.busy = False
            self._evict_overflow()

    def _evict_overflow(self) -> None:
        excess = len(self.actors) - self.options.max_actors
        if excess <= 0:
            return
        for run_id in list(self.actors):
            if excess <= 0:
                break
            actor = self.actors[run_id]
            if actor.busy or actor.mailbox:
                continue
            actor.evict()
            del self.actors[run_id]
            excess -= 1


async def _settle(msg: Msg, outcome: Outcome) -> None:
    try:
        if outcome is Outcome.ACK:
            await msg.ack()
        elif outcome is Outcome.RETRY:
            await msg.nak(delay=retry_delay(num_delivered(msg)))
        else:
            await msg.term()
    except Exception as exc:  # connection trouble: JetStream redelivers; journal dedupes
        log.warning("settle_failed", error=str(exc))


def retry_delay(delivered: int) -> float:
    """Seconds before a retried input comes back: 0.5 s doubling, capped at 30 s."""
    return float(min(0.5 * 2 ** max(delivered - 1, 0), 30.0))


class _Relay:
    """Passes ``started()`` of the pull loop up as the partition's cancel scope."""

    def __init__(self, outer: TaskStatus[anyio.CancelScope], scope: anyio.CancelScope) -> None:
        self._outer = outer
        self._scope = scope

    def started(self, value: object = None) -> None:
        self._outer.started(self._scope)
