"""Stopping on SIGINT and SIGTERM within seconds, whatever the process is doing.

asyncio's own Ctrl-C handling cancels the main task once, and a busy process can
lose that one cancellation (on Python 3.11 ``asyncio.wait_for`` drops it when the
awaited future completes in the same loop turn; nats-py waits for messages that
way); SIGTERM is not handled at all, so the process dies without stopping its
children. Here both signals cancel an anyio scope instead, which keeps cancelling
until the body has left it. A second signal, or a shutdown longer than ``grace_s``,
ends the process at once, after ``on_force`` (e.g. killing child servers).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import structlog

T = TypeVar("T")

log = structlog.get_logger()


async def until_signalled(
    body: Callable[[], Awaitable[T]],
    *,
    grace_s: float = 10.0,
    on_force: Callable[[], None] | None = None,
) -> T | None:
    """Run ``body`` to its end (its result) or until SIGINT/SIGTERM stops it (None).

    Call from the main thread (where signal handlers live), inside the event loop.
    """
    received: list[int] = []
    deadline: list[threading.Timer] = []
    result: T | None = None
    failure: Exception | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            scope = anyio.CancelScope()

            async def watch() -> None:
                async for signum in signals:
                    if received:
                        _force(f"a second {signal.Signals(signum).name}", signum, on_force)
                    received.append(signum)
                    log.info("stopping", signal=signal.Signals(signum).name)
                    scope.cancel()
                    timer = threading.Timer(
                        grace_s,
                        _force,
                        (f"stopping took longer than {grace_s:g}s", signum, on_force),
                    )
                    timer.daemon = True
                    timer.start()
                    deadline.append(timer)

            tg.start_soon(watch)
            try:
                with scope:
                    try:
                        result = await body()
                    except Exception as e:  # raised below, not wrapped in the group
                        failure = e
            finally:
                for timer in deadline:
                    timer.cancel()
                tg.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return None if received else result


def _force(why: str, signum: int, on_force: Callable[[], None] | None) -> None:
    """Leave now: the clean stop is stuck (or the user insists)."""
    print(f"\nmainspring: {why}; exiting now", file=sys.stderr, flush=True)
    try:
        if on_force is not None:
            on_force()
    finally:
        sys.stdout.flush()
        os._exit(128 + signum)
