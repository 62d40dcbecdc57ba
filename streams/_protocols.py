"""What the run kernel needs from a journal and an inbox, as small protocols.

The kernel (``actors``) names these, never the JetStream classes that implement them
today (``Journal``, ``Inbox``): sharded journals and inboxes are next, and tests may
bring their own. ``open_journal`` and ``open_inbox`` pick the implementation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from nats.aio.client import Client as NATS

from schemas import InboxUnion, JournalEvent, TimerFire
from streams._inbox import Inbox
from streams._journal import Journal, StoredEvent
from streams._keys import Keyring
from streams._objects import Objects
from streams._subjects import Subjects


class JournalStore(Protocol):
    """Runs' journals: each read whole, appended by its single writer under OCC."""

    async def load(
        self, run_id: str, *, verify: bool = True, resolve: bool = True
    ) -> list[StoredEvent]:
        """The run's events in order (empty: no such run); the hash chain checked
        unless ``verify`` is False, payloads by reference fetched unless ``resolve``
        is False."""
        ...

    async def append(self, event: JournalEvent, *, expected_seq: int, prev: bytes) -> StoredEvent:
        """Store ``event`` if the run's journal still ends at ``expected_seq``
        (``JournalConflict`` otherwise; ``PayloadTooLarge`` with nothing stored)."""
        ...

    async def run_ids(self) -> list[str]:
        """Every run with a journal, sorted."""
        ...

    async def last(self, run_id: str, *, resolve: bool = True) -> StoredEvent | None:
        """The run's newest event (None: no such run)."""
        ...


class InboxWriter(Protocol):
    """Runs' inboxes, written by clients, handlers and the kernel itself."""

    async def send(self, message: InboxUnion, *, msg_id: str) -> None:
        """Deliver ``message`` to its run's inbox, at most once per ``msg_id``."""
        ...

    async def schedule(self, fire: TimerFire, when: datetime) -> None:
        """Deliver ``fire`` to its run's inbox at ``when``."""
        ...


def open_journal(
    nc: NATS, subjects: Subjects, objects: Objects | None = None, keys: Keyring | None = None
) -> JournalStore:
    """The journal for these subjects (today: one JetStream stream); with ``keys``,
    appends are tagged and loads checked."""
    return Journal(nc, subjects, objects=objects, keys=keys)


def open_inbox(nc: NATS, subjects: Subjects, keys: Keyring | None = None) -> InboxWriter:
    """The inbox for these subjects (today: one JetStream stream, partitioned); with
    ``keys``, timer firings and child outcomes are tagged."""
    return Inbox(nc, subjects, keys)
