"""Run journals on JetStream: append with optimistic concurrency and hash links; load and verify.

Append (single writer, DESIGN.md §4): each message states the stream sequence the
run's journal must end at (``Nats-Expected-Last-Subject-Sequence`` with the
``-Subject`` variant over ``<prefix>.j.<run>.>``, since effect requests live on
their own subjects) and carries ``Nats-Msg-Id = <run>:<n>``. A second writer
gets a conflict and must reload. Each message is one event, so a crash between
two appends leaves a prefix of what the code would decide again: replay-safe.

Hash chain (DESIGN.md §9): ``h_n = SHA-256(h_{n-1} || stored bytes)`` with
``h_0`` = 32 zero bytes, carried in headers ``Ms-Hash`` / ``Ms-Prev`` beside the
hashed bytes, so verification never re-encodes anything.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import (
    ConnectionFailed,
    EffectRequested,
    JournalConflict,
    JournalCorrupt,
    JournalEvent,
    decode_event,
    encode_event,
    event_type,
)
from streams._publish import publish
from streams._subjects import Subjects

GENESIS = bytes(32)
HDR_N = "Ms-N"
HDR_HASH = "Ms-Hash"
HDR_PREV = "Ms-Prev"
HDR_TYPE = "Ms-Type"
_WRONG_LAST_SEQ = 10071
_LAST_SEQ_RE = re.compile(r"wrong last sequence: (\d+)")


def chain(prev: bytes, data: bytes) -> bytes:
    """One link of the hash chain."""
    return hashlib.sha256(prev + data).digest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One journal event as stored: the exact bytes, its links and stream position."""

    seq: int
    n: int
    prev: bytes
    hash: bytes
    data: bytes
    event: JournalEvent
    subject: str = ""


