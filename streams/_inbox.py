"""Writing into runs' inboxes: the one way an input reaches a run.

Starts, cancels, wakes, effect results, child outcomes and timer firings are inbox
messages (``schemas.InboxUnion``) published to ``<prefix>.in.<partition>.<run>.<kind>``
with a ``Nats-Msg-Id`` that makes a resend harmless. Resume events are not: they are
plain JSON on ``<prefix>.event.<run>.<name>``, which anyone may publish.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from schemas import InboxUnion, TimerFire, encode_inbox
from streams._publish import publish_checked
from streams._subjects import Subjects


class Inbox:
    """The JetStream inbox (``streams.InboxWriter``)."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects

    async def send(self, message: InboxUnion, *, msg_id: str) -> None:
        """Publish ``message`` (as it goes on the wire: large values already stored by
        reference) to its run's inbox, and wait for the stream's ack. The subject comes
        from the message's run id alone: never one a request named (a forged request
        could name any)."""
        kind = str(type(message).__struct_config__.tag)
        target = self._subjects.inbox(message.run_id, kind)
        await publish_checked(self._nc, target, encode_inbox(message), {"Nats-Msg-Id": msg_id})

    async def schedule(self, fire: TimerFire, when: datetime) -> None:
        """Have the stream publish ``fire`` into the run's inbox at ``when``."""
        await publish_checked(
            self._nc,
            self._subjects.schedule(fire.run_id, fire.seq),
            encode_inbox(fire),
            {
                "Nats-Schedule": _at_spec(when),
                "Nats-Schedule-Target": self._subjects.inbox(fire.run_id, "timer.fire"),
            },
        )


def _at_spec(when: datetime) -> str:
    """``Nats-Schedule`` value for a one-shot timer (RFC 3339, UTC)."""
    return "@at " + when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
