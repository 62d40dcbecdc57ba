"""The run actor's side of large payloads (DESIGN.md §10 "Payload sizes").

Inputs may carry a payload by reference (a client, a handler or a raw publisher
stored it in the object store first): the actor resolves it before anything reads
it, so workflow code never sees the difference. A value over the cap ends what it
belongs to with the terminal ``payload_too_large``: never a retry loop.
"""

from __future__ import annotations

import msgspec

from schemas import (
    NULL,
    EffectResult,
    ErrorCode,
    ErrorInfo,
    InboxUnion,
    JournalEvent,
    PayloadTooLarge,
    PayloadUnavailable,
    RunFailed,
    RunStarted,
    is_ref,
)
from streams import Objects


async def resolve_input(objects: Objects, message: InboxUnion) -> InboxUnion:
    """An inbox message with its referenced payload resolved.

    An effect result whose object is missing, altered or over the cap becomes that
    effect's failure (``payload_unavailable`` / ``payload_too_large``); for any other
    message the error propagates (the input is retried, then dead-lettered).
    """
    try:
        return await objects.resolve_fields(message)
    except (PayloadUnavailable, PayloadTooLarge) as e:
        if not isinstance(message, EffectResult):
            raise
        info = (
            e.info
            if isinstance(e, PayloadTooLarge)
            else ErrorInfo(type=ErrorCode.PAYLOAD_UNAVAILABLE, message=str(e))
        )
        return msgspec.structs.replace(message, ok=False, result=NULL, error=info)


async def event_body(objects: Objects, data: bytes, name: str) -> bytes:
    """A resume event's payload: as published, or the value it references."""
    if not is_ref(data):
        return data
    return bytes(await objects.resolve(data, f"the payload of event {name!r}"))


def too_large(event: JournalEvent, error: PayloadTooLarge) -> RunFailed:
    """What the run journals instead of an event whose payload is over the cap."""
    if isinstance(event, RunStarted):  # inputs are checked before they get here
        raise error
    return RunFailed(
        run_id=event.run_id, n=event.n, at=event.at, cause=event.cause, error=error.info
    )
