"""Publishing into a stream and waiting for its ack, with retries that are safe.

Every Mainspring publish carries a ``Nats-Msg-Id`` (journal ``<run>:<n>``, results
``<effect id>``, starts ``start:<run>``, events a generated id), so a retry after a
lost ack or a broker restart is dropped as a duplicate by JetStream.
"""

from __future__ import annotations

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from schemas import ConnectionFailed


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


async def publish(
    nc: NATS,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None = None,
    *,
    timeout: float = 5.0,
    attempts: int = 6,
) -> PubAck:
    """Publish and return the stream's ack (which may carry an error)."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            msg = await nc.request(subject, data, timeout=timeout, headers=headers)
            return _ack_decoder.decode(msg.data)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
            last = e  # broker restarting or stream leader moving: try again
            await anyio.sleep(min(0.1 * 2**attempt, 2.0))
        except nats.errors.ConnectionClosedError as e:
            raise ConnectionFailed("the NATS connection is closed") from e
    raise ConnectionFailed(
        f"no stream acknowledged {subject} after {attempts} tries ({last!r}); "
        "is nats-server running with JetStream and are Mainspring's streams there?"
    ) from last


async def publish_checked(
    nc: NATS, subject: str, data: bytes, headers: dict[str, str] | None = None
) -> PubAck:
    """Publish; raise ``ConnectionFailed`` if the stream refused the message."""
    ack = await publish(nc, subject, data, headers)
    if ack.error is not None:
        raise ConnectionFailed(f"stream refused {subject}: {ack.error.description}")
    return ack
