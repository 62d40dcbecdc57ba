"""The projector: journal stream → Postgres, exactly once.

It reads the journal in stream order from its last committed position (batched
direct gets; no consumer state on the server), folds each run's events into a
``RunView``, and writes event rows, run rows, effects, waits, checkpoints *and*
its new position in one transaction. After a crash it resumes from the committed
position, so nothing is lost or doubled. Postgres down: the batch is retried
with backoff until it commits; runs are unaffected (they never wait for us).
When caught up it sleeps until the journal's republish subject says there is more.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import asyncpg
import msgspec
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from projections._checkpoints import Signer
from projections._schema import migrate
from schemas import (
    TERMINAL_EVENTS,
    ConfigError,
    EffectState,
    EffectView,
    JournalCorrupt,
    RunView,
    decode_event,
    event_type,
)
from streams import (
    Keyring,
    Record,
    StoredEvent,
    Subjects,
    dead_letter,
    decode_record,
    ensure_topology,
    is_placeholder,
    journal_states,
    read_records,
)

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    from projections._schema import Conn

log = structlog.get_logger()

_INSERT_RUN = """
INSERT INTO runs (run_id, workflow, version, status, input, output, error, parent_run_id,
    depth, events, effects_total, effects_completed, effects_failed, waiting_for,
    started_at, updated_at, ended_at, head_seq, head_hash, tokens, cost_usd)
VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21)
ON CONFLICT (run_id) DO UPDATE SET
    status = EXCLUDED.status, output = EXCLUDED.output, error = EXCLUDED.error,
    events = EXCLUDED.events, effects_total = EXCLUDED.effects_total,
    effects_completed = EXCLUDED.effects_completed, effects_failed = EXCLUDED.effects_failed,
    waiting_for = EXCLUDED.waiting_for, updated_at = EXCLUDED.updated_at,
    ended_at = EXCLUDED.ended_at, head_seq = EXCLUDED.head_seq, head_hash = EXCLUDED.head_hash,
    tokens = EXCLUDED.tokens, cost_usd = EXCLUDED.cost_usd
"""
_UPSERT_EFFECT = """
INSERT INTO effects (effect_id, run_id, seq, kind, status, attempts, requested_at,
    finished_at, latency_ms, error, input_tokens, output_tokens, cost_usd)
VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)
ON CONFLICT (effect_id) DO UPDATE SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
    finished_at = EXCLUDED.finished_at, latency_ms = EXCLUDED.latency_ms, error = EXCLUDED.error,
    input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
    cost_usd = EXCLUDED.cost_usd
"""
_UPSERT_WAIT = """
INSERT INTO waits (run_id, seq, name, status, since, deadline, event_id)
VALUES ($1,$2,$3,$4,$5,$6,$7)
ON CONFLICT (run_id, seq) DO UPDATE SET status = EXCLUDED.status, event_id = EXCLUDED.event_id
"""
_EVENT_COLUMNS = ("run_id", "n", "stream_seq", "type", "data", "prev_hash", "hash", "at")


_SAVE_POSITION = (
    "INSERT INTO projector_positions (name, stream_seq, event_at, updated_at) "
    "VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO UPDATE SET "
    "stream_seq = EXCLUDED.stream_seq, event_at = COALESCE(EXCLUDED.event_at, "
    "projector_positions.event_at), updated_at = now()"
)
_REFUSED = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
"""PostgreSQL errors about the data itself: the same batch would fail again forever."""


def _json(raw: msgspec.Raw | None) -> str | None:
    """JSON text for a jsonb column. PostgreSQL's jsonb cannot hold U+0000, which JSON
    allows: such a value is stored with U+FFFD in its place (the exact bytes stay in
    ``run_events.data``, which the audit chain covers)."""
    if raw is None:
        return None
    data = bytes(raw)
    if b"\\u0000" in data:
        data = msgspec.json.encode(_without_nul(msgspec.json.decode(data)))
    return data.decode()


def _without_nul(value: object) -> object:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def _error_json(error: object) -> str | None:
    return None if error is None else msgspec.json.encode(error).decode()


@dataclass
class ProjectorStats:
    """What the projector has done (for `mainspring projector` status and benchmarks)."""

    position: int = 0
    """the sum of the shards' positions (with one shard: the journal stream sequence)"""
    positions: dict[int, int] = field(default_factory=dict)
    """the last journal stream sequence projected, by shard"""
    events: int = 0
    batches: int = 0
    undecodable: int = 0
    forged: int = 0
    """journal entries no worker of the deployment tagged (not projected)"""
    dead_lettered: int = 0
    """journal records PostgreSQL refused (or that do not decode): see the dead letters"""
    last_commit_lag_s: float = 0.0
    lag_samples: list[float] = field(default_factory=list)
    keep_samples: bool = False


