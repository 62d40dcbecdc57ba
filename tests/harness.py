"""A worker + handler service + client in one task group, for in-process tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from nats.aio.client import Client as NATS

from actors import Client, Handlers, HandlerService, Registry, Worker, WorkerOptions
from streams import StoredEvent, Subjects, verify_chain


@dataclass
class Harness:
    client: Client
    workers: list[Worker] = field(default_factory=list)


@asynccontextmanager
async def running(
    nc: NATS,
    subjects: Subjects,
    registry: Registry | None = None,
    handlers: Handlers | None = None,
    *,
    forced_replay: bool = False,
    options: WorkerOptions | None = None,
) -> AsyncIterator[Harness]:
    opts = options or WorkerOptions(forced_replay=forced_replay, lease_ttl_s=3.0)
    client = Client(nc, subjects)
    h = Harness(client)
    async with anyio.create_task_group() as tg:
        if registry is not None:
            worker = Worker(nc, registry, subjects=subjects, options=opts)
            await tg.start(worker.run)
            h.workers.append(worker)
        if handlers is not None:
            await tg.start(HandlerService(nc, handlers, subjects=subjects).run)
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


async def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):  # type: ignore[no-untyped-def]
    """Poll a condition until true or the deadline passes (never a blind sleep)."""
    with anyio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await anyio.sleep(interval)
