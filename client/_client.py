"""The client: start runs, await results, resume waiting runs, cancel, inspect journals."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from ulid import ULID

from schemas import (
    CancelRun,
    ErrorCode,
    InboxUnion,
    JournalEvent,
    RunCancelled,
    RunCancelledError,
    RunCompleted,
    RunFailed,
    RunFailedError,
    RunNotFound,
    RunState,
    StartRun,
    WakeRun,
    check_event_name,
    check_run_id,
    check_workflow_name,
    fold,
)
from schemas import ErrorInfo as _ErrorInfo
from streams import (
    Inbox,
    Journal,
    Keyring,
    NatsAuth,
    Objects,
    PayloadLimits,
    StoredEvent,
    Subjects,
    connect,
    deployed_shards,
    ensure_topology,
    publish_checked,
)

RECHECK_S = 10.0
"""``result`` looks at the journal again after this long without news: a notification
missed while the connection was re-established (core NATS does not keep it), or a
terminal event journaled by a worker older than the ``.end`` subject, is noticed then."""


@dataclass(frozen=True)
class RunStatus:
    """What a run is doing, derived from its journal."""

    run_id: str
    workflow: str
    version: str
    status: RunState
    """running | waiting | completed | failed | cancelled | parked (compares equal to
    those strings)"""
    events: int
    started_at: datetime
    waiting_for: list[str] = field(default_factory=list)
    output: Any = None
    error: _ErrorInfo | None = None


def status_from_journal(events: list[JournalEvent]) -> RunStatus:
    view = fold(events)
    assert view.started_at is not None
    output = None if view.output is None else msgspec.json.decode(view.output)
    return RunStatus(
        view.run_id,
        view.workflow,
        view.version,
        view.status,
        view.events,
        view.started_at,
        view.waiting_for,
        output,
        view.error,
    )


class Client:
    """Talk to a Mainspring deployment. ``async with await Client.connect(url) as c: ...``"""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects | None = None,
        *,
        owns_nc: bool = False,
        payloads: PayloadLimits | None = None,
        keys: Keyring | None = None,
    ):
        """``keys``: the deployment's keys; with them, every journal entry this client
        reads (results, status, history) must carry a worker's tag, else
        ``JournalForged``. Without, it trusts whoever could write to the journal."""
        self.nc = nc
        self.subjects = subjects or Subjects()
        self.objects = Objects(nc, self.subjects, payloads)
        self.journal = Journal(nc, self.subjects, objects=self.objects, keys=keys)
        self.inbox = Inbox(nc, self.subjects)
        self._owns = owns_nc
        self._ready = False

    @classmethod
    async def connect(
        cls,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "ms",
        partitions: int = 16,
        shards: int | None = None,
        auth: NatsAuth | None = None,
        keys: Keyring | str | None = None,
    ) -> Client:
        """Connect to a deployment; ``auth`` holds NATS credentials and TLS files
        (``streams.NatsAuth``) when the server asks for them; ``keys`` the deployment's
        keys (or the path of its keys file) to check what the client reads. ``shards``
        is read from the deployment unless given (1 where there is none yet)."""
        ring = Keyring.load(keys) if isinstance(keys, str) else keys
        nc = await connect(url, auth=auth)
        try:
            if shards is None:
                shards = await deployed_shards(nc, Subjects(prefix, partitions)) or 1
            subjects = Subjects(prefix, partitions, shards)
        except BaseException:
            await nc.close()
            raise
        return cls(nc, subjects, owns_nc=True, keys=ring)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.drain()

    async def _ensure(self) -> None:
        if not self._ready:
            await ensure_topology(self.nc, self.subjects)
            self._ready = True

    async def _send(self, message: InboxUnion, msg_id: str) -> None:
        await self._ensure()
        await self.inbox.send(message, msg_id=msg_id)

    # ------------------------------------------------------------------ commands
    async def start(
        self,
        workflow: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        max_cost_usd: float | None = None,
        max_duration_s: float | None = None,
    ) -> str:
        """Start a run (idempotent on ``run_id``); returns the run id.

        ``max_cost_usd`` / ``max_duration_s`` override the worker's default budget and
        wall-time limit for this run (it fails with ``limit.cost`` / ``limit.wall_time``).
        """
        check_workflow_name(workflow)
        rid = check_run_id(run_id) if run_id else str(ULID())
        data = msgspec.json.encode(input)
        self.objects.check_size(len(data), f"the input of run {rid}")  # before anything is sent
        await self._ensure()
        body = StartRun(
            run_id=rid,
            workflow=workflow,
            input=await self.objects.outgoing(data, f"the input of run {rid}"),
            max_cost_usd=max_cost_usd,
            max_duration_s=max_duration_s,
        )
        await self._send(body, f"start:{rid}")
        return rid

    async def send_event(
        self, run_id: str, name: str, payload: Any = None, *, event_id: str | None = None
    ) -> None:
        """Resume a run: same as publishing JSON to ``<prefix>.event.<run_id>.<name>``.

        ``event_id`` (default: a new ULID) becomes the ``Nats-Msg-Id``: sending the
        same id twice delivers the event once, which also makes our retries safe.
        """
        check_run_id(run_id)
        check_event_name(name)
        headers = {"Nats-Msg-Id": event_id or f"ev-{ULID()}"}
        data = msgspec.json.encode(payload)
        what = f"the payload of event {name!r} for run {run_id}"
        self.objects.check_size(len(data), what)  # before anything is sent
        await self._ensure()
        body = await self.objects.outgoing(data, what)  # a large one goes by reference
        await publish_checked(self.nc, self.subjects.event(run_id, name), bytes(body), headers)

    async def cancel(self, run_id: str, reason: str = "") -> None:
        check_run_id(run_id)
        await self._send(CancelRun(run_id=run_id, reason=reason), f"cancel:{run_id}")

    async def wake(self, run_id: str) -> None:
        """Ask a worker to replay a run now (continue a parked run after deploying a fix)."""
        check_run_id(run_id)
        await self._send(WakeRun(run_id=run_id), f"wake-{ULID()}")

    # ------------------------------------------------------------------ queries
    async def history(self, run_id: str) -> list[StoredEvent]:
        """The run's journal as stored (hash-chain verified)."""
        check_run_id(run_id)
        await self._ensure()
        return await self.journal.load(run_id)

    async def status(self, run_id: str) -> RunStatus:
        events = await self.history(run_id)
        if not events:
            raise RunNotFound(f"no run {run_id!r}: nothing was journaled under that id")
        return status_from_journal([e.event for e in events])

    async def wait_for(
        self, run_id: str, *statuses: str, timeout: float | None = None, after: int = 0
    ) -> RunStatus:
        """Wait until the run's status is one of ``statuses`` (e.g. ``RunState.WAITING``
        or ``"waiting"``).

        Event-driven: woken by each journal append of the run (and, should a
        notification be missed while reconnecting, a look every ``RECHECK_S``).
        Terminal statuses always end the wait (check the returned status). With
        ``after=n``, only states reached once the journal holds more than n events count.
        """
        check_run_id(run_id)
        await self._ensure()
        wanted = set(statuses) | {RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED}
        sub = await self.nc.subscribe(self.subjects.watch_run(run_id))
        try:
            with anyio.fail_after(timeout):
                while True:
                    events = await self.journal.load(run_id)
                    if len(events) > after:
                        status = status_from_journal([e.event for e in events])
                        if status.status in wanted:
                            return status
                    with contextlib.suppress(nats.errors.TimeoutError):
                        await sub.next_msg(timeout=RECHECK_S)
        finally:
            await sub.unsubscribe()

    async def result(
        self, run_id: str, *, timeout: float | None = None, output_type: Any = Any
    ) -> Any:
        """Wait for the run to end; return its output or raise RunFailedError/RunCancelledError."""
        check_run_id(run_id)
        await self._ensure()
        # Only the terminal append is announced there: one message per run, however long.
        sub = await self.nc.subscribe(self.subjects.watch_end(run_id))
        announced = False
        try:
            with anyio.fail_after(timeout):
                while True:
                    last = await self.journal.last(run_id)
                    if announced and not _ended(last):
                        # the end was announced, so the leader has it: the replica that
                        # answered is behind (a node just back in a cluster)
                        last = await self.journal.last(run_id, leader=True)
                    if last is not None and _ended(last):
                        return _outcome(last.event, output_type)  # type: ignore[arg-type]
                    with contextlib.suppress(nats.errors.TimeoutError):
                        await sub.next_msg(timeout=RECHECK_S)
                        announced = True
        finally:
            await sub.unsubscribe()


def _ended(stored: StoredEvent | None) -> bool:
    return stored is not None and isinstance(stored.event, RunCompleted | RunFailed | RunCancelled)


def _outcome(ev: RunCompleted | RunFailed | RunCancelled, output_type: Any) -> Any:
    if isinstance(ev, RunCompleted):
        return msgspec.json.decode(ev.output, type=output_type)
    if isinstance(ev, RunFailed):
        raise RunFailedError(ev.run_id, ev.error)
    raise RunCancelledError(
        ev.run_id, _ErrorInfo(type=ErrorCode.CANCELLED, message=ev.reason or "cancelled")
    )
