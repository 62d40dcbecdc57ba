"""Writing into runs' inboxes: the one way an input reaches a run.

Starts, cancels, wakes, effect results, child outcomes and timer firings are inbox
messages (``schemas.InboxUnion``) published to ``<prefix>.in.<partition>.<run>.<kind>``
with a ``Nats-Msg-Id`` that makes a resend harmless. Resume events are not: they are
plain JSON on ``<prefix>.event.<run>.<name>``, which anyone may publish.

What a worker or handler sends for a run to trust is tagged (streams/_keys.py): an
effect result with the effect key of its kind, a timer firing or child outcome with
the deployment key. Starts, cancels and wakes come from clients and carry no tag.
"""

from __future__ import annotations

from datetime import UTC, datetime

from nats.aio.client import Client as NATS

from schemas import ChildDone, EffectResult, InboxUnion, TimerFire, encode_inbox
from streams._keys import HDR_MAC, EffectKeys, Keyring
from streams._publish import publish_checked
from streams._subjects import Subjects


class Inbox:
    """The JetStream inbox (``streams.InboxWriter``)."""

    def __init__(
        self, nc: NATS, subjects: Subjects, keys: Keyring | EffectKeys | None = None
    ) -> None:
        self._nc = nc
        self._subjects = subjects
        self._keys = keys
        """a worker's keyring (tags timer firings and child outcomes) or a handler's
        effect keys (tag results)"""

    async def send(self, message: InboxUnion, *, msg_id: str, kind: str = "") -> None:
        """Publish ``message`` (as it goes on the wire: large values already stored by
        reference) to its run's inbox, and wait for the stream's ack. The subject comes
        from the message's run id alone: never one a request named (a forged request
        could name any). ``kind``: the effect kind of a result (picks its key)."""
        target = self._subjects.inbox(message.run_id, str(type(message).__struct_config__.tag))
        data = encode_inbox(message)
        headers = {"Nats-Msg-Id": msg_id}
        mac = self._tag(message, target, data, kind)
        if mac is not None:
            # the tag's tail in the Msg-Id too: a forger who publishes first under the
            # bare id cannot make the server drop the real message as its duplicate
            headers = {"Nats-Msg-Id": f"{msg_id}.{mac[-16:]}", HDR_MAC: mac}
        await publish_checked(self._nc, target, data, headers)

    def _tag(self, message: InboxUnion, subject: str, data: bytes, kind: str) -> str | None:
        keys = self._keys
        if isinstance(keys, EffectKeys) and isinstance(message, EffectResult):
            return keys.tag_result(kind, subject, data)
        if isinstance(keys, Keyring) and isinstance(message, TimerFire | ChildDone):
            return keys.tag_input(subject, data)
        return None

    async def schedule(self, fire: TimerFire, when: datetime) -> None:
        """Have the stream publish ``fire`` into the run's inbox at ``when`` (the
        server keeps the tag's header on the message it publishes)."""
        target = self._subjects.inbox(fire.run_id, "timer.fire")
        data = encode_inbox(fire)
        headers = {"Nats-Schedule": _at_spec(when), "Nats-Schedule-Target": target}
        mac = self._tag(fire, target, data, "")
        if mac is not None:
            headers[HDR_MAC] = mac
        await publish_checked(
            self._nc, self._subjects.schedule(fire.run_id, fire.seq), data, headers
        )


def _at_spec(when: datetime) -> str:
    """``Nats-Schedule`` value for a one-shot timer (RFC 3339, UTC)."""
    return "@at " + when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
