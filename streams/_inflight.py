"""Messages being worked on: a slot each, and kept from redelivery while the work goes on."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import anyio
import nats.errors
from nats.aio.msg import Msg


class InFlight:
    """What a consumer is working on. ``keep_alive`` (one task per consumer, not one
    per message) tells JetStream the work is alive (``+WPI``) every third of the
    ack wait, for each message held longer than that; short work costs nothing."""

    def __init__(self, ack_wait_s: float) -> None:
        self.period = ack_wait_s / 3
        self._held: dict[int, tuple[Msg, float]] = {}

    @contextlib.contextmanager
    def holding(self, msg: Msg) -> Iterator[None]:
        key = id(msg)
        self._held[key] = (msg, time.monotonic())
        try:
            yield
        finally:
            self._held.pop(key, None)

    async def keep_alive(self) -> None:
        while True:
            await anyio.sleep(self.period)
            now = time.monotonic()
            for msg, since in list(self._held.values()):
                if now - since > self.period:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()


async def take_slot(slots: anyio.Semaphore | anyio.CapacityLimiter) -> None:
    """Take one of a consumer's work slots, waiting while none is free; a free one
    costs no trip through the event loop (``acquire`` always yields once)."""
    try:
        slots.acquire_nowait()
    except anyio.WouldBlock:
        await slots.acquire()
