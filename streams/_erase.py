"""Erasing runs on request: their journal entries removed, everything else unchanged.

The journal denies deletes and purges, and NATS cannot lift that, so erasing a run
rebuilds the stream (DESIGN.md §9, docs/security.md "Erasing a run"):

1. **Copy** every entry, in order, into a side stream ``<JOURNAL>_ERASING``; each entry
   of an erased run is replaced by a *placeholder* (subject ``<prefix>.j.~erased.gone``,
   the run id as its body, tagged with the deployment key). The side stream's first
   message holds the plan: the journal's config, its consumers with their positions,
   and what is erased.
2. **Swap**: delete the journal stream, create it again from the plan, and copy the
   side stream back. Every entry lands at its original stream sequence (each publish
   states the sequence it expects), so chain links, tags, key thresholds
   (``legacy_until``, revocations), the projector's position and checkpoints all stay
   true. The journal's consumers (effect handlers') are created again where they were.
3. **Record** the erasure in the run index: the run's entry becomes an erasure record
   (when, why, how many entries, the hash of the last one), which ``audit verify --all``
   reports; a placeholder with no record is reported as a removal nobody recorded.

Every deployment process must be stopped meanwhile (checked: no live worker, no
connected consumer). A crash anywhere is finished by running the same command again:
where it stopped is read from the two streams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS

from schemas import ConfigError, JournalError
from streams._jsapi import ApiError, api_request, consumer_infos, purge_subject, stream_info
from streams._keys import HDR_MAC, Keyring
from streams._publish import publish_checked
from streams._records import Record, read_all, read_records
from streams._subjects import Subjects

ERASED_TOKEN = "~erased"
"""the run-id token of placeholders: no run id can be it (``~`` is not allowed in one)"""
HDR_ERASED = "Ms-Erased"
_SERVER_HEADERS = (
    "Nats-Stream",
    "Nats-Sequence",
    "Nats-Time-Stamp",
    "Nats-Subject",
    "Nats-Last-Sequence",
    "Nats-Num-Pending",
    "Nats-UpTo-Sequence",
)
"""headers a direct get adds to a stored message: not part of it"""


class Erasure(msgspec.Struct, frozen=True, kw_only=True):
    """What the run index keeps of an erased run: that it existed and was erased."""

    run_id: str
    erased_at: str
    reason: str
    entries: int
    head_hash: str
    """hex hash-chain link of the run's last entry: what was removed, without its content"""


class _Consumer(msgspec.Struct, frozen=True):
    config: dict[str, Any]
    next_seq: int


class _Plan(msgspec.Struct, frozen=True):
    config: dict[str, Any]
    first_seq: int
    last_seq: int
    consumers: list[_Consumer]
    erasures: list[Erasure]


_plan_codec = msgspec.json.Decoder(_Plan)
_Publish = tuple[str, bytes, dict[str, str], int]
"""subject, data, headers, and the stream sequence it must follow"""


async def purge_run_inputs(nc: NATS, subjects: Subjects, run_id: str) -> int:
    """Remove what the other streams hold of a run: inbox inputs, timers, dead letters,
    its active-runs entry. How many messages went."""
    inbox = subjects.inbox_stream_of(subjects.shard_of(run_id))
    inputs = f"{subjects.prefix}.in.{subjects.partition(run_id)}.{run_id}.>"
    where = [
        (inbox, inputs),
        (inbox, subjects.schedule_run(run_id)),
        (subjects.dead_letter_stream, subjects.dead_letter("*", run_id)),
        (subjects.active_stream, subjects.active(run_id)),
    ]
    if inbox != subjects.inbox_stream:  # its published events: shard 0 takes them in
        where.append((subjects.inbox_stream, inputs))
    return sum([await purge_subject(nc, stream, f, missing_ok=True) for stream, f in where])


def placeholder_subject(subjects: Subjects, shard: int = 0) -> str:
    return subjects.journal_placeholder(shard, ERASED_TOKEN)


def is_placeholder(subject: str) -> bool:
    return subject.split(".", 3)[2:3] == [ERASED_TOKEN]


def erasure_record(data: bytes) -> Erasure | None:
    """The erasure an index entry's body records (None: an ordinary entry)."""
    if not data.startswith(b"{"):
        return None
    try:
        return msgspec.json.decode(data, type=Erasure)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


async def erase_runs(
    nc: NATS,
    subjects: Subjects,
    keys: Keyring | None,
    run_ids: Iterable[str],
    reason: str,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Erasure]:
    """Erase runs from every shard's journal they are in (and finish an erasure a crash
    cut short in any shard); what was erased."""
    by_shard: dict[int, list[str]] = {}
    for rid in run_ids:
        by_shard.setdefault(subjects.shard_of(rid), []).append(rid)
    done: list[Erasure] = []
    for shard in range(subjects.shards):
        eraser = JournalEraser(nc, subjects, keys, progress, shard=shard)
        if shard in by_shard or await eraser.pending():
            done += await eraser.erase(by_shard.get(shard, []), reason)
    return done


