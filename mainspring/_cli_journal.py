"""Answers for one run straight from its journal, shaped like the projections' answers.

``status`` and ``inspect`` read the Postgres projections when a DSN is configured;
without one they read the journal (the source of truth) through ``JournalQueries``,
which has the same methods for one run as ``projections.Queries``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from projections import EventRow, RunRow
from schemas import EffectState, RunView, event_type
from streams import Journal, StoredEvent


def row_of(view: RunView) -> RunRow:
    """The ``runs`` row the projector would write for this view."""
    fx = view.effects.values()
    return RunRow(
        run_id=view.run_id,
        workflow=view.workflow,
        version=view.version,
        status=view.status,
        input=msgspec.json.decode(view.input),
        output=None if view.output is None else msgspec.json.decode(view.output),
        error=None if view.error is None else msgspec.to_builtins(view.error),
        parent_run_id=view.parent_run_id,
        events=view.events,
        effects_total=len(view.effects),
        effects_completed=sum(1 for e in fx if e.status == EffectState.COMPLETED),
        effects_failed=sum(1 for e in fx if e.status == EffectState.FAILED),
        waiting_for=view.waiting_for,
        started_at=view.started_at,
        updated_at=view.updated_at,
        ended_at=view.ended_at,
        head_hash=view.head_hash,
        tokens=view.tokens,
        cost_usd=view.cost_usd,
    )


class JournalQueries:
    """One run's row, events, effects and waits, folded from its journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._cache: dict[str, tuple[list[StoredEvent], RunView]] = {}

    async def _load(self, run_id: str) -> tuple[list[StoredEvent], RunView] | None:
        if run_id not in self._cache:
            stored = await self.journal.load(run_id)
            if not stored:
                return None
            view = RunView(run_id)
            for s in stored:
                view.apply(s.event, s.hash)
            self._cache[run_id] = (stored, view)
        return self._cache[run_id]

    async def run(self, run_id: str) -> RunRow | None:
        loaded = await self._load(run_id)
        return None if loaded is None else row_of(loaded[1])

    async def events(self, run_id: str) -> list[EventRow]:
        loaded = await self._load(run_id)
        return [
            EventRow(s.n, s.seq, event_type(s.event), s.data, s.prev, s.hash, s.event.at)
            for s in (loaded[0] if loaded else [])
        ]

    async def effects(self, run_id: str) -> list[dict[str, Any]]:
        loaded = await self._load(run_id)
        if loaded is None:
            return []
        return [
            {
                "effect_id": fx.effect_id,
                "run_id": run_id,
                "seq": fx.seq,
                "kind": fx.kind,
                "status": fx.status,
                "attempts": fx.attempts,
                "requested_at": fx.requested_at,
                "finished_at": fx.finished_at,
                "latency_ms": fx.latency_ms,
                "error": None if fx.error is None else msgspec.json.encode(fx.error).decode(),
                "input_tokens": fx.input_tokens,
                "output_tokens": fx.output_tokens,
                "cost_usd": fx.cost_usd,
            }
            for fx in sorted(loaded[1].effects.values(), key=lambda f: f.seq)
        ]

    async def waits(self, run_id: str) -> list[dict[str, Any]]:
        loaded = await self._load(run_id)
        if loaded is None:
            return []
        return [
            {
                "run_id": run_id,
                "seq": w.seq,
                "name": w.name,
                "status": w.status,
                "since": w.since,
                "deadline": w.deadline,
                "event_id": w.event_id,
            }
            for w in sorted(loaded[1].waits.values(), key=lambda w: w.seq)
        ]
