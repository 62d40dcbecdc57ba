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

Authorship (streams/_keys.py): with a ``Keyring`` every append also carries an
``Ms-Mac`` tag over the link (and an effect request an ``Ms-Fx-Mac`` tag for its
handlers); ``load`` refuses an entry whose tag does not check as ``JournalForged``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import (
    TERMINAL_EVENTS,
    EffectRequested,
    JournalConflict,
    JournalCorrupt,
    JournalEvent,
    JournalForged,
    PayloadUnavailable,
    decode_event,
    encode_event,
    event_type,
)
from streams._jsapi import ApiError, stream_info, stream_subjects
from streams._keys import HDR_FX_MAC, HDR_MAC, Keyring
from streams._objects import Objects
from streams._publish import Unavailable, parse_headers, publish, refused, retrying

# re-exported: they lived here, and readers import them from here
from streams._records import Record as Record
from streams._records import read_all
from streams._records import read_records as read_records
from streams._subjects import Subjects

GENESIS = bytes(32)
HDR_N = "Ms-N"
HDR_HASH = "Ms-Hash"
HDR_PREV = "Ms-Prev"
HDR_TYPE = "Ms-Type"
_WRONG_LAST_SEQ = 10071
_LAST_SEQ_RE = re.compile(r"wrong last sequence: (\d+)")
_NO_MESSAGE = 10037
_STREAM_NOT_FOUND = 10059


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
    mac: str | None = None
    """its ``Ms-Mac`` tag as stored (None: it has none)"""


