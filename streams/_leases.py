"""Partition leases in a NATS KV bucket: who owns which inbox partition.

A worker holds partition ``p`` while key ``p<p>`` carries its id and keeps being
renewed (compare-and-set on the revision). Keys expire after ``ttl_s`` without
renewal. How fast a replacement learns the old owner is gone: it pings the
holder's liveness subject; a SIGKILLed process has no subscription, so the
server answers "no responders" at once and the lease is taken immediately.
A holder that is alive but unreachable keeps its lease until the TTL runs out;
journal OCC keeps runs correct while two workers overlap.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from streams._subjects import Subjects


@dataclass
class Lease:
    partition: int
    revision: int
    taken_over: bool = False
    """taken from a holder that is gone (not free): its runs were mid-way elsewhere"""


@dataclass(frozen=True)
class Member:
    """A worker's announcement in the lease bucket, as a watch sees it."""

    worker_id: str
    present: bool
    """announced (False: its announcement was removed)"""


class Leases:
    def __init__(self, nc: NATS, subjects: Subjects, worker_id: str, *, ttl_s: float = 10.0):
        self._nc = nc
        self._s = subjects
        self.worker_id = worker_id
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        js = self._nc.jetstream()
        try:
            self._kv = await js.key_value(self._s.lease_bucket)
        except nats.js.errors.BucketNotFoundError:
            from nats.js.api import KeyValueConfig

            journal = await js.stream_info(self._s.journal_stream)
            self._kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=self._s.lease_bucket,
                    ttl=self.ttl_s,
                    history=1,
                    replicas=journal.config.num_replicas or 1,  # as durable as the journal
                )
            )

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "Leases.open() first"
        return self._kv

    async def announce(self) -> None:
        """Say this worker is a member (the key expires with the bucket's TTL)."""
        await self.kv.put(f"m.{self.worker_id}", b"")

    async def live_members(self) -> int:
        """Workers that announced themselves and answer their ping (this one included)."""
        try:
            keys = await self.kv.keys()
        except nats.js.errors.NoKeysError:
            keys = []
        others = {k[2:] for k in keys if k.startswith("m.")} - {self.worker_id}
        alive = 1
        for other in others:
            alive += await self._holder_alive(other)
        return alive

    async def gone(self, worker_id: str) -> bool:
        """True when nobody answers the worker's ping at all: its connection is closed
        (killed, stopped). A slow answer is not gone: the lease's TTL decides then."""
        try:
            await self._nc.request(self._s.worker_ping(worker_id), b"", timeout=0.5)
        except nats.errors.NoRespondersError:
            return True
        except nats.errors.TimeoutError:
            return False
        return False

    async def forget(self, worker_id: str) -> None:
        """Remove a worker's announcement (it stopped, or its connection is gone), so
        that nobody counts it as a member any more."""
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self.kv.delete(f"m.{worker_id}")

    async def watch_members(self) -> AsyncIterator[Member | None]:
        """Every member announcement there is, then None (the state so far is
        complete), then each new announcement or removal as it comes."""
        watcher = await self.kv.watch("m.*", meta_only=True)
        try:
            async for entry in watcher:
                yield None if entry is None else Member(entry.key[2:], entry.operation is None)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _holder_alive(self, holder: str) -> bool:
        return holder != self.worker_id and not await self.gone(holder)

    async def try_acquire(self, partition: int) -> Lease | None:
        """Take the partition if it is free or its holder is dead; None if held."""
        key = self._s.lease_key(partition)
        me = self.worker_id.encode()
        try:
            rev = await self.kv.create(key, me)
            return Lease(partition, rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        except nats.js.errors.KeyNotFoundError:
            # the key expired between create's own two steps (it saw a key, then
            # found none): free now, but raced; take it in the next round
            return None
        try:
            entry = await self.kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None  # raced with expiry; next round
        holder = (entry.value or b"").decode()
        if await self._holder_alive(holder):
            return None
        try:
            rev = await self.kv.update(key, me, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        return Lease(partition, rev, taken_over=True)

    async def renew(self, lease: Lease) -> bool:
        """Renew; False means someone else took it (stop consuming that partition)."""
        key = self._s.lease_key(lease.partition)
        try:
            lease.revision = await self.kv.update(key, self.worker_id.encode(), last=lease.revision)
        except nats.js.errors.KeyNotFoundError:
            return False
        except nats.js.errors.KeyWrongLastSequenceError:
            # An earlier renewal may have been stored with its ack lost (a stream
            # electing a leader): if the key still names us, it is still ours.
            try:
                entry = await self.kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return False
            if (entry.value or b"").decode() != self.worker_id or entry.revision is None:
                return False
            lease.revision = entry.revision
        return True

    async def release(self, lease: Lease) -> None:
        with contextlib.suppress(
            nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError
        ):
            await self.kv.delete(self._s.lease_key(lease.partition), last=lease.revision)
