"""Journal append/load on a real JetStream: OCC, idempotent retries, hash chain, partitions."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS

from client import Client
from schemas import (
    JournalConflict,
    JournalCorrupt,
    JournalEvent,
    RunCompleted,
    RunStarted,
    StepCompleted,
)
from streams import GENESIS, HDR_TYPE, Journal, Subjects, ensure_topology, partition_of
from tests.harness import sharded  # noqa: F401  (the shards fixture: 1 and 4)

pytestmark = pytest.mark.anyio
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _started(run_id: str) -> RunStarted:
    return RunStarted(run_id=run_id, n=1, at=NOW, workflow="w", version="1")


def _step(run_id: str, n: int, seq: int, value: int) -> StepCompleted:
    return StepCompleted(
        run_id=run_id, n=n, at=NOW, seq=seq, name="s", result=msgspec.Raw(str(value).encode())
    )


async def test_stale_writer_gets_conflict(nc: NATS, subjects: Subjects) -> None:
    """A second writer appending at an old position is refused (no fork)."""
    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    first = await j.append(_started("r1"), expected_seq=0, prev=GENESIS)
    second = await j.append(_step("r1", 2, 1, 1), expected_seq=first.seq, prev=first.hash)
    with pytest.raises(JournalConflict):
        await j.append(_step("r1", 2, 1, 99), expected_seq=first.seq, prev=first.hash)
    with pytest.raises(JournalConflict):  # a brand-new run id that already exists
        await j.append(_started("r1"), expected_seq=0, prev=GENESIS)
    events = await j.load("r1")
    assert [e.seq for e in events] == [first.seq, second.seq]


async def test_retry_of_same_append_is_idempotent(nc: NATS, subjects: Subjects) -> None:
    """Re-sending an append whose ack was lost stores nothing twice; different bytes conflict."""
    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    first = await j.append(_started("r2"), expected_seq=0, prev=GENESIS)
    step = _step("r2", 2, 1, 1)
    a = await j.append(step, expected_seq=first.seq, prev=first.hash)
    # same Msg-Id and bytes, OCC check against the original position: dedup answers
    b = await j.append(step, expected_seq=first.seq, prev=first.hash)
    assert a.seq == b.seq
    assert len(await j.load("r2")) == 2


async def test_effect_requests_share_the_run_journal(nc: NATS, subjects: Subjects) -> None:
    """OCC spans the run's effect subjects too (the -Subject header variant)."""
    from schemas import EffectRequested

    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    first = await j.append(_started("r3"), expected_seq=0, prev=GENESIS)
    fx = EffectRequested(run_id="r3", n=2, at=NOW, seq=1, effect_id="r3.fx.1", kind="llm.chat")
    stored = await j.append(fx, expected_seq=first.seq, prev=first.hash)
    assert stored.subject == subjects.journal_effect("r3", "llm.chat")
    with pytest.raises(JournalConflict):  # stale position, different subject of the same run
        await j.append(_step("r3", 2, 1, 5), expected_seq=first.seq, prev=first.hash)
    assert [e.n for e in await j.load("r3")] == [1, 2]


async def test_load_detects_a_wrong_link(nc: NATS, subjects: Subjects) -> None:
    """A journal written with a wrong hash link fails verification at load, naming the event."""
    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    first = await j.append(_started("r4"), expected_seq=0, prev=GENESIS)
    await j.append(_step("r4", 2, 1, 1), expected_seq=first.seq, prev=b"\x01" * 32)
    with pytest.raises(JournalCorrupt, match="event 2"):
        await j.load("r4")


async def test_partition_function_matches_server_transform(nc: NATS, subjects: Subjects) -> None:
    """Our FNV-1a partition equals the server's {{partition(N,1)}} for every run id tried."""
    await ensure_topology(nc, subjects)
    js = nc.jetstream()
    ids = [f"run-{i}" for i in range(40)] + ["A", "z_9", "x" * 128]
    for rid in ids:
        await js.publish(subjects.event(rid, "ping"), b"{}")
        msg = await js.get_last_msg(subjects.inbox_stream, f"{subjects.prefix}.in.*.{rid}.ev.ping")
        assert msg.subject == f"{subjects.prefix}.in.{partition_of(rid, 4)}.{rid}.ev.ping"