class Projector:
    def __init__(
        self,
        nc: NATS,
        pool: asyncpg.Pool,
        subjects: Subjects | None = None,
        *,
        name: str = "main",
        batch_size: int = 1000,
        signer: Signer | None = None,
        max_views: int = 10_000,
        keys: Keyring | None = None,
        shards: Iterable[int] | None = None,
    ) -> None:
        self.nc = nc
        self.pool = pool
        self.subjects = subjects or Subjects()
        self.name = name
        self.shards = sorted(set(range(self.subjects.shards) if shards is None else shards))
        """the shards this projector folds (each with a position of its own)"""
        if not self.shards or not set(self.shards) <= set(range(self.subjects.shards)):
            raise ConfigError(
                f"shards {self.shards} are not shards of this deployment "
                f"(0 to {self.subjects.shards - 1})"
            )
        self.batch_size = batch_size
        self.signer = signer
        self.max_views = max_views
        self.keys = keys
        """with keys, an entry no worker of the deployment tagged is not projected"""
        self.stats = ProjectorStats()
        self._views: OrderedDict[str, RunView] = OrderedDict()
        self._more = anyio.Event()
        self._active: list[int] = self.shards
        """the shards projected now: all of ``shards`` (``catch_up``), or those whose
        lock this process holds (``run``)"""

    @property
    def held(self) -> list[int]:
        """The shards this projector projects now."""
        return list(self._active)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Project until cancelled; sleeps on the journal's republish subject when idle.

        Projectors of the same name split the shards between them: each shard is
        projected by the process holding its PostgreSQL advisory lock (``_ShardLocks``),
        and each takes its fair share; a shard whose holder's connection ends is taken
        by another within ``share_every_s``."""
        await self._prepare()
        if self.signer is None:
            log.warning("projector_unsigned", hint="set MAINSPRING_SIGNING_KEY to sign checkpoints")

        async def wake(_msg: Msg) -> None:
            self._more.set()

        locks = _ShardLocks(self, self.shards)
        self._active = []  # none until the locks say which
        sub = await self.nc.subscribe(self.subjects.watch_all(), cb=wake)
        next_report = anyio.current_time()
        try:
            async with locks, anyio.create_task_group() as tg:
                await tg.start(locks.keep)
                task_status.started()
                await self._loop(next_report)
        finally:
            with anyio.CancelScope(shield=True):
                await sub.unsubscribe()

    async def _loop(self, next_report: float) -> None:
        while True:
            pending = await self._step()
            next_report = self._report(pending, next_report)
            if not pending:
                with anyio.move_on_after(1.0):  # fallback if a wake-up was missed
                    await self._more.wait()
                self._more = anyio.Event()

    async def _take(self, shard: int) -> None:
        """Start projecting a shard (its lock just taken): from its committed position,
        where another process may have left it."""
        async with self.pool.acquire() as conn:
            self._moved(shard, await self._position(conn, shard))
        self._active = sorted({*self._active, shard})
        self._more.set()

    def _drop(self, shard: int) -> None:
        self._active = [k for k in self._active if k != shard]

    async def catch_up(self) -> int:
        """Project everything stored so far, then return the position (for rebuild/tests)."""
        await self._prepare()
        while await self._step():
            pass
        return self.stats.position

    def position_name(self, shard: int) -> str:
        """The ``projector_positions`` row of a shard (shard 0's is the projector's name,
        as it was before shards)."""
        return position_name(self.name, shard)

    async def _prepare(self) -> None:
        """Streams and schema exist; resume each shard from its committed position."""
        await ensure_topology(self.nc, self.subjects)
        async with self.pool.acquire() as conn:
            await migrate(conn)
            for shard in self.shards:
                # the row exists before any batch: a commit locks it (see _commit)
                await conn.execute(
                    "INSERT INTO projector_positions (name, stream_seq) VALUES ($1, 0) "
                    "ON CONFLICT (name) DO NOTHING",
                    self.position_name(shard),
                )
                self.stats.positions[shard] = await self._position(conn, shard)
        self.stats.position = sum(self.stats.positions.values())
        await self._check_not_ahead()

    async def _check_not_ahead(self) -> None:
        """Refuse projections that are past the end of the journal: restored from a
        PostgreSQL dump newer than the streams' backup, entries appended from now on
        would land at sequences the projector believes done, and never be projected."""
        states = await journal_states(self.nc, self.subjects)
        for shard in self.shards:
            last = int(states[shard].get("last_seq", 0))
            if self.stats.positions[shard] > last:
                raise ConfigError(
                    f"the projections ({self.position_name(shard)!r}) are at journal "
                    f"sequence {self.stats.positions[shard]}, past the end of "
                    f"{self.subjects.journal_stream_of(shard)} ({last}): PostgreSQL holds "
                    "more than the streams (restored from a newer dump than the streams' "
                    "backup?). Rebuild them from the journal: `mainspring projections "
                    "rebuild --yes`"
                )

    async def _position(self, conn: Conn, shard: int) -> int:
        pos = await conn.fetchval(
            "SELECT stream_seq FROM projector_positions WHERE name = $1",
            self.position_name(shard),
        )
        return int(pos or 0)

    async def _step(self) -> int:
        """Project the next batch of each shard; return how many journal events are
        still behind."""
        behind = 0
        for shard in self._active:
            records, pending = await read_records(
                self.nc,
                self.subjects.journal_stream_of(shard),
                self.subjects.journal_all(shard),
                self.stats.positions[shard] + 1,
                size=self.batch_size,
            )
            if records:
                await self._commit_with_retry(records, shard)
            behind += pending
        return behind

    def _report(self, pending: int, due: float) -> float:
        """Log progress and lag every few seconds while there is work."""
        now = anyio.current_time()
        if now < due or (not pending and not self.stats.batches):
            return due
        st = self.stats
        log.info(
            "projector_progress",
            position=st.position,
            events=st.events,
            behind=pending,
            lag_s=round(st.last_commit_lag_s, 3),
        )
        return now + 5.0

    async def _commit_with_retry(self, records: list[Record], shard: int) -> None:
        delay = 0.2
        while True:
            try:
                await self._commit(records, shard)
                return
            except _Overtaken as exc:
                # Another projector of this name committed this shard meanwhile (the
                # shard changed hands): go on from where it is, with views read again.
                log.info("projector_overtaken", shard=shard, position=exc.position)
                self._views.clear()
                self._moved(shard, exc.position)
                return
            except _REFUSED as exc:
                # PostgreSQL refuses something in the batch itself: retrying the same
                # batch would loop forever. Find the record(s) by halving.
                self._forget(records)
                await self._isolate(records, exc, shard)
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Postgres down or restarting: keep the batch, try again. Views touched
                # by the failed transaction are ahead of the database: forget them.
                self._forget(records)
                log.warning("projection_commit_failed", error=str(exc), retry_in_s=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _forget(self, records: list[Record]) -> None:
        for rec in records:
            self._views.pop(rec.run_id, None)

    async def _isolate(self, records: list[Record], exc: Exception, shard: int) -> None:
        if len(records) > 1:
            mid = len(records) // 2
            await self._commit_with_retry(records[:mid], shard)
            await self._commit_with_retry(records[mid:], shard)
            return
        (rec,) = records
        reason = f"PostgreSQL refused its projection ({type(exc).__name__}): {exc}"
        log.error("journal_record_dead_lettered", seq=rec.seq, run_id=rec.run_id, reason=reason)
        await self._dead_letter(rec, reason)
        async with self.pool.acquire() as conn:  # past it, so it is not tried again
            await conn.execute(_SAVE_POSITION, self.position_name(shard), rec.seq, None)
        self._moved(shard, rec.seq)

    def _moved(self, shard: int, seq: int) -> None:
        st = self.stats
        st.position += seq - st.positions[shard]
        st.positions[shard] = seq

    async def _dead_letter(self, rec: Record, reason: str) -> None:
        self.stats.dead_lettered += 1
        await dead_letter(
            self.nc,
            self.subjects,
            source="projector",
            reason=reason,
            subject=rec.subject,
            data=rec.data,
            headers=rec.headers,
            stream=self.subjects.journal_stream_of(self.subjects.shard_of_subject(rec.subject)),
            seq=rec.seq,
            run_id=rec.run_id,
        )

    async def _commit(self, records: list[Record], shard: int) -> None:
        rows: list[tuple[object, ...]] = []
        touched: dict[str, RunView] = {}
        head_seq: dict[str, int] = {}
        checkpoints: list[tuple[str, int, bytes, bytes | None, str | None]] = []
        newest_at: datetime | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            # Fencing: the shard's position row is locked and must be where this process
            # left it, or another of the same name got there first (nothing is written).
            at = await conn.fetchval(
                "SELECT stream_seq FROM projector_positions WHERE name = $1 FOR UPDATE",
                self.position_name(shard),
            )
            if int(at or 0) != self.stats.positions[shard]:
                raise _Overtaken(int(at or 0))
            for rec in records:
                if is_placeholder(rec.subject):  # an erased run's entry (streams/_erase.py)
                    continue
                try:
                    stored = decode_record(rec)
                except JournalCorrupt as exc:
                    self.stats.undecodable += 1
                    log.error("journal_record_undecodable", seq=rec.seq, error=str(exc))
                    await self._dead_letter(rec, f"undecodable journal record: {exc}")
                    continue
                if self.keys is not None:
                    verdict = self.keys.check_entry(rec.subject, stored.hash, stored.mac, rec.seq)
                    if not verdict.ok:
                        self.stats.forged += 1
                        log.error("journal_record_forged", seq=rec.seq, error=verdict.problem)
                        await self._dead_letter(rec, f"forged journal entry: {verdict.problem}")
                        continue
                view = touched.get(stored.event.run_id)
                if view is None:
                    view = await self._view(conn, stored.event.run_id)
                    touched[view.run_id] = view
                rows.append(_event_row(stored))
                view.apply(stored.event, stored.hash)
                head_seq[view.run_id] = stored.seq
                newest_at = stored.event.at
                if isinstance(stored.event, TERMINAL_EVENTS):
                    sig = (
                        self.signer.sign(view.run_id, stored.n, stored.hash)
                        if self.signer
                        else None
                    )
                    kid = self.signer.key_id if self.signer else None
                    checkpoints.append((view.run_id, stored.n, stored.hash, sig, kid))
            if rows:
                await conn.copy_records_to_table("run_events", records=rows, columns=_EVENT_COLUMNS)
            run_rows, effect_rows, wait_rows = [], [], []
            for view in touched.values():
                run_rows.append(_run_row(view, head_seq[view.run_id]))
                waits, effects = view.take_changes()
                effect_rows += [_effect_row(view.run_id, fx) for fx in effects]
                wait_rows += [
                    (view.run_id, w.seq, w.name, w.status, w.since, w.deadline, w.event_id)
                    for w in waits
                ]
            if run_rows:
                await conn.executemany(_INSERT_RUN, run_rows)
            if effect_rows:
                await conn.executemany(_UPSERT_EFFECT, effect_rows)
            if wait_rows:
                await conn.executemany(_UPSERT_WAIT, wait_rows)
            if checkpoints:
                await conn.executemany(
                    "INSERT INTO checkpoints (run_id, n, hash, signature, key_id) "
                    "VALUES ($1,$2,$3,$4,$5) ON CONFLICT DO NOTHING",
                    checkpoints,
                )
            await conn.execute(
                _SAVE_POSITION, self.position_name(shard), records[-1].seq, newest_at
            )
        self._remember(touched)
        self._record_progress(records, rows, shard)

    def _record_progress(
        self, records: list[Record], rows: list[tuple[object, ...]], shard: int
    ) -> None:
        st = self.stats
        self._moved(shard, records[-1].seq)
        st.events += len(rows)
        st.batches += 1
        now = datetime.now(UTC)
        if rows:
            oldest = min(row[7] for row in rows)  # type: ignore[type-var]
            st.last_commit_lag_s = (now - oldest).total_seconds()  # type: ignore[operator]
            if st.keep_samples:
                st.lag_samples.extend((now - row[7]).total_seconds() for row in rows)  # type: ignore[operator]

    def _remember(self, touched: dict[str, RunView]) -> None:
        for run_id, view in touched.items():
            self._views[run_id] = view
            self._views.move_to_end(run_id)
        while len(self._views) > self.max_views:
            self._views.popitem(last=False)

    async def _view(self, conn: Conn, run_id: str) -> RunView:
        """The run's projection state: cached, or folded again from its stored rows."""
        view = self._views.get(run_id)
        if view is not None:
            return view
        view = RunView(run_id)
        for row in await conn.fetch(
            "SELECT data, hash FROM run_events WHERE run_id = $1 ORDER BY n", run_id
        ):
            view.apply(decode_event(row["data"]), bytes(row["hash"]))
        view.take_changes()  # already stored
        return view