class Journal:
    """Append to and read run journals.

    Large payloads (over ``objects.limits.threshold``) are stored in the object store
    at append and journaled as references (DESIGN.md §10); ``load`` and ``last`` give
    them back resolved, so readers see the values (the stored bytes keep the refs).
    """

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        *,
        timeout: float = 5.0,
        objects: Objects | None = None,
        keys: Keyring | None = None,
    ) -> None:
        self._nc = nc
        self._s = subjects
        self._timeout = timeout
        self.objects = objects or Objects(nc, subjects, timeout=timeout)
        self.keys = keys
        """tags appends and checks what ``load`` reads (None: an unkeyed deployment)"""

    def subject_for(self, event: JournalEvent) -> str:
        if isinstance(event, EffectRequested):
            return self._s.journal_effect(event.run_id, event.kind)
        if isinstance(event, TERMINAL_EVENTS):
            return self._s.journal_end(event.run_id)
        return self._s.journal(event.run_id)

    async def append(self, event: JournalEvent, *, expected_seq: int, prev: bytes) -> StoredEvent:
        """Store ``event`` as event ``event.n`` if the run's journal ends at ``expected_seq``.

        Raises ``JournalConflict`` if another writer got there first, and
        ``PayloadTooLarge`` (nothing stored) for a payload over the cap. The returned
        ``StoredEvent.event`` is ``event`` as given (values inline); its ``data`` holds
        the references of large values.
        """
        run_id = event.run_id
        data = encode_event(await self.objects.store_fields(event))
        link = chain(prev, data)
        subject = self.subject_for(event)
        mac: str | None = None
        tags = ""
        if self.keys is not None:
            mac = self.keys.tag_entry(subject, link)
            tags = f"{HDR_MAC}: {mac}\r\n"
            if isinstance(event, EffectRequested):
                tags += f"{HDR_FX_MAC}: {self.keys.tag_request(subject, link, event.kind)}\r\n"
        # the header block built at once (the hot path: one per journal event); run ids,
        # numbers, hex and type tags need no escaping
        headers = (
            f"NATS/1.0\r\nNats-Msg-Id: {run_id}:{event.n}\r\n"
            f"Nats-Expected-Last-Subject-Sequence: {expected_seq}\r\n"
            f"Nats-Expected-Last-Subject-Sequence-Subject: {self._s.journal_run_filter(run_id)}\r\n"
            f"{HDR_N}: {event.n}\r\n{HDR_PREV}: {prev.hex()}\r\n{HDR_HASH}: {link.hex()}\r\n"
            f"{HDR_TYPE}: {event_type(event)}\r\n{tags}\r\n"
        ).encode()
        ack = await publish(self._nc, subject, data, headers, timeout=self._timeout)
        if ack.error is not None:
            if ack.error.err_code == _WRONG_LAST_SEQ:
                # The server checks OCC before de-duplication, so a retry of an append
                # whose ack was lost lands here too: it is ours if the run's newest
                # message is byte-for-byte this event.
                ours = await self._already_stored(run_id, ack.error.description, data)
                if ours is not None:
                    return StoredEvent(ours.seq, event.n, prev, link, data, event, subject, mac)
                raise JournalConflict(run_id, expected_seq, ack.error.description)
            raise refused(f"journal append for run {run_id} refused", ack.error)
        if ack.duplicate:
            # Same Msg-Id already stored: our own earlier attempt (fine) or a rival
            # writer's event n (conflict). Compare the stored bytes to tell.
            stored = await self.get(ack.seq, shard=self._s.shard_of(run_id))
            if stored is None or stored.data != data:
                raise JournalConflict(run_id, expected_seq, f"event {event.n} already stored")
        return StoredEvent(ack.seq, event.n, prev, link, data, event, subject, mac)

    async def _already_stored(
        self, run_id: str, description: str, data: bytes
    ) -> StoredEvent | None:
        found = _LAST_SEQ_RE.search(description)
        if found is None:
            return None
        stored = await self.get(int(found.group(1)), shard=self._s.shard_of(run_id))
        return stored if stored is not None and stored.data == data else None

    async def run_ids(self) -> list[str]:
        """Every run with a journal, in any shard (from the streams' subject indexes),
        sorted."""
        found: set[str] = set()
        for shard in range(self._s.shards):
            stream = self._s.journal_stream_of(shard)
            subjects = await stream_subjects(self._nc, stream, self._s.journal_starts(shard))
            found |= {subject.split(".")[2] for subject in subjects}
        return sorted(found)

    async def last_seqs(self) -> list[int]:
        """Each shard's journal stream's last sequence (0: no stream, or nothing yet)."""
        return [int(state.get("last_seq", 0)) for state in await journal_states(self._nc, self._s)]

    async def last_seq(self) -> int:
        """Shard 0's journal stream's last sequence (0: no stream, or nothing yet)."""
        return (await self.last_seqs())[0]

    async def get(self, seq: int, *, shard: int = 0) -> StoredEvent | None:
        """The message at stream sequence ``seq`` of a shard's journal (direct get)."""
        return await self._direct_one(self._s.journal_stream_of(shard), {"seq": seq})

    async def last(
        self, run_id: str, *, resolve: bool = True, leader: bool = False
    ) -> StoredEvent | None:
        """The newest event of a run, whatever its subject: its terminal event when it
        ended. A direct get (fast) may be answered by a replica that is behind (a node
        just back in a cluster); ``leader`` asks the stream's leader instead."""
        req: dict[str, object] = {"last_by_subj": self._s.journal_run_filter(run_id)}
        stream = self._s.run_journal_stream(run_id)
        if leader:
            rec = await self._leader_get(stream, req)
            stored = decode_record(rec) if rec is not None else None
        else:
            stored = await self._direct_one(stream, req)
        if stored is not None and self.keys is not None:
            check_tag(self.keys, stored)
        return await self._resolved(stored) if resolve and stored is not None else stored

    async def _direct_one(self, stream: str, req: dict[str, object]) -> StoredEvent | None:
        subject = f"$JS.API.DIRECT.GET.{stream}"

        async def once() -> Msg:
            return await self._nc.request(subject, msgspec.json.encode(req), timeout=self._timeout)

        msg = await retrying(once, f"reading {stream}")
        if msg.headers and msg.headers.get("Status"):
            return None
        return _stored_from_msg(msg)

    async def load(
        self, run_id: str, *, verify: bool = True, resolve: bool = True
    ) -> list[StoredEvent]:
        """All events of a run in order (batched direct get), chain-verified.

        With ``verify`` and keys, every entry's tag is checked too (``JournalForged``).
        With ``resolve``, payloads stored by reference are fetched (and checked against
        their digests) into ``.event``; a missing or altered object is ``JournalCorrupt``.
        """
        filt = self._s.journal_run_filter(run_id)
        stream = self._s.run_journal_stream(run_id)
        records = await read_all(self._nc, stream, filt, timeout=self._timeout)
        events = [decode_record(r) for r in records]
        await self._catch_up(stream, filt, events)
        if verify:
            verify_chain(run_id, events, self.keys)
        if resolve:
            events = [await self._resolved(e) for e in events]
        return events

    async def _catch_up(self, stream: str, filt: str, events: list[StoredEvent]) -> None:
        """Direct gets may be answered by a replica that is behind (a node just back
        in a cluster): ask the leader for the run's newest entry and, if the batch
        missed any, read them from the leader. One request when nothing is missing."""
        newest = await self._leader_get(stream, {"last_by_subj": filt})
        seen = events[-1].seq if events else 0
        if newest is None or newest.seq <= seen:
            return
        while seen < newest.seq:
            rec = await self._leader_get(stream, {"seq": seen + 1, "next_by_subj": filt})
            if rec is None:
                return
            events.append(decode_record(rec))
            seen = rec.seq

    async def _leader_get(self, stream: str, req: dict[str, object]) -> Record | None:
        """One stored message, from the stream's leader (``STREAM.MSG.GET``)."""
        subject = f"$JS.API.STREAM.MSG.GET.{stream}"

        async def once() -> Record | None:  # timeouts retried: a leader may be moving
            msg = await self._nc.request(subject, msgspec.json.encode(req), timeout=self._timeout)
            answer = msgspec.json.decode(msg.data)
            error = answer.get("error")
            if error is not None:
                if error.get("err_code") in (_NO_MESSAGE, _STREAM_NOT_FOUND):
                    return None
                if error.get("code") == 503:  # no leader yet (an election): ask again
                    raise Unavailable(error.get("description", ""))
                raise ApiError(
                    subject,
                    error.get("code", 0),
                    error.get("err_code", 0),
                    error.get("description", ""),
                )
            m = answer["message"]
            raw = base64.b64decode(m.get("hdrs") or "")
            return Record(
                int(m["seq"]),
                m["subject"],
                parse_headers(raw),
                base64.b64decode(m.get("data") or ""),
            )

        return await retrying(once, f"reading {stream}")

    async def _resolved(self, stored: StoredEvent) -> StoredEvent:
        """``stored`` with its referenced payload (if any) in ``.event``."""
        try:
            event = await self.objects.resolve_fields(stored.event)
        except PayloadUnavailable as e:
            raise JournalCorrupt(stored.event.run_id, stored.n, str(e)) from e
        return stored if event is stored.event else replace(stored, event=event)


