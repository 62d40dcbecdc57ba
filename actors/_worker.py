"""The worker: owns inbox partitions (leases), feeds run actors, keeps memory bounded."""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import anyio
import nats.errors
import structlog
from anyio.abc import TaskGroup, TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from ulid import ULID

from actors._actor import Input, Outcome, RunActor
from actors._registry import Registry
from actors._runtime import Runtime, WorkerOptions
from actors._slots import Slots
from schemas import ConnectionFailed, MainspringError
from streams import (
    ConsumerSpec,
    InFlight,
    Keyring,
    Lease,
    Leases,
    Subjects,
    Tasks,
    ensure_consumer,
    ensure_topology,
    num_delivered,
    partition_of,
    pull_loop,
    retrying,
)

log = structlog.get_logger()


@dataclass
class _Held:
    """A partition this worker consumes: its lease, the consumer's scope and generation."""

    lease: Lease
    scope: anyio.CancelScope
    generation: int
    renewed_at: float
    """monotonic time the last successful renewal (or the acquisition) was *sent*"""
    moved_until: float = 0.0
    """until then (monotonic), its inputs go first for activation slots: it was taken
    over from a worker that is gone, whose runs were mid-way"""


class _Router:
    """Where a partition's pull loops put what they fetch: routed to its run's actor at
    once, tagged with the consumer's generation (no queue and no task hop between
    fetching and routing; the activation limiter and the pull batch bound the work)."""

    def __init__(self, worker: Worker, generation: int) -> None:
        self._worker, self._generation = worker, generation

    async def send(self, item: Msg, /) -> None:
        self._worker._route(self._generation, item)


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
        keys: Keyring | None = None,
    ) -> None:
        self.subjects = subjects or Subjects()
        self.options = options or WorkerOptions()
        self.worker_id = worker_id or f"w{ULID()}"
        self.rt = Runtime(nc, self.subjects, registry, self.options, keys=keys)
        self.leases = Leases(nc, self.subjects, self.worker_id, ttl_s=self.options.lease_ttl_s)
        self.actors: OrderedDict[str, RunActor] = OrderedDict()
        self._held: dict[int, _Held] = {}
        self._generations = itertools.count(1)
        self.moves_while_busy = 0
        """partitions let go while one of their runs was mid-activation (chaos tests count them)"""
        self._inflight = InFlight(self.options.ack_wait_s)
        self._slots = Slots(self.options.concurrency)
        """activation slots: inputs delivered before (a moved run's) go first"""
        self._tasks = Tasks()
        """activations (a task per busy run) and dead-lettering of unroutable input;
        a new set for each ``run``"""
        self.log = log.bind(worker=self.worker_id)
        self._peers: dict[str, float] = {}
        """workers that announced themselves (the lease bucket's members): when each
        was last heard (monotonic); one silent for a lease TTL is not counted"""
        self._members_known = False
        """``_peers`` holds the bucket's whole membership (its watch is caught up)"""
        self._wake = anyio.Event()
        """set when a worker is gone: run a lease round now, not at the next period"""
        self._balancing = False
        """a ``_balance`` task is running (one at a time)"""

    @property
    def partitions(self) -> list[int]:
        """Partitions this worker consumes right now."""
        return sorted(self._held)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        nc = self.rt.nc
        self._tasks = Tasks()
        await ensure_topology(nc, self.subjects)
        # A new (replicated) lease bucket may need a moment before it answers.
        await retrying(self.leases.open, "opening the lease bucket")
        await retrying(self.leases.announce, "announcing this worker")
        await retrying(self.rt.active.open, "reading the cap on runs not yet ended")
        await retrying(self.rt.index.open, "finding the run index")

        async def pong(msg: Msg) -> None:
            await msg.respond(b"ok")

        async def round_asked(msg: Msg) -> None:
            peer = msg.data.decode(errors="replace")
            if peer != self.worker_id:
                self._peers.pop(peer, None)
                self._wake.set()

        ping = await nc.subscribe(self.subjects.worker_ping(self.worker_id), cb=pong)
        rounds = await nc.subscribe(self.subjects.lease_round(), cb=round_asked)
        try:
            async with self._tasks, anyio.create_task_group() as tg:
                share = await retrying(self._fair_share, "counting live workers")
                await retrying(lambda: self._acquire(tg, share), "acquiring partitions")
                await nc.publish(self.subjects.lease_round(), b"")  # others: hand over now
                tg.start_soon(self._lease_loop, tg)
                tg.start_soon(self._expiry_watch)
                if self.options.peer_check_s > 0:
                    tg.start_soon(self._watch_members)
                    tg.start_soon(self._peer_watch)
                tg.start_soon(self._inflight.keep_alive)
                keys = self.rt.keys
                self.log.info(
                    "worker_started",
                    partitions=len(self._held),
                    signing_key=keys.signing.id if keys else None,
                )
                if keys is None:
                    self.log.warning(
                        "journal_unauthenticated",
                        hint="journal entries are not tagged and inputs not checked: anyone "
                        "who can publish to NATS can forge them; give the worker a keys file "
                        "(`mainspring keys new`, --keys / MAINSPRING_KEYS)",
                    )
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                for held in list(self._held.values()):
                    # best effort: if this fails the lease TTL frees the partition anyway
                    with contextlib.suppress(nats.errors.Error, MainspringError):
                        await self.leases.release(held.lease)
                self._held.clear()
                with contextlib.suppress(nats.errors.Error):
                    await ping.unsubscribe()
                    await rounds.unsubscribe()
                    await self.leases.forget(self.worker_id)  # no longer a member
                    # the partitions just released: the others take them now
                    await nc.publish(self.subjects.lease_round(), self.worker_id.encode())
                for actor in self.actors.values():
                    actor.evict()

    # ------------------------------------------------------------------ partitions
    async def _fair_share(self) -> int:
        """Partitions this worker should hold: ⌈partitions ÷ live workers⌉. Live: the
        members the bucket's watch heard from within a lease TTL, less those found gone
        (no request at all); before the watch is caught up, each member is pinged."""
        if self._members_known:
            return math.ceil(self.subjects.partitions / len(self._live_peers()))
        return math.ceil(self.subjects.partitions / await self.leases.live_members())

    def _live_peers(self) -> set[str]:
        """This worker and every member heard from within a lease TTL."""
        since = time.monotonic() - self.options.lease_ttl_s
        return {p for p, heard in self._peers.items() if heard >= since} | {self.worker_id}

    async def _acquire(self, tg: TaskGroup, share: int) -> None:
        """Take free (or dead workers') partitions up to this worker's fair share."""
        acquired: list[int] = []
        total = self.subjects.partitions
        start = partition_of(self.worker_id, total)  # workers start looking at different places
        for p in [(start + i) % total for i in range(total)]:
            if len(self._held) >= share:
                break
            if p in self._held:
                continue
            sent_at = time.monotonic()
            lease = await self.leases.try_acquire(p)
            if lease is None:
                continue
            # Nothing remembered from an earlier time we held p may be used now:
            # another worker may have advanced its runs meanwhile.
            self._drop_partition(p)
            specs = self._specs(p)
            try:
                for spec in specs:
                    # Recreate the consumer: whatever the previous owner left unacked is
                    # delivered again now, not after an ack-wait.
                    await ensure_consumer(self.rt.nc, spec, recreate=True)
            except BaseException:
                with (
                    anyio.CancelScope(shield=True),
                    contextlib.suppress(nats.errors.Error, MainspringError),
                ):
                    await self.leases.release(lease)  # not consumed: free for anyone
                raise
            # Held before its consumers start: a message they fetch at once is routed,
            # not taken for one fetched before a move (left unacked for the ack wait).
            generation = next(self._generations)
            held = self._held[p] = _Held(lease, anyio.CancelScope(), generation, sent_at)
            if lease.taken_over:
                held.moved_until = sent_at + self.options.lease_ttl_s
            try:
                await tg.start(self._consume, specs, _Router(self, generation), held.scope)
            except BaseException:
                if self._held.get(p) is held:
                    del self._held[p]
                raise
            acquired.append(p)
        if acquired:
            self.log.info("partitions_acquired", partitions=acquired)

    def _specs(self, partition: int) -> list[ConsumerSpec]:
        """The inbox consumers of a partition: its shard's inbox stream, and where that
        is not shard 0's, the partition's published events, which shard 0's stream
        takes in. Partition 0's owner also sweeps events the stream could not route to
        any partition (published with a wildcard in the subject, which the ingest
        transform leaves as it is)."""
        s = self.subjects
        shard = s.shard_of_partition(partition)
        consumers = [
            (s.inbox_stream_of(shard), s.inbox_consumer(partition), s.inbox_partition(partition))
        ]
        if shard != 0:
            consumers.append(
                (s.inbox_stream, s.event_consumer(partition), s.event_partition(partition))
            )
        if partition == 0:
            consumers.append((s.inbox_stream, s.unrouted_consumer(), s.event_unrouted()))
        return [
            ConsumerSpec(stream, durable, filt, ack_wait_s=self.options.ack_wait_s)
            for stream, durable, filt in consumers
        ]

    async def _consume(
        self,
        specs: list[ConsumerSpec],
        out: _Router,
        scope: anyio.CancelScope,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with scope:
            async with anyio.create_task_group() as tg:
                for spec in specs:
                    await tg.start(
                        lambda task_status, spec=spec: pull_loop(
                            self.rt.nc, spec, out, task_status=task_status
                        )
                    )
                task_status.started()

    async def _lease_loop(self, tg: TaskGroup) -> None:
        period = self.options.lease_ttl_s / 3
        while True:
            with anyio.move_on_after(period):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                await self._lease_round(tg)
            except (nats.errors.Error, MainspringError) as exc:
                # NATS briefly unreachable: keep consuming; if we stay cut off past the
                # TTL another worker may take over, and journal OCC keeps runs correct.
                self.log.warning("lease_round_failed", error=str(exc))

    async def _lease_round(self, tg: TaskGroup) -> None:
        await self.leases.announce()
        for p, held in list(self._held.items()):
            sent_at = time.monotonic()
            if await self.leases.renew(held.lease):
                held.renewed_at = sent_at
            elif self._held.get(p) is held:
                self.log.warning("partition_lost", partition=p, reason="lease taken over")
                self._give_up(p)
        if not self._balancing:
            self._balancing = True
            tg.start_soon(self._balance, tg)

    async def _balance(self, tg: TaskGroup) -> None:
        """Count the workers, hand back what is over this one's share, take what is
        free: in a task of its own, so a slow JetStream call (a consumer created while
        a NATS node is unreachable takes seconds, or times out) never holds back the
        renewals of the partitions already held. Found with a node's link cut: rounds
        stuck in consumer creation let every lease lapse, and partitions flapped."""
        try:
            share = await self._fair_share()
            await self._rebalance(share)
            await self._acquire(tg, share)
        except (nats.errors.Error, MainspringError) as exc:
            self.log.warning("lease_round_failed", error=str(exc))
        finally:
            self._balancing = False

    async def _watch_members(self) -> None:
        """Keep ``_peers``: every worker that announced itself, and when (announcements
        repeat every lease round, so a new worker shows up within one, and one that
        stopped announcing drops out after a TTL). Counting members this way costs no
        request: pinging each member every round made N² requests for N workers."""
        while True:
            try:
                self._peers.clear()
                async for member in self.leases.watch_members():
                    if member is None:  # the bucket's state so far is in
                        await self._drop_gone(set(self._peers) - {self.worker_id})
                        self._members_known = True
                    elif member.present:
                        self._peers[member.worker_id] = time.monotonic()
                    else:
                        self._peers.pop(member.worker_id, None)
            except (nats.errors.Error, MainspringError) as exc:
                self.log.warning("member_watch_failed", error=str(exc))
            finally:
                self._members_known = False
            await anyio.sleep(self.options.lease_ttl_s / 3)  # cut off: watch again later

    async def _drop_gone(self, peers: set[str]) -> None:
        """Ping members found in the bucket (once, when the watch starts): a killed
        worker's announcement stays until its TTL, and counting it would make this
        worker hand back partitions it should hold."""

        async def check(peer: str) -> None:
            with contextlib.suppress(nats.errors.Error):
                if await self.leases.gone(peer):
                    self._peers.pop(peer, None)
                    await self.leases.forget(peer)

        async with anyio.create_task_group() as tg:
            for peer in peers:
                tg.start_soon(check, peer)

    async def _peer_watch(self) -> None:
        """Ping the next worker of the ring (the live workers, sorted): one whose
        connection is gone (killed, or stopped without a word) is noticed within
        ``peer_check_s``, and every worker is told to take its partitions now. One ping
        per worker per period, whatever the number of workers."""
        while True:
            await anyio.sleep(self.options.peer_check_s)
            ring = sorted(self._live_peers())
            if len(ring) < 2:
                continue
            peer = ring[(ring.index(self.worker_id) + 1) % len(ring)]
            try:
                if not await self.leases.gone(peer):
                    continue
                self._peers.pop(peer, None)
                self.log.info("worker_gone", peer=peer)
                self._wake.set()
                await self.rt.nc.publish(self.subjects.lease_round(), peer.encode())
                await self.leases.forget(peer)  # nobody counts it any more, joiners neither
            except nats.errors.Error as exc:  # NATS unreachable: the lease rounds cope
                self.log.warning("peer_check_failed", error=str(exc))

    async def _rebalance(self, share: int) -> None:
        """Hand partitions beyond this worker's fair share back, for newcomers to take.

        Activations already running finish; their messages go to the next owner too,
        where the journal makes them no-ops (and OCC settles any overlap).
        """
        excess = sorted(self._held)[share:]
        for p in excess:
            lease = self._give_up(p)
            await self.leases.release(lease)
        if excess:
            self.log.info("partitions_released", partitions=excess, share=share)
            await self.rt.nc.publish(self.subjects.lease_round(), b"")

    async def _expiry_watch(self) -> None:
        """Stop consuming a partition *before* its lease can expire.

        Renewals happen every third of the TTL; when the last one that succeeded was
        sent more than three quarters of a TTL ago (NATS unreachable, a slow server),
        another worker may soon take the partition over, so this one lets go first.
        """
        limit = self.options.lease_ttl_s * 0.75
        while True:
            await anyio.sleep(self.options.lease_ttl_s / 12)
            now = time.monotonic()
            for p, held in list(self._held.items()):
                if now - held.renewed_at > limit:
                    self.log.warning(
                        "partition_lost",
                        partition=p,
                        reason=f"lease not renewed for {now - held.renewed_at:.1f}s",
                    )
                    self._give_up(p)

    def _give_up(self, partition: int) -> Lease:
        """Stop consuming ``partition`` and forget its runs; returns its (former) lease."""
        held = self._held.pop(partition)
        held.scope.cancel()
        self._drop_partition(partition)
        return held.lease

    def _drop_partition(self, partition: int) -> None:
        """Forget every run of ``partition``: the next owner (maybe this worker again,
        later) loads them from the journal. A busy actor finishes its current
        activation (its appends are checked against the journal like anyone's) and
        takes no further input; its queued messages are redelivered to the next owner."""
        busy = 0
        for run_id in [r for r in self.actors if self.subjects.partition(r) == partition]:
            actor = self.actors.pop(run_id)
            busy += actor.busy
            actor.retire()
        if busy:
            self.moves_while_busy += 1
            self.log.info("partition_left_while_busy", partition=partition, busy_runs=busy)

    # ------------------------------------------------------------------ dispatch
    def _route(self, generation: int, msg: Msg) -> None:
        """Put a fetched message in its run's mailbox (starting the run's turn)."""
        unrouted = self.subjects.is_unrouted(msg.subject)
        run_id, event = ("", None) if unrouted else self.subjects.parse_inbox(msg.subject)
        held = self._held.get(0 if unrouted else self.subjects.partition(run_id))
        if held is None or held.generation != generation:
            # Fetched before this worker let the partition go: left unacked, the
            # current owner's consumer delivers it (again).
            return
        if unrouted:
            self._tasks.start_soon(self._unroutable, msg)
            return
        actor = self.actors.get(run_id)
        if actor is None:
            actor = RunActor(run_id, self.rt)
            self.actors[run_id] = actor
        else:
            self.actors.move_to_end(run_id)
        actor.mailbox.append(Input(msg, event))
        if not actor.busy:
            actor.busy = True
            self._tasks.start_soon(self._drain, actor)

    async def _drain(self, actor: RunActor) -> None:
        try:
            while actor.mailbox and not actor.retired:
                if actor.terminal is not None and len(actor.mailbox) > 1:
                    # An ended run changes no more: its late inputs (dead-lettered or
                    # ignored) need no order, so a flood of them is worked off in
                    # parallel instead of holding the partition's ack window.
                    batch = [actor.mailbox.popleft() for _ in range(min(64, len(actor.mailbox)))]
                    async with anyio.create_task_group() as tg:
                        for inp in batch:
                            tg.start_soon(self._activate, actor, inp)
                    continue
                await self._activate(actor, actor.mailbox.popleft())
        finally:
            actor.busy = False
            if actor.retired:
                actor.evict()
            self._evict_overflow()

    async def _activate(self, actor: RunActor, inp: Input) -> None:
        msg = inp.msg
        self._inflight.hold(msg)  # long activations are not redelivered
        try:
            await self._slots.acquire(first=self._moved(actor.run_id) or num_delivered(msg) > 1)
            try:
                outcome = await actor.handle(inp)
            finally:
                self._slots.release()
        except Exception as exc:
            actor.log.exception("activation_failed", error=str(exc))
            actor.evict()
            outcome = await self._after_failure(actor, msg, exc)
        finally:
            self._inflight.release(msg)
        await _settle(msg, outcome)

    def _moved(self, run_id: str) -> bool:
        """The run's partition was just taken over from a worker that is gone."""
        held = self._held.get(self.subjects.partition(run_id))
        return held is not None and held.moved_until > time.monotonic()

    async def _unroutable(self, msg: Msg) -> None:
        reason = (
            f"event subject {msg.subject!r} names no run and event (a wildcard in a "
            "published subject): it cannot reach any run"
        )
        self.log.warning("input_dead_lettered", source="junk", reason=reason)
        try:
            await self.rt.dead_letter(msg, source="junk", reason=reason, run_id="")
        except (nats.errors.Error, MainspringError) as e:
            self.log.warning("dead_letter_failed", error=str(e))
            await _settle(msg, Outcome.RETRY)
            return
        await _settle(msg, Outcome.ACK)

    async def _after_failure(self, actor: RunActor, msg: Msg, exc: Exception) -> Outcome:
        """An activation raised: retry later, but not forever. An outage (NATS gone)
        is waited out; anything else is a bug a message keeps triggering, so after
        ``poison_deliveries`` the message goes to the dead-letter stream."""
        if _is_outage(exc) or num_delivered(msg) < self.options.poison_deliveries:
            return Outcome.RETRY
        reason = (
            f"activation failed {num_delivered(msg)} times, last with {type(exc).__name__}: {exc}"
        )
        actor.log.error("input_dead_lettered", source="inbox", reason=reason)
        try:
            await self.rt.dead_letter(msg, source="inbox", reason=reason, run_id=actor.run_id)
        except (nats.errors.Error, MainspringError) as e:
            actor.log.warning("dead_letter_failed", error=str(e))
            return Outcome.RETRY
        return Outcome.ACK

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


def _is_outage(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.Error | ConnectionFailed | TimeoutError | OSError)


async def _settle(msg: Msg, outcome: Outcome) -> None:
    try:
        if outcome is Outcome.ACK:
            await msg.ack()
        else:
            await msg.nak(delay=retry_delay(num_delivered(msg)))
    except Exception as exc:  # connection trouble: JetStream redelivers; journal dedupes
        log.warning("settle_failed", error=str(exc))


def retry_delay(delivered: int) -> float:
    """Seconds before a retried input comes back: 0.5 s doubling, capped at 30 s."""
    return float(min(0.5 * 2 ** max(delivered - 1, 0), 30.0))
