"""Effect handlers: decorated async functions that serve one effect kind.

Each kind is a durable pull consumer on the journal (``<prefix>.j.*.fx.<kind>``)
shared by every instance, so instances split the work. A handler that dies or
hangs stops heartbeating; after ``ack_wait`` JetStream gives the request to
another instance. The result goes to the run's inbox with ``Nats-Msg-Id`` = the
effect id, so a duplicate result is dropped.

Retries happen in the handler process (backoff, heartbeating meanwhile); a
redelivery therefore always means "the previous holder was interrupted", which
is what ``at_most_once`` effects report instead of running again. The delivery
count alone is not enough for that: nats-server keeps it lazily and can forget it
in a crash. So before an at-most-once effect runs, its start is recorded durably
(a KV create keyed by the effect id, ``streams.EffectMarkers``); a delivery that
finds the record reports the effect interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, get_type_hints

import anyio
import msgspec
import nats.errors
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import (
    NULL,
    ConfigError,
    EffectRequested,
    EffectResult,
    ErrorCode,
    ErrorInfo,
    JournalEvent,
    PayloadTooLarge,
    TerminalError,
    check_effect_kind,
    decode_event,
    event_type,
)
from streams import (
    HDR_FX_MAC,
    HDR_PREV,
    ConsumerSpec,
    EffectKeys,
    EffectMarkers,
    Inbox,
    InFlight,
    Objects,
    PayloadLimits,
    Subjects,
    Tasks,
    chain,
    dead_letter_msg,
    ensure_consumer,
    ensure_topology,
    num_delivered,
    pull_loop,
    retrying,
    stream_seq,
    take_slot,
)

log = structlog.get_logger()

HandlerFn = Callable[..., Awaitable[Any]]


@dataclass
class EffectContext:
    """What a handler knows about the request it serves."""

    run_id: str
    effect_id: str
    """stable across retries and redeliveries: use it as your idempotency key"""
    kind: str
    attempt: int
    delivery: int
    _msg: Msg

    async def heartbeat(self) -> None:
        """Tell JetStream the work is alive (resets the redelivery timer)."""
        await self._msg.in_progress()


@dataclass(frozen=True)
class HandlerDef:
    kind: str
    fn: HandlerFn
    payload_type: Any
    wants_ctx: bool
    concurrency: int
    ack_wait_s: float
    max_deliveries: int = 10
    """deliveries of one request without a result (handlers crashing on it, results
    that cannot be published) before the effect fails with effect.delivery_limit"""


class Handlers:
    """A registry of effect handlers (no global state: create one per service)."""

    def __init__(self) -> None:
        self._defs: dict[str, HandlerDef] = {}

    def handler(
        self,
        kind: str,
        *,
        concurrency: int = 64,
        ack_wait_s: float = 30.0,
        max_deliveries: int = 10,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register ``async def h(payload[, ctx: EffectContext]) -> result`` for ``kind``."""
        check_effect_kind(kind)

        def register(fn: HandlerFn) -> HandlerFn:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"handler {fn.__name__} must be an `async def` function")
            params = list(inspect.signature(fn).parameters)
            hints = get_type_hints(fn)
            payload_type = hints.get(params[0], Any) if params else Any
            self._defs[kind] = HandlerDef(
                kind, fn, payload_type, len(params) > 1, concurrency, ack_wait_s, max_deliveries
            )
            return fn

        return register

    def kinds(self) -> list[str]:
        return sorted(self._defs)

    def include(self, other: Handlers) -> Handlers:
        """Serve ``other``'s handlers too (its definitions win for shared kinds)."""
        self._defs.update(other._defs)
        return self

    def only(self, kinds: Iterable[str]) -> Handlers:
        """A registry of just these kinds (a service per kind, each with its own
        credentials)."""
        part = Handlers()
        part._defs = {k: self._defs[k] for k in kinds}
        return part

    def get(self, kind: str) -> HandlerDef:
        return self._defs[kind]