async def journal_states(nc: NATS, subjects: Subjects) -> list[dict[str, Any]]:
    """Each shard's journal stream's state (``first_seq``, ``last_seq``, ...), shard 0
    first; empty for a stream that does not exist."""
    found = []
    for stream in subjects.journal_streams:
        info = await stream_info(nc, stream)
        found.append({} if info is None else dict(info.get("state", {})))
    return found


def decode_record(rec: Record) -> StoredEvent:
    """Decode a journal record; ``JournalCorrupt`` if its headers or bytes are unreadable."""
    try:
        n = int(rec.headers[HDR_N])
        prev = bytes.fromhex(rec.headers[HDR_PREV])
        link = bytes.fromhex(rec.headers[HDR_HASH])
        event = decode_event(rec.data)
    except (KeyError, ValueError, msgspec.DecodeError) as e:
        raise JournalCorrupt(
            rec.run_id, 0, f"stream sequence {rec.seq} ({rec.subject}): {e}"
        ) from e
    return StoredEvent(
        rec.seq, n, prev, link, rec.data, event, rec.subject, rec.headers.get(HDR_MAC)
    )


def _stored_from_msg(msg: Msg) -> StoredEvent:
    headers = msg.headers or {}
    rec = Record(
        int(headers.get("Nats-Sequence", "0")), headers.get("Nats-Subject", ""), headers, msg.data
    )
    return decode_record(rec)


def check_tag(keys: Keyring, ev: StoredEvent) -> None:
    """``JournalForged`` unless a key of ``keys`` tagged ``ev`` (or it is legacy)."""
    verdict = keys.check_entry(ev.subject, ev.hash, ev.mac, ev.seq)
    if not verdict.ok:
        raise JournalForged(ev.event.run_id, ev.n, verdict.problem)


def verify_chain(run_id: str, events: list[StoredEvent], keys: Keyring | None = None) -> bytes:
    """Check positions, links and hashes of a run's events (and with ``keys`` their
    tags); return the head hash."""
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
        if keys is not None:
            check_tag(keys, ev)
        prev = ev.hash
    return prev