class JournalEraser:
    """Erase runs from one shard of a stopped deployment's journal; ``progress`` hears
    each step."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        keys: Keyring | None,
        progress: Callable[[str], None] = lambda _: None,
        *,
        shard: int = 0,
    ) -> None:
        self._nc = nc
        self._s = subjects
        self._keys = keys
        self._say = progress
        self._shard = shard
        self._stream = subjects.journal_stream_of(shard)
        self._side = f"{self._stream}_ERASING"
        self._side_prefix = f"{subjects.prefix}.erasing{shard or ''}"

    async def pending(self) -> bool:
        """An erasure of this shard was cut short (its side stream is still there)."""
        return await stream_info(self._nc, self._side) is not None

    async def erase(self, run_ids: Iterable[str], reason: str) -> list[Erasure]:
        """Erase the runs' entries (finishing an erasure a crash cut short first); what
        was erased, finished erasures included."""
        journal = await stream_info(self._nc, self._stream)
        side = await stream_info(self._nc, self._side)
        finished: list[Erasure] = []
        if side is not None:
            plan = await self._read_plan()
            if journal is not None and journal["created"] < side["created"]:
                self._say("an earlier erasure stopped before the swap: starting it again")
                await self._delete(self._side)
            else:
                self._say("finishing an earlier erasure that stopped during the swap")
                await self._swap(plan, journal is None)
                journal = await stream_info(self._nc, self._stream)
                finished = plan.erasures
        if journal is None:
            raise ConfigError(f"no journal stream {self._stream} to erase runs from")
        wanted = sorted(set(run_ids) - {e.run_id for e in finished})
        if not wanted:
            return finished
        plan = await self._plan(journal, wanted, reason)
        await self._copy_out(plan)
        await self._swap(plan, False)
        return finished + plan.erasures

    async def _plan(self, journal: dict[str, Any], run_ids: list[str], reason: str) -> _Plan:
        consumers = await self._consumers()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        erasures = []
        for rid in run_ids:
            records = await read_all(self._nc, self._stream, self._s.journal_run_filter(rid))
            if not records:
                raise ConfigError(
                    f"run {rid} has no journal entries (erased already, or never ran)"
                )
            last = records[-1]
            erasures.append(
                Erasure(
                    run_id=rid,
                    erased_at=now,
                    reason=reason,
                    entries=len(records),
                    head_hash=last.headers.get("Ms-Hash", ""),
                )
            )
        state = journal["state"]
        return _Plan(
            config=journal["config"],
            first_seq=int(state["first_seq"]),
            last_seq=int(state["last_seq"]),
            consumers=consumers,
            erasures=erasures,
        )

    async def _consumers(self) -> list[_Consumer]:
        """The journal's consumers and where each is; refuses while one has a reader."""
        found: list[_Consumer] = []
        for info in await consumer_infos(self._nc, self._stream):
            if not info["config"].get("durable_name"):
                continue  # an ephemeral reader's (an audit's): it goes with its reader
            if info.get("num_waiting", 0) or info.get("push_bound"):
                raise ConfigError(
                    f"consumer {info['name']} of {self._stream} has a reader "
                    "connected (a handler?): stop every worker, handler and projector "
                    "of this deployment before erasing"
                )
            floor = int(info.get("ack_floor", {}).get("stream_seq", 0))
            found.append(_Consumer(info["config"], floor + 1))
        return found

    async def _copy_out(self, plan: _Plan) -> None:
        erased = {e.run_id for e in plan.erasures}
        await api_request(
            self._nc,
            f"$JS.API.STREAM.CREATE.{self._side}",
            {
                "name": self._side,
                "description": "Mainspring: a journal being rebuilt without erased runs",
                "subjects": [f"{self._side_prefix}.>"],
                "storage": plan.config.get("storage", "file"),
                "num_replicas": plan.config.get("num_replicas", 1),
                "retention": "limits",
                "allow_direct": True,
            },
        )
        await self._publish(f"{self._side_prefix}.plan", msgspec.json.encode(plan), {}, 0)
        copied, replaced = 0, 0
        start = plan.first_seq
        while start <= plan.last_seq:
            records, _ = await read_records(
                self._nc, self._stream, self._s.journal_all(self._shard), start
            )
            if not records:
                break
            page: list[_Publish] = []
            for rec in records:
                if rec.seq > plan.last_seq:
                    break
                if rec.seq != start:
                    raise JournalError(
                        f"{self._stream} has no message at sequence {start}: "
                        "not erasing (a journal with gaps cannot be rebuilt seq for seq)"
                    )
                subject, data, headers = rec.subject, rec.data, _stored(rec)
                if rec.run_id in erased:
                    subject, data = placeholder_subject(self._s, self._shard), rec.run_id.encode()
                    headers = {HDR_ERASED: rec.run_id}
                    if self._keys is not None:
                        headers[HDR_MAC] = self._keys.tag_index(subject, data)
                    replaced += 1
                side = f"{self._side_prefix}.{subject}"
                page.append((side, data, headers, 1 + rec.seq - plan.first_seq))
                copied += 1
                start += 1
            await self._publish_page(page)
            self._say(f"copied {copied} of {plan.last_seq - plan.first_seq + 1} entries")
        if start != plan.last_seq + 1:
            raise JournalError(f"{self._stream} ended at {start - 1}, not erasing")
        self._say(f"copy done: {replaced} entries of {len(erased)} run(s) replaced")

    async def _swap(self, plan: _Plan, journal_gone: bool) -> None:
        config = {k: v for k, v in plan.config.items() if k != "republish"}
        if not journal_gone:
            journal = await stream_info(self._nc, self._stream)
            side = await stream_info(self._nc, self._side)
            assert side is not None
            if journal is not None and journal["created"] < side["created"]:
                await self._delete(self._stream)  # the point of no return
                journal = None
            if journal is None:
                journal_gone = True
        if journal_gone:
            await api_request(
                self._nc,
                f"$JS.API.STREAM.CREATE.{self._stream}",
                {**config, "first_seq": plan.first_seq},
            )
        info = await stream_info(self._nc, self._stream)
        assert info is not None
        start = int(info["state"]["last_seq"]) + 1  # where an interrupted copy stopped
        total = plan.last_seq - plan.first_seq + 1
        while start <= plan.last_seq:
            side_seq = 2 + start - plan.first_seq
            records, _ = await read_records(
                self._nc, self._side, f"{self._side_prefix}.>", side_seq
            )
            if not records:
                raise JournalError(f"{self._side} lacks entry {start}: keep it and report this")
            page = []
            for rec in records:
                subject = rec.subject.removeprefix(f"{self._side_prefix}.")
                page.append((subject, rec.data, _stored(rec), start - 1))
                start += 1
            await self._publish_page(page)
            self._say(f"restored {start - plan.first_seq} of {total} entries")
        if "republish" in plan.config:
            await api_request(
                self._nc,
                f"$JS.API.STREAM.UPDATE.{self._stream}",
                plan.config | {"first_seq": plan.first_seq},
            )
        for consumer in plan.consumers:
            await self._restore(consumer)
        await self._record(plan.erasures)
        await self._delete(self._side)
        self._say("journal rebuilt; erasure recorded in the run index")

    async def _restore(self, consumer: _Consumer) -> None:
        config = dict(consumer.config)
        for field in ("opt_start_time", "opt_start_seq"):
            config.pop(field, None)
        config |= {"deliver_policy": "by_start_sequence", "opt_start_seq": consumer.next_seq}
        name = config["durable_name"]
        subject = f"$JS.API.CONSUMER.CREATE.{self._stream}.{name}"
        if config.get("filter_subject"):
            subject += f".{config['filter_subject']}"
        try:
            await api_request(self._nc, subject, {"stream_name": self._stream, "config": config})
        except ApiError as e:
            if "already in use" not in e.description and "exists" not in e.description:
                raise

    async def _record(self, erasures: list[Erasure]) -> None:
        if await stream_info(self._nc, self._s.index_stream) is None:
            return  # no run index in this deployment: the placeholders are the record
        for erasure in erasures:
            subject = self._s.index(erasure.run_id)
            body = msgspec.json.encode(erasure)
            headers = {"Nats-Msg-Id": f"erased:{erasure.run_id}"}
            if self._keys is not None:
                headers[HDR_MAC] = self._keys.tag_index(subject, body)
            await publish_checked(self._nc, subject, body, headers)

    async def _read_plan(self) -> _Plan:
        records, _ = await read_records(
            self._nc, self._side, f"{self._side_prefix}.plan", 1, size=1
        )
        if not records:
            raise JournalError(f"{self._side} has no plan: delete it (`nats stream rm`) and retry")
        return _plan_codec.decode(records[0].data)

    async def _publish(
        self, subject: str, data: bytes, headers: dict[str, str], expected_last: int
    ) -> None:
        checked = {**headers, "Nats-Expected-Last-Sequence": str(expected_last)}
        await publish_checked(self._nc, subject, data, checked)

    async def _publish_page(self, page: list[_Publish]) -> None:
        """Publish a page pipelined: sent in order on one connection, acks awaited
        together. Each states the sequence it must land at, so a message out of place
        is refused (and the erasure, run again, goes on from where the stream ends)."""
        async with anyio.create_task_group() as tg:
            for subject, data, headers, expected_last in page:
                tg.start_soon(self._publish, subject, data, headers, expected_last)

    async def _delete(self, stream: str) -> None:
        await api_request(self._nc, f"$JS.API.STREAM.DELETE.{stream}")


def _stored(rec: Record) -> dict[str, str]:
    """A record's own headers: what was published with it, minus what the server adds
    (and minus stored expectations, which the copy states afresh)."""
    return {
        k: v
        for k, v in rec.headers.items()
        if k not in _SERVER_HEADERS and not k.startswith("Nats-Expected-")
    }
