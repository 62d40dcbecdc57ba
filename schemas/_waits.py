"""The one rule that pairs a run's waits with its resume events.

Per event name, open waits (in the order the workflow code started them) take the
events that arrived for that name (in arrival order), first with first. An event the
wait at the head refuses (its payload does not fit the wait's type or schema) is
rejected and the next event is tried on the same wait. A wait that times out leaves
the queue; events that find no open wait stay queued for a later one.

Two parties apply it and must agree: the replay machine (``actors``), which decides
and so knows at once whether a wait refuses an event, and ``RunView`` (the client's
and the projections' fold of a journal), which learns of a refusal only from the
``event.rejected`` that follows and then reopens the wait.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

W = TypeVar("W")
E = TypeVar("E")


class WaitMatcher(Generic[W, E]):
    """Open waits and unmatched events of one run, per event name."""

    __slots__ = ("_events", "_waits")

    def __init__(self) -> None:
        self._waits: dict[str, deque[W]] = {}
        self._events: dict[str, deque[E]] = {}

    def open(self, name: str, wait: W) -> None:
        """The code started a wait (after every earlier one of that name)."""
        self._waits.setdefault(name, deque()).append(wait)

    def reopen(self, name: str, wait: W) -> None:
        """A wait that was the head when it took an event learns the event was refused:
        it is the head again (every earlier wait of the name has been satisfied)."""
        self._waits.setdefault(name, deque()).appendleft(wait)

    def close(self, name: str, wait: W) -> None:
        """The wait ended without an event (timed out, or the run ended)."""
        waits = self._waits.get(name)
        if waits is not None and wait in waits:
            waits.remove(wait)

    def arrive(self, name: str, event: E) -> None:
        """An event of ``name`` arrived (after every earlier one)."""
        self._events.setdefault(name, deque()).append(event)

    def match(self, name: str, take: Callable[[W, E], bool]) -> None:
        """Pair waits and events of ``name`` while both are queued. ``take(wait, event)``
        settles the pair and returns False when the wait refuses the event: the event
        is then dropped and the next one is tried on the same wait."""
        waits, events = self._waits.get(name), self._events.get(name)
        while waits and events:
            if take(waits[0], events.popleft()):
                waits.popleft()

    def next_wait(self, name: str) -> W | None:
        """The wait a new event of ``name`` would be tried on now (None: no wait is
        open, or earlier events are still queued ahead of it)."""
        waits = self._waits.get(name)
        if not waits or self._events.get(name):
            return None
        return waits[0]
