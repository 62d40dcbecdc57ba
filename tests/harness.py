"""A worker + handler service + client in one task group, for in-process tests."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

from actors import Registry, Worker, WorkerOptions
from client import Client, RunStatus
from handlers import Handlers, HandlerService
from projections import Projector
from schemas import EffectRequested, Event, StepCompleted, encode_event
from streams import Journal, Key, Keyring, StoredEvent, Subjects, key_id, verify_chain


@pytest.fixture(name="shards", params=[1, 4], ids=["s1", "s4"])
def sharded(request: pytest.FixtureRequest) -> int:
    """Imported by the kernel and projection test modules (``from tests.harness import
    sharded``): their cases run on a deployment of one shard and of four (on four
    partitions: one each)."""
    return int(request.param)


T = TypeVar("T")
E = TypeVar("E", bound=Event)


@dataclass
class Harness:
    client: Client
    workers: list[Worker] = field(default_factory=list)
    keys: Keyring | None = None


def keys_for(subjects: Subjects) -> Keyring:
    """The test deployment's keys: the same for every harness of one prefix."""
    secret = hashlib.sha256(b"test keys " + subjects.prefix.encode()).digest()
    return Keyring([Key(key_id(secret), secret, "sign")])


@asynccontextmanager
async def running(
    nc: NATS,
    subjects: Subjects,
    registry: Registry | None = None,
    handlers: Handlers | None = None,
    *,
    forced_replay: bool = False,
    options: WorkerOptions | None = None,
    projector: Projector | None = None,
    keys: Keyring | None = None,
    unkeyed: bool = False,
) -> AsyncIterator[Harness]:
    """A worker (given a registry), a handler service (given handlers) and a projector
    running beside a client; ``forced_replay`` applies to given ``options`` too.

    Worker and handlers share deployment ``keys`` (new ones unless given; none at
    all with ``unkeyed``): the keyed path is the one every test takes."""
    if keys is None and not unkeyed:
        keys = keys_for(subjects)
    opts = options or WorkerOptions(lease_ttl_s=3.0)
    if forced_replay:
        opts = replace(opts, forced_replay=True)
    client = Client(nc, subjects, keys=keys)
    h = Harness(client, keys=keys)
    async with anyio.create_task_group() as tg:
        if registry is not None:
            worker = Worker(nc, registry, subjects=subjects, options=opts, keys=keys)
            await tg.start(worker.run)
            h.workers.append(worker)
        if handlers is not None:
            fx_keys = keys.effect_keys(handlers.kinds()) if keys is not None else None
            await tg.start(HandlerService(nc, handlers, subjects=subjects, keys=fx_keys).run)
        if projector is not None:
            await tg.start(projector.run)
        try:
            yield h
        finally:
            tg.cancel_scope.cancel()


def assert_journal_sound(run_id: str, events: list[StoredEvent]) -> None:
    """No gaps, no duplicates, hash chain intact."""
    assert [e.n for e in events] == list(range(1, len(events) + 1))
    verify_chain(run_id, events)


def types(events: list[StoredEvent]) -> list[str]:
    return [type(e.event).__struct_config__.tag for e in events]  # type: ignore[misc]


async def wait_until(
    predicate: Callable[[], Awaitable[T | None]], timeout: float = 10.0, interval: float = 0.02
) -> T:
    """Poll a condition until it yields a truthy value or the deadline passes (no blind sleep)."""
    with anyio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await anyio.sleep(interval)


async def wait_status(client: Client, run_id: str, want: str, timeout: float = 20.0) -> RunStatus:
    """Wait until the run's journal says it is ``want`` (waiting, parked, ...)."""
    status = await client.wait_for(run_id, want, timeout=timeout)
    assert status.status == want, f"run {run_id} is {status.status}, expected {want}"
    return status


def step_seqs(events: list[StoredEvent]) -> list[int]:
    """The command numbers of journaled step results, in journal order."""
    return [e.event.seq for e in events if isinstance(e.event, StepCompleted)]


def events_of(events: list[StoredEvent], cls: type[E]) -> list[E]:
    return [e.event for e in events if isinstance(e.event, cls)]


async def projected(projector: Projector, nc: NATS, subjects: Subjects, timeout: float = 20) -> int:
    """Wait until the projector has committed everything the journal holds now (its
    position is the sum over the shards)."""
    target = sum(await Journal(nc, subjects).last_seqs())

    async def caught_up() -> bool:
        return projector.stats.position >= target

    await wait_until(caught_up, timeout)
    return target


def hand_made_request(run_id: str, kind: str = "math.double", inbox: str = "") -> bytes:
    """An effect request as a publisher would make one by hand: event 2 of ``run_id``
    asking ``kind`` to double 21, naming ``inbox`` for its result."""
    return encode_event(
        EffectRequested(
            run_id=run_id,
            n=2,
            at=datetime.now(UTC),
            seq=1,
            effect_id=f"{run_id}.fx.1",
            kind=kind,
            payload=msgspec.Raw(b"21"),
            inbox=inbox,
        )
    )
