"""Publishing into a stream and waiting for its ack, with retries that are safe.

Every Mainspring publish carries a ``Nats-Msg-Id`` (journal ``<run>:<n>``, results
``<effect id>``, starts ``start:<run>``, events a generated id), so a retry after a
lost ack or a broker restart is dropped as a duplicate by JetStream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS

from schemas import ConnectionFailed

T = TypeVar("T")


class PubAckError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: PubAckError | None = None


_ack_decoder = msgspec.json.Decoder(PubAck)


class Unavailable(Exception):
    """A JetStream call found no stream to answer (yet): worth retrying.

    Internal: ``retrying`` retries it, then raises ``ConnectionFailed``; it is not in
    the MainspringError tree.
    """


async def retrying(call: Callable[[], Awaitable[T]], what: str, retry_for: float = 30.0) -> T:
    """Run ``call``, retrying timeouts and "no responders" for ``retry_for`` seconds:
    long enough for a clustered stream to elect a new leader after losing a node (seen
    taking several seconds) or for a single server to restart."""
    deadline = anyio.current_time() + retry_for
    delay = 0.05
    while True:
        try:
            return await call()
        except (
            nats.errors.TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,  # KV/JetStream calls during elections
            Unavailable,
        ) as e:
            if anyio.current_time() + delay > deadline:
                raise ConnectionFailed(
                    f"{what}: no answer for {retry_for:.0f}s ({e!r}); is nats-server running "
                    "with JetStream and are Mainspring's streams there?"
                ) from e
            await anyio.sleep(delay)
            delay = min(delay * 2, 1.0)
        except nats.errors.ConnectionClosedError as e:
            raise ConnectionFailed("the NATS connection is closed") from e


async def publish(
    nc: NATS,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 5.0,
    retry_for: float = 30.0,
) -> PubAck:
    """Publish and return the stream's ack (which may carry an error); retried safely
    (every Mainspring publish carries a Nats-Msg-Id)."""

    async def once() -> PubAck:
        msg = await nc.request(subject, data, timeout=timeout, headers=headers)
        return _ack_decoder.decode(msg.data)

    return await retrying(once, f"publishing to {subject}", retry_for)


async def publish_checked(
    nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> PubAck:
    """Publish; raise ``ConnectionFailed`` if the stream refused the message."""
    ack = await publish(nc, subject, data, headers)
    if ack.error is not None:
        raise ConnectionFailed(f"stream refused {subject}: {ack.error.description}")
    return ack