class _Overtaken(Exception):
    """Another projector of the same name committed the shard past this one's position."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


SHARE_EVERY_S = 2.0
"""how often a projector counts the projectors of its name and takes or hands back shards"""


class _ShardLocks:
    """Which shards a running projector projects, by PostgreSQL advisory locks: one per
    shard and projector name (and schema), held on a connection of its own. A process
    that dies loses its connection, and with it its locks, at once. Each takes its fair
    share (shards ÷ projectors of the name, counted by ``application_name``) and hands
    back what is over it, so several processes split the shards between them."""

    def __init__(self, projector: Projector, shards: list[int]) -> None:
        self.p = projector
        self.shards = shards
        self.held: set[int] = set()
        self._conn: PoolConnectionProxy[Any] | None = None
        self._tag = f"ms-projector:{projector.name}"[:63]

    async def __aenter__(self) -> _ShardLocks:
        await self._connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self._lose_all()

    async def _connect(self) -> None:
        conn = await self.p.pool.acquire()
        self._conn = conn
        await conn.execute(f"SET application_name = '{_quoted(self._tag)}'")

    async def _lose_all(self) -> None:
        """Project nothing until the locks are taken again (the connection that held
        them failed, or the projector stops): released to the pool, which resets it, so
        its advisory locks go too."""
        for shard in self.held:
            self.p._drop(shard)
        self.held.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self.p.pool.release(conn)

    async def keep(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self._round()
        task_status.started()
        while True:
            await anyio.sleep(SHARE_EVERY_S)
            try:
                if self._conn is None:
                    await self._connect()
                await self._round()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # PostgreSQL unreachable or restarted: the locks may be gone with the
                # connection. Project nothing, and take them again once it answers.
                log.warning("projector_share_failed", error=str(exc), held=sorted(self.held))
                await self._lose_all()

    async def _round(self) -> None:
        conn = self._conn
        assert conn is not None
        members = await conn.fetchval(
            "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE application_name = $1 "
            "AND datname = current_database()",
            self._tag,
        )
        share = -(-len(self.shards) // max(1, int(members or 1)))
        for shard in sorted(self.held, reverse=True)[: max(0, len(self.held) - share)]:
            self.p._drop(shard)
            self.held.discard(shard)
            await conn.fetchval(_UNLOCK, self.p.name, shard)
            log.info("projector_shard_released", shard=shard, share=share)
        for shard in self.shards:
            if len(self.held) >= share:
                break
            if shard not in self.held and await conn.fetchval(_TRY_LOCK, self.p.name, shard):
                self.held.add(shard)
                await self.p._take(shard)
                log.info("projector_shard_taken", shard=shard, share=share)


_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtext(current_schema() || ':ms-projector:' || $1), $2)"
_UNLOCK = "SELECT pg_advisory_unlock(hashtext(current_schema() || ':ms-projector:' || $1), $2)"


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def position_name(name: str, shard: int) -> str:
    """The ``projector_positions`` row of projector ``name``'s position in a shard."""
    return name if shard == 0 else f"{name}@{shard}"