class _EndOnEventSubject(Journal):
    """A journal as written before terminal events had a subject of their own."""

    def subject_for(self, event: JournalEvent) -> str:
        if isinstance(event, RunCompleted):
            return self._s.journal(event.run_id)
        return super().subject_for(event)


def _completed(run_id: str, n: int, output: bytes) -> RunCompleted:
    return RunCompleted(run_id=run_id, n=n, at=NOW, output=msgspec.Raw(output))


async def test_the_end_is_stored_and_announced_on_its_own_subject(
    nc: NATS, subjects: Subjects
) -> None:
    """A waiting client hears of a run's end alone, not of each of its events."""
    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    heard = await nc.subscribe(subjects.watch_end("r5"))
    head = await j.append(_started("r5"), expected_seq=0, prev=GENESIS)
    for n in range(2, 5):
        head = await j.append(_step("r5", n, n - 1, n), expected_seq=head.seq, prev=head.hash)
    end = await j.append(_completed("r5", 5, b"7"), expected_seq=head.seq, prev=head.hash)
    assert end.subject == subjects.journal_end("r5")
    note = await heard.next_msg(timeout=5)
    assert note.subject == subjects.watch_end("r5")
    assert (note.headers or {})[HDR_TYPE] == "run.completed"
    assert [e.n for e in await j.load("r5")] == [1, 2, 3, 4, 5]  # one chain over the subjects
    last = await j.last("r5")
    assert last is not None
    assert last.n == 5
    assert await Client(nc, subjects).result("r5", timeout=5) == 7


async def test_result_reads_journals_written_before_the_end_subject(
    nc: NATS, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run ended by an older worker (its end on the event subject, announced where a
    new client does not listen) is found at once when it had ended, and by the
    client's look after RECHECK_S when it ends while the client waits."""
    import client._client

    monkeypatch.setattr(client._client, "RECHECK_S", 0.2)
    await ensure_topology(nc, subjects)
    old = _EndOnEventSubject(nc, subjects)
    c = Client(nc, subjects)
    first = await old.append(_started("r6"), expected_seq=0, prev=GENESIS)
    await old.append(_completed("r6", 2, b"1"), expected_seq=first.seq, prev=first.hash)
    assert await c.result("r6", timeout=5) == 1

    first = await old.append(_started("r7"), expected_seq=0, prev=GENESIS)
    async with anyio.create_task_group() as tg:
        got: list[object] = []

        async def wait() -> None:
            got.append(await c.result("r7", timeout=10))

        tg.start_soon(wait)
        await old.append(_completed("r7", 2, b"2"), expected_seq=first.seq, prev=first.hash)
    assert got == [2]


async def test_publish_where_no_stream_listens_is_a_clear_error(nc: NATS) -> None:
    """JetStream's 'no responders' (no stream yet, an election) is retried, then named."""
    from schemas import ConnectionFailed
    from streams import publish

    with pytest.raises(ConnectionFailed, match=r"no answer.*NoResponders"):
        await publish(nc, "nostream.x", b"1", {"Nats-Msg-Id": "x"}, retry_for=0.5)


async def test_journal_history_cannot_be_purged_or_deleted(nc: NATS, subjects: Subjects) -> None:
    """Neither the whole journal, nor one run's subjects, nor one message can be removed
    through the JetStream API: the server refuses (deny_purge, deny_delete)."""
    from streams import ApiError, api_request

    await ensure_topology(nc, subjects)
    j = Journal(nc, subjects)
    first = await j.append(_started("r9"), expected_seq=0, prev=GENESIS)
    stream = subjects.run_journal_stream("r9")
    for body in ({}, {"filter": subjects.journal_run_filter("r9")}):
        with pytest.raises(ApiError, match="purge not permitted"):
            await api_request(nc, f"$JS.API.STREAM.PURGE.{stream}", body)
    with pytest.raises(ApiError, match="delete"):
        await api_request(nc, f"$JS.API.STREAM.MSG.DELETE.{stream}", {"seq": first.seq})
    assert [e.n for e in await j.load("r9")] == [1]