class Journal:
    """Append to and read run journals."""

    def __init__(self, nc: NATS, subjects: Subjects, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._s = subjects
        self._timeout = timeout

    def subject_for(self, event: JournalEvent) -> str:
        if isinstance(event, EffectRequested):
            return self._s.journal_effect(event.run_id, event.kind)
        return self._s.journal(event.run_id)

    async def append(self, event: JournalEvent, *, expected_seq: int, prev: bytes) -> StoredEvent:
        """Store ``event`` as event ``event.n`` if the run's journal ends at ``expected_seq``.

        Raises ``JournalConflict`` if another writer got there first.
        """
        run_id = event.run_id
        data = encode_event(event)
        link = chain(prev, data)
        subject = self.subject_for(event)
        headers = {
            "Nats-Msg-Id": f"{run_id}:{event.n}",
            "Nats-Expected-Last-Subject-Sequence": str(expected_seq),
            "Nats-Expected-Last-Subject-Sequence-Subject": self._s.journal_run_filter(run_id),
            HDR_N: str(event.n),
            HDR_PREV: prev.hex(),
            HDR_HASH: link.hex(),
            HDR_TYPE: event_type(event),
        }
        ack = await publish(self._nc, subject, data, headers, timeout=self._timeout)
        if ack.error is not None:
            if ack.error.err_code == _WRONG_LAST_SEQ:
                # The server checks OCC before de-duplication, so a retry of an append
                # whose ack was lost lands here too: it is ours if the run's newest
                # message is byte-for-byte this event.
                ours = await self._already_stored(ack.error.description, data)
                if ours is not None:
                    return StoredEvent(ours.seq, event.n, prev, link, data, event, subject)
                raise JournalConflict(run_id, expected_seq, ack.error.description)
            raise ConnectionFailed(
                f"journal append for run {run_id} refused: {ack.error.description}"
            )
        if ack.duplicate:
            # Same Msg-Id already stored: our own earlier attempt (fine) or a rival
            # writer's event n (conflict). Compare the stored bytes to tell.
            stored = await self.get(ack.seq)
            if stored is None or stored.data != data:
                raise JournalConflict(run_id, expected_seq, f"event {event.n} already stored")
        return StoredEvent(ack.seq, event.n, prev, link, data, event, subject)

    async def _already_stored(self, description: str, data: bytes) -> StoredEvent | None:
        found = _LAST_SEQ_RE.search(description)
        if found is None:
            return None
        stored = await self.get(int(found.group(1)))
        return stored if stored is not None and stored.data == data else None

    async def get(self, seq: int) -> StoredEvent | None:
        """The journal message at stream sequence ``seq`` (direct get)."""
        return await self._direct_one({"seq": seq})

    async def last(self, run_id: str) -> StoredEvent | None:
        """The newest non-effect event of a run (its terminal event when it ended)."""
        return await self._direct_one({"last_by_subj": self._s.journal(run_id)})

    async def _direct_one(self, req: dict[str, object]) -> StoredEvent | None:
        subject = f"$JS.API.DIRECT.GET.{self._s.journal_stream}"
        try:
            msg = await self._nc.request(subject, msgspec.json.encode(req), timeout=self._timeout)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            raise ConnectionFailed(f"direct get on {self._s.journal_stream} failed: {e}") from e
        if msg.headers and msg.headers.get("Status"):
            return None
        return _stored_from_msg(msg)

    async def load(self, run_id: str, *, verify: bool = True) -> list[StoredEvent]:
        """All events of a run in order (batched direct get), chain-verified."""
        filt = self._s.journal_run_filter(run_id)
        api = f"$JS.API.DIRECT.GET.{self._s.journal_stream}"
        events: list[StoredEvent] = []
        start = 1
        while True:
            batch, more = await self._direct_batch(api, filt, start)
            events.extend(batch)
            if not more or not batch:
                break
            start = batch[-1].seq + 1
        if verify:
            verify_chain(run_id, events)
        return events

    async def _direct_batch(
        self, api: str, filt: str, start: int, size: int = 1000
    ) -> tuple[list[StoredEvent], bool]:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        out: list[StoredEvent] = []
        try:
            req = {"seq": start, "next_by_subj": filt, "batch": size}
            await self._nc.publish(api, msgspec.json.encode(req), reply=inbox)
            while True:
                try:
                    msg = await sub.next_msg(timeout=self._timeout)
                except nats.errors.TimeoutError as e:
                    raise ConnectionFailed(f"reading journal {filt} timed out") from e
                status = msg.headers.get("Status") if msg.headers else None
                if status == "404":
                    return out, False
                if status == "204":  # end of batch
                    pending = int(msg.headers.get("Nats-Num-Pending", "0")) if msg.headers else 0
                    return out, pending > 0 and len(out) >= size
                if status:
                    raise ConnectionFailed(f"reading journal {filt}: status {status}")
                out.append(_stored_from_msg(msg))
        finally:
            await sub.unsubscribe()


def _stored_from_msg(msg: Msg) -> StoredEvent:
    headers = msg.headers or {}
    seq = int(headers.get("Nats-Sequence", "0"))
    subject = headers.get("Nats-Subject", "")
    run_id = subject.split(".")[2] if subject.count(".") >= 3 else "?"
    try:
        n = int(headers[HDR_N])
        prev = bytes.fromhex(headers[HDR_PREV])
        link = bytes.fromhex(headers[HDR_HASH])
        event = decode_event(msg.data)
    except (KeyError, ValueError, msgspec.DecodeError) as e:
        raise JournalCorrupt(run_id, 0, f"stream sequence {seq} ({subject}): {e}") from e
    return StoredEvent(seq, n, prev, link, msg.data, event, subject)


def verify_chain(run_id: str, events: list[StoredEvent]) -> bytes:
    """Check positions, links and hashes of a run's events; return the head hash."""
    prev = GENESIS
    for i, ev in enumerate(events, start=1):
        if ev.n != i or ev.event.n != i:
            raise JournalCorrupt(run_id, i, f"expected event {i}, found n={ev.n}")
        if ev.event.run_id != run_id:
            raise JournalCorrupt(run_id, i, f"event belongs to run {ev.event.run_id}")
        if ev.prev != prev:
            raise JournalCorrupt(run_id, i, "previous-hash link does not match event before it")
        if chain(prev, ev.data) != ev.hash:
            raise JournalCorrupt(run_id, i, "stored bytes do not match their hash")
        prev = ev.hash
    return prev