def _event_row(stored: StoredEvent) -> tuple[object, ...]:
    ev = stored.event
    return (
        ev.run_id,
        stored.n,
        stored.seq,
        event_type(ev),
        stored.data,
        stored.prev,
        stored.hash,
        ev.at,
    )


def _run_row(view: RunView, seq: int) -> tuple[object, ...]:
    fx = view.effects.values()
    return (
        view.run_id,
        view.workflow,
        view.version,
        view.status,
        _json(view.input),
        _json(view.output),
        _error_json(view.error),
        view.parent_run_id,
        view.depth,
        view.events,
        len(view.effects),
        sum(1 for e in fx if e.status == EffectState.COMPLETED),
        sum(1 for e in fx if e.status == EffectState.FAILED),
        view.waiting_for,
        view.started_at,
        view.updated_at,
        view.ended_at,
        seq,
        view.head_hash,
        view.tokens,
        view.cost_usd,
    )


def _effect_row(run_id: str, fx: EffectView) -> tuple[object, ...]:
    return (
        fx.effect_id,
        run_id,
        fx.seq,
        fx.kind,
        fx.status,
        fx.attempts,
        fx.requested_at,
        fx.finished_at,
        fx.latency_ms,
        _error_json(fx.error),
        fx.input_tokens,
        fx.output_tokens,
        fx.cost_usd,
    )