class HandlerService:
    """Serves every handler of a ``Handlers`` registry until cancelled."""

    def __init__(
        self,
        nc: NATS,
        handlers: Handlers,
        *,
        subjects: Subjects | None = None,
        payloads: PayloadLimits | None = None,
        keys: EffectKeys | None = None,
        shards: Iterable[int] | None = None,
    ) -> None:
        self.nc = nc
        self.handlers = handlers
        self.subjects = subjects or Subjects()
        self.shards = sorted(set(range(self.subjects.shards) if shards is None else shards))
        """the shards whose effect requests this service takes (all, unless given)"""
        if not self.shards or not set(self.shards) <= set(range(self.subjects.shards)):
            raise ConfigError(
                f"shards {self.shards} are not shards of this deployment "
                f"(0 to {self.subjects.shards - 1})"
            )
        self.keys = keys
        """effect keys of the kinds served: requests must carry a worker's tag, results
        get ours (None: requests are not checked; see docs/security.md)"""
        self.markers = EffectMarkers(nc, self.subjects)
        self.objects = Objects(nc, self.subjects, payloads)  # large payloads (DESIGN.md §10)
        self.inbox = Inbox(nc, self.subjects, keys)
        self.forged = 0
        """requests refused because no worker of this deployment wrote them"""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await ensure_topology(self.nc, self.subjects)
        self._check_keys()
        # a new (replicated) bucket may need a moment before it answers
        await retrying(self.markers.open, "opening the effect start markers")
        async with anyio.create_task_group() as tg:
            for kind in self.handlers.kinds():
                await tg.start(self._serve, self.handlers.get(kind))
            task_status.started()

    async def _serve(
        self, hdef: HandlerDef, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        s = self.subjects
        specs = [
            ConsumerSpec(
                stream=s.journal_stream_of(shard),
                durable=s.effect_consumer(hdef.kind),
                filter_subject=s.effect_filter(hdef.kind, shard),
                ack_wait_s=hdef.ack_wait_s,
                max_ack_pending=hdef.concurrency * 4,
            )
            for shard in self.shards
        ]
        for spec in specs:
            await ensure_consumer(self.nc, spec)
        # One pull loop per shard into the kind's one runner (its concurrency is the
        # kind's, whatever the shards); each fetches its share, so what waits fetched
        # for a slot stays about one batch, as with one shard.
        batch = max(1, -(-hdef.concurrency // len(specs)))
        async with Tasks() as tasks, anyio.create_task_group() as tg:
            runner = _Runner(self, hdef, tasks)
            tg.start_soon(runner.inflight.keep_alive)  # long effects (and retry waits) stay ours
            for spec in specs:
                await tg.start(
                    lambda task_status, spec=spec: pull_loop(
                        self.nc, spec, runner, batch=batch, task_status=task_status
                    )
                )
            log.info("handler_serving", kind=hdef.kind, shards=len(specs))
            task_status.started()

    async def _execute(self, hdef: HandlerDef, msg: Msg) -> None:
        try:
            req = decode_event(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            await self._dead_letter(msg, f"not a Mainspring effect request: {e}", "")
            await msg.term()
            return
        refusal = self._misfit(hdef, req, msg.subject) or self._unproven(hdef, msg)
        if refusal is not None:  # never executed, and its result goes nowhere
            await self._dead_letter(msg, f"effect request refused: {refusal}", "")
            await msg.term()
            return
        assert isinstance(req, EffectRequested)  # _misfit said so
        delivery = num_delivered(msg)
        if delivery > hdef.max_deliveries:
            await self._give_up(hdef, req, msg, delivery)
            return
        if req.at_most_once and not await self._first_start(req, delivery):
            _bound(req).warning("effect_interrupted", delivery=delivery)
            await self._reply(
                req,
                msg,
                ok=False,
                attempts=1,
                error=ErrorInfo(
                    type=ErrorCode.EFFECT_INTERRUPTED,
                    message="the handler was interrupted while running this at-most-once effect; "
                    "it was not run again",
                ),
            )
            return
        attempts = 0
        while True:
            attempts += 1
            ctx = EffectContext(req.run_id, req.effect_id, req.kind, attempts, delivery, msg)
            try:
                result = await self._attempt(hdef, req, ctx)
            except Exception as exc:
                error = _classify(exc, req)
                retry_ok = error.retryable and attempts < req.retry.max_attempts
                _bound(req).info(
                    "effect_attempt_failed",
                    attempt=attempts,
                    error=error.message,
                    retrying=retry_ok,
                )
                if not retry_ok:
                    await self._reply(req, msg, ok=False, attempts=attempts, error=error)
                    return
                await anyio.sleep(req.retry.backoff(attempts))
                continue
            try:
                data = msgspec.json.encode(result)
            except (TypeError, msgspec.EncodeError) as e:
                await self._reply(
                    req,
                    msg,
                    ok=False,
                    attempts=attempts,
                    error=ErrorInfo(
                        type=ErrorCode.RESULT_INVALID, message=f"handler result is not JSON: {e}"
                    ),
                )
                return
            await self._reply(req, msg, ok=True, attempts=attempts, result=data)
            return

    def _misfit(self, hdef: HandlerDef, req: JournalEvent, subject: str) -> str | None:
        """Why a message on an effect-request subject is not executed although it
        decodes: it is no request, it does not say what its subject says, or it names
        another result inbox than its run's. Workers never write such a request; a
        publisher who wants a command run and its output sent where they choose does."""
        if not isinstance(req, EffectRequested):
            return f"a {event_type(req)} event, not effect.requested"
        s = self.subjects
        if req.kind != hdef.kind or subject != s.journal_effect(req.run_id, req.kind):
            return (
                f"it says run {req.run_id!r}, kind {req.kind!r} but was stored on {subject} "
                f"(served here: {hdef.kind})"
            )
        inbox = s.inbox(req.run_id, "effect.result")
        if req.inbox and req.inbox != inbox:
            return (
                f"it names {req.inbox} for its result, not its run's inbox {inbox} (a forged "
                f"request, or this handler's partitions ({s.partitions}) differ from the "
                "workers')"
            )
        return None

    def _check_keys(self) -> None:
        keys = self.keys
        if keys is None:
            log.warning(
                "effect_requests_unchecked",
                hint="this handler runs any request published on its subjects; give it "
                "its effect keys (`mainspring keys handler`, --effect-keys / "
                "MAINSPRING_EFFECT_KEYS)",
            )
            return
        missing = sorted(set(self.handlers.kinds()) - set(keys.kinds()))
        if missing:
            raise ConfigError(
                f"the effect keys file has no key for kind(s) {', '.join(missing)}: export "
                f"it with `mainspring keys handler --kind {' --kind '.join(missing)}` "
                "(with the kinds it already has)"
            )

    def _unproven(self, hdef: HandlerDef, msg: Msg) -> str | None:
        """Why a request is not proven to come from a worker of this deployment."""
        if self.keys is None:
            return None
        headers = msg.headers or {}
        try:
            link = chain(bytes.fromhex(headers.get(HDR_PREV, "")), msg.data)
        except ValueError:
            link = b""
        problem = self.keys.check_request(
            hdef.kind, msg.subject, link, headers.get(HDR_FX_MAC), stream_seq(msg)
        )
        if problem is not None:
            self.forged += 1
            return f"not written by a worker of this deployment: {problem}"
        return None

    async def _give_up(
        self, hdef: HandlerDef, req: EffectRequested, msg: Msg, delivery: int
    ) -> None:
        """A request that came back too often: fail the effect (the run decides what
        next) and keep the request as evidence in the dead-letter stream."""
        message = (
            f"effect {req.effect_id} ({req.kind}) was delivered {delivery - 1} times "
            "without a result: handlers crashed on it or could not publish its result "
            f"(limit: {hdef.max_deliveries} deliveries)"
        )
        await self._dead_letter(msg, message, req.run_id)
        await self._reply(
            req,
            msg,
            ok=False,
            attempts=delivery - 1,
            error=ErrorInfo(type=ErrorCode.EFFECT_DELIVERY_LIMIT, message=message),
        )

    async def _dead_letter(self, msg: Msg, reason: str, run_id: str) -> None:
        log.error("effect_request_dead_lettered", subject=msg.subject, reason=reason)
        await dead_letter_msg(
            self.nc,
            self.subjects,
            msg,
            source="fx",
            reason=reason,
            run_id=run_id,
        )

    async def _first_start(self, req: EffectRequested, delivery: int) -> bool:
        """At-most-once: may this delivery run the effect? Only if it is the first
        delivery *and* it durably records the start first (a KV create keyed by the
        effect id). The marker is what survives a nats-server crash that loses the
        delivery count; the count still catches holders that died before recording."""
        if delivery > 1:
            return False
        return await self.markers.claim(
            req.effect_id, run_id=req.run_id, kind=req.kind, delivery=delivery
        )

    async def _attempt(self, hdef: HandlerDef, req: EffectRequested, ctx: EffectContext) -> Any:
        try:
            what = f"the payload of effect {req.effect_id}"
            raw = await self.objects.resolve(req.payload, what)  # when sent by reference
            payload = msgspec.json.decode(raw, type=hdef.payload_type)
        except msgspec.ValidationError as e:
            raise TerminalError(
                f"payload of {req.kind}: {e}", type=ErrorCode.PAYLOAD_INVALID
            ) from e
        async with asyncio.timeout(req.timeout_s):  # anyio.fail_after: 4-7 % of the CPU here
            return await (hdef.fn(payload, ctx) if hdef.wants_ctx else hdef.fn(payload))

    async def _reply(
        self,
        req: EffectRequested,
        msg: Msg,
        *,
        ok: bool,
        attempts: int,
        result: bytes = b"null",
        error: ErrorInfo | None = None,
    ) -> None:
        try:  # a large result goes by reference; one over the cap fails the effect for good
            value = await self.objects.outgoing(result, f"the result of effect {req.effect_id}")
        except PayloadTooLarge as e:
            ok, value, error = False, NULL, e.info
        reply = EffectResult(
            run_id=req.run_id,
            seq=req.seq,
            effect_id=req.effect_id,
            ok=ok,
            result=value,
            error=error,
            attempts=attempts,
        )
        # to the run's own inbox, derived from the run id (_misfit checked the request's)
        await self.inbox.send(reply, msg_id=req.effect_id, kind=req.kind)
        await msg.ack()  # only after the result is safely in the run's inbox


class _Runner:
    """Where the pull loop puts each request of one kind: it starts at once in a task of
    its own, up to the kind's concurrency; beyond it the pull loop waits for a slot
    (back-pressure without a queue between fetching and running)."""

    def __init__(self, service: HandlerService, hdef: HandlerDef, tasks: Tasks) -> None:
        self.service, self.hdef, self.tasks = service, hdef, tasks
        self.limiter = anyio.Semaphore(hdef.concurrency)
        self.inflight = InFlight(hdef.ack_wait_s)

    async def send(self, msg: Msg) -> None:
        await take_slot(self.limiter)
        self.tasks.start_soon(self._run, msg)

    async def _run(self, msg: Msg) -> None:
        try:
            self.inflight.hold(msg)
            try:
                await self.service._execute(self.hdef, msg)
            finally:
                self.inflight.release(msg)  # before a nak: no keep-alive for it meanwhile
        except Exception as exc:  # reply could not be published: let JetStream redeliver
            log.warning("effect_reply_failed", kind=self.hdef.kind, error=str(exc))
            with contextlib.suppress(nats.errors.Error):
                await msg.nak(delay=min(2.0 ** num_delivered(msg), 30.0))
        finally:
            self.limiter.release()


def _bound(req: EffectRequested) -> structlog.typing.FilteringBoundLogger:
    return log.bind(run_id=req.run_id, effect_id=req.effect_id, kind=req.kind)  # type: ignore[no-any-return]


def _classify(exc: BaseException, req: EffectRequested) -> ErrorInfo:
    if isinstance(exc, TimeoutError):
        return ErrorInfo(
            type=ErrorCode.EFFECT_TIMEOUT,
            retryable=True,
            message=f"attempt exceeded its timeout of {req.timeout_s}s",
        )
    if isinstance(exc, TerminalError):
        return ErrorInfo(type=exc.type, message=str(exc), retryable=False)
    name = type(exc).__name__
    return ErrorInfo(type=name, message=str(exc), retryable=name not in req.retry.non_retryable)
