"""Find runs that look stuck, from the journal and the inbox (no journal reading by hand).

A run is reported when a timer of it is overdue (by more than a grace period), when
it is parked, or when it waits on nothing — no open wait, timer, effect or child —
and has no input pending in its inbox: then nothing will ever wake it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS

from schemas import TERMINAL_EVENTS, JournalCorrupt, RunView, fold
from streams import Journal, Subjects, stream_subjects


@dataclass(frozen=True)
class Stalled:
    view: RunView
    reason: str
    inbox_pending: int


async def inbox_pending(nc: NATS, subjects: Subjects) -> dict[str, int]:
    """Messages waiting in the inboxes, per run (from each shard's inbox stream's
    subject index)."""
    counts: dict[str, int] = {}
    for shard in range(subjects.shards):
        stream = subjects.inbox_stream_of(shard)
        found = await stream_subjects(nc, stream, subjects.inbox_all())
        for subject, n in found.items():
            run_id = subjects.parse_inbox(subject)[0]
            counts[run_id] = counts.get(run_id, 0) + int(n)
    return counts


async def stalled_runs(
    nc: NATS,
    subjects: Subjects,
    journal: Journal | None = None,
    *,
    grace_s: float = 30.0,
    now: datetime | None = None,
) -> list[Stalled]:
    """Every run of the deployment that has not ended and looks stuck, with why."""
    journal = journal or Journal(nc, subjects)
    pending = await inbox_pending(nc, subjects)
    at = now or datetime.now(UTC)
    out: list[Stalled] = []
    for run_id in await journal.run_ids():
        try:
            last = await journal.last(run_id)
        except JournalCorrupt as e:  # its worker holds it: stuck until someone looks
            events = await journal.load(run_id, verify=False)
            view = fold([s.event for s in events[: max(e.n - 1, 1)]])
            held = f"{e}; its worker holds it (`mainspring audit verify {run_id}`)"
            out.append(Stalled(view, held, pending.get(run_id, 0)))
            continue
        if last is None or isinstance(last.event, TERMINAL_EVENTS):
            continue
        events = await journal.load(run_id, verify=False)
        view = fold([e.event for e in events])
        waiting = pending.get(run_id, 0)
        stall = view.stall(now=at, inbox_pending=waiting, grace=timedelta(seconds=grace_s))
        if stall is not None:
            out.append(Stalled(view, stall, waiting))
    return out
