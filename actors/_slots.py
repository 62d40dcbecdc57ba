"""Activation slots: at most ``concurrency`` runs active at once, redeliveries first."""

from __future__ import annotations

from collections import deque

import anyio


class Slots:
    """Up to ``total`` holders. Waiters that ask with ``first`` (an input delivered
    before: work a dead or departed worker had begun) are served before the others,
    each class in arrival order. A free slot is taken without a trip through the event
    loop."""

    def __init__(self, total: int) -> None:
        self._free = total
        self._queues: tuple[deque[anyio.Event], deque[anyio.Event]] = (deque(), deque())

    async def acquire(self, *, first: bool = False) -> None:
        if self._free > 0 and not (self._queues[0] or self._queues[1]):
            self._free -= 1
            return
        handed = anyio.Event()
        queue = self._queues[0 if first else 1]
        queue.append(handed)
        try:
            await handed.wait()
        except BaseException:
            if handed.is_set():  # given a slot just as it was cancelled: pass it on
                self.release()
            else:
                queue.remove(handed)
            raise

    def release(self) -> None:
        for queue in self._queues:
            if queue:
                queue.popleft().set()  # the slot goes to the waiter as it is
                return
        self._free += 1
