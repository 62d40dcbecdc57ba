"""Durable pull consumers with a lean fetch loop (no per-message round trips, no polling).

One pull request is outstanding at a time; it is renewed when its batch is used
up or it expires. Idle heartbeats let us notice a server restart (the pending
request is lost with it) and re-issue the pull.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import msgspec
import nats.errors
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import ConnectionFailed
from streams._jsapi import ApiError, api_request

log = structlog.get_logger()
_NS = 1_000_000_000
_CONSUMER_NOT_FOUND = 10014
_START = ("deliver_policy", "opt_start_seq", "opt_start_time")
"""where a consumer starts: fixed once it exists"""


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait_s: float = 30.0
    max_ack_pending: int = 10_000
    max_deliver: int = -1

    def config(self) -> dict[str, Any]:
        return {
            "durable_name": self.durable,
            "filter_subject": self.filter_subject,
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": int(self.ack_wait_s * _NS),
            "max_ack_pending": self.max_ack_pending,
            "max_deliver": self.max_deliver,
            "replay_policy": "instant",
        }


async def ensure_consumer(nc: NATS, spec: ConsumerSpec, *, recreate: bool = False) -> None:
    """Create (or update) a durable consumer; ``recreate`` deletes it first so every
    unacknowledged message is delivered again at once (partition takeover)."""
    if recreate:
        await delete_consumer(nc, spec.stream, spec.durable)
    config = spec.config()
    # the filter in the subject too: the server holds the body to it, so a permission
    # on this subject (streams/_roles.py) limits what the consumer may read
    subject = f"$JS.API.CONSUMER.CREATE.{spec.stream}.{spec.durable}.{spec.filter_subject}"
    try:
        await api_request(nc, subject, {"stream_name": spec.stream, "config": config})
    except ApiError as e:
        if "can not be updated" not in e.description:
            raise
        # Created where it should start by someone else (a journal rebuilt without an
        # erased run, streams/_erase.py): keep its start, update the rest.
        info = await api_request(nc, f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}")
        kept = {k: info["config"][k] for k in _START if k in info["config"]}
        await api_request(nc, subject, {"stream_name": spec.stream, "config": config | kept})


async def delete_consumer(nc: NATS, stream: str, durable: str) -> None:
    try:
        await api_request(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{durable}")
    except ApiError as e:
        if e.err_code != _CONSUMER_NOT_FOUND:
            raise


class MsgSink(Protocol):
    """Where a pull loop puts what it fetched (a memory object stream, or an adapter)."""

    async def send(self, item: Msg, /) -> None: ...


class _Pull(msgspec.Struct):
    batch: int
    expires: int
    idle_heartbeat: int


async def pull_loop(
    nc: NATS,
    spec: ConsumerSpec,
    out: MsgSink,
    *,
    batch: int = 256,
    expires_s: float = 10.0,
    heartbeat_s: float = 1.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Fetch messages of a durable consumer into ``out`` until cancelled.

    Returns (without error) when the consumer is deleted, e.g. after another
    worker took over its partition.
    """
    api = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_msgs_limit=batch * 4)
    encoder = msgspec.json.Encoder()
    try:
        task_status.started()
        while True:
            request = _Pull(batch, int(expires_s * _NS), int(heartbeat_s * _NS))
            # No nc.flush() here: the client's flusher sends the request at once, and a
            # flush cancelled mid-way (a partition let go) leaves a cancelled PONG future
            # behind that makes nats-py's reader die on the next PONG (InvalidStateError
            # in _process_pong): the whole connection then times out.
            await nc.publish(api, encoder.encode(request), reply=inbox)
            remaining = batch
            while remaining > 0:
                try:
                    msg = await _next(sub, heartbeat_s * 3)
                except TimeoutError:
                    break  # heartbeats stopped: server restarted or request lost; re-pull
                status = msg.headers.get("Status") if msg.headers else None
                if status is None:
                    remaining -= 1
                    await out.send(msg)
                    continue
                if status == "100":
                    continue  # idle heartbeat
                if status in ("404", "408"):
                    break  # no messages / request expired: pull again
                if status == "409":
                    desc = msg.headers.get("Description", "") if msg.headers else ""
                    if "Deleted" in desc:
                        log.info("consumer_deleted", consumer=spec.durable)
                        return
                    if "Exceeded MaxAckPending" in desc or "Leadership" in desc:
                        await anyio.sleep(0.05)
                    break
                log.warning("pull_status", consumer=spec.durable, status=status)
                await anyio.sleep(0.5)  # e.g. 503 while the consumer elects a leader
                break
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await sub.unsubscribe()


async def _next(sub: Subscription, timeout: float) -> Msg:
    """The subscription's next message, as ``sub.next_msg`` gives it but without the
    task, ``wait_for`` and uuid4 that call costs per message (measured: 2-4 % of a
    handler's CPU): a message already queued is taken at once. Keeps nats-py's
    pending-size bookkeeping (its slow-consumer limit counts on it)."""
    queue: asyncio.Queue[Msg] = sub._pending_queue
    try:
        msg = queue.get_nowait()
    except asyncio.QueueEmpty:
        if sub._conn.is_closed:
            raise ConnectionFailed("NATS connection closed under a consumer") from None
        try:
            async with asyncio.timeout(timeout):
                msg = await queue.get()
        except TimeoutError:
            if sub._conn.is_closed:
                raise ConnectionFailed("NATS connection closed under a consumer") from None
            raise
    sub._pending_size -= len(msg.data)
    queue.task_done()
    return msg


def _ack_field(msg: Msg, index: int) -> int | None:
    """A numeric field of the JetStream ack subject, by its v1 position.

    v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>;
    v2 inserts domain and account hash after ACK (two more tokens).
    """
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[index])
    if len(tokens) >= 12:
        return int(tokens[index + 2])
    return None


def stream_of(msg: Msg) -> str:
    """The stream a consumer delivered the message from ("" when it came from none)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return tokens[2]
    if len(tokens) >= 12:
        return tokens[4]
    return ""


def num_delivered(msg: Msg) -> int:
    """How many times JetStream delivered this message (1 = first time)."""
    delivered = _ack_field(msg, 4)
    return 1 if delivered is None else delivered


def stream_seq(msg: Msg) -> int:
    """The message's sequence in its stream (0 when it did not come from a consumer)."""
    seq = _ack_field(msg, 5)
    return 0 if seq is None else seq
