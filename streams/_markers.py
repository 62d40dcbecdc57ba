"""Start markers for at-most-once effects, in a NATS KV bucket per deployment.

Before a handler runs an at-most-once effect it creates the key ``<effect id>``
(a create fails when the key exists). The create is acknowledged only once the
server has written it, so the marker outlives a crash of the handler *and* of
nats-server, which a consumer's delivery count does not: the server persists
consumer state lazily, and after a SIGKILL may redeliver a request as if for the
first time. A second delivery that finds the marker reports the effect
interrupted instead of running it again.

Markers expire after ``MARKER_TTL`` (the bucket's max age): a request redelivered
later than that after it started (its handlers down for longer) could run again.
Durability against power loss needs ``sync_interval: always`` or R3 (docs/guarantees.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from streams._publish import retrying
from streams._subjects import Subjects

MARKER_TTL = timedelta(days=14)


class _Marker(msgspec.Struct, frozen=True):
    run_id: str
    kind: str
    delivery: int
    started_at: datetime


class EffectMarkers:
    """Durable "execution started" records, keyed by effect id."""

    @staticmethod
    def bucket(subjects: Subjects) -> str:
        """The KV bucket holding a deployment's start markers."""
        return f"{subjects.prefix.replace('-', '_')}_fx_started"

    def __init__(self, nc: NATS, subjects: Subjects, *, ttl: timedelta = MARKER_TTL) -> None:
        self._nc = nc
        self._s = subjects
        self.ttl = ttl
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        """Find the bucket, or create it as replicated as the journal."""
        js = self._nc.jetstream()
        bucket = self.bucket(self._s)
        try:
            self._kv = await js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            from nats.js.api import KeyValueConfig

            journal = await js.stream_info(self._s.journal_stream)
            self._kv = await js.create_key_value(
                KeyValueConfig(
                    bucket=bucket,
                    ttl=self.ttl.total_seconds(),
                    history=1,
                    replicas=journal.config.num_replicas or 1,  # as durable as the journal
                )
            )

    async def claim(self, effect_id: str, *, run_id: str, kind: str, delivery: int) -> bool:
        """Record that ``effect_id`` starts now: True if this is the first start,
        False if a marker says an earlier delivery started it.

        Retried through broker restarts and elections; a create stored whose ack was
        lost is found on the retry and answers False (not run: at most once).
        """
        assert self._kv is not None, "EffectMarkers.open() first"
        kv = self._kv
        value = msgspec.json.encode(_Marker(run_id, kind, delivery, datetime.now(UTC)))

        async def create() -> bool:
            try:
                await kv.create(effect_id, value)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False  # the key exists: started before
            except nats.js.errors.KeyNotFoundError:
                # nats-py found the key taken, then gone when it looked (expired in
                # between): an old marker, so the effect was started before
                return False
            return True

        return await retrying(create, f"recording the start of effect {effect_id}")
