"""What every actor of a worker shares: connection, journal, subjects, registry, options."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors._registry import Registry
from schemas import InboxUnion, TimerFire
from streams import (
    ActiveRuns,
    InboxWriter,
    JournalStore,
    Keyring,
    Objects,
    PayloadLimits,
    RunIndex,
    Subjects,
    dead_letter_msg,
    open_inbox,
    open_journal,
)


@dataclass(frozen=True)
class WorkerOptions:
    """Tunables of a worker. Defaults suit production; tests shrink the timings."""

    concurrency: int = 1000
    """activations processed at once (each one run's turn)"""
    max_actors: int = 10_000
    """runs kept in memory; idle ones beyond this are evicted and replay on their next input"""
    max_events: int = 10_000
    """journal events per run before it fails with limit.events"""
    max_depth: int = 8
    """child-run nesting before the parent fails with limit.child_depth"""
    max_rejections: int = 100
    """resume events a run journals as rejected (bad JSON, undeclared name, payload the
    wait refuses); later junk for that run is dead-lettered instead of journaled"""
    poison_deliveries: int = 5
    """deliveries of an inbox message whose activation keeps failing (a bug, not an
    outage) before it is moved to the dead-letter stream"""
    max_cost_usd: float = 0.0
    """default cost budget per run (USD reported by effect results; 0: none) -> limit.cost"""
    max_duration_s: float = 0.0
    """default wall-time limit per run in seconds (0: none) -> limit.wall_time"""
    lease_ttl_s: float = 10.0
    """a partition's lease lapses this long after its holder's last renewal (renewed
    every third of it): how long a worker cut off from NATS keeps others waiting"""
    peer_check_s: float = 0.2
    """how often each worker pings the next live worker (a ring): one whose connection
    is gone is noticed within this, and its partitions taken at once instead of after a
    lease round (0: off, takeover at the next round)"""
    ack_wait_s: float = 30.0
    forced_replay: bool = False
    """test mode to find nondeterminism: after every journal append, the run's code is
    replayed from the journal before it decides anything more"""
    payloads: PayloadLimits = field(default_factory=PayloadLimits)
    """values over ``threshold`` go to the object store; over ``cap``: payload_too_large"""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Runtime:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        registry: Registry,
        options: WorkerOptions,
        *,
        journal: JournalStore | None = None,
        inbox: InboxWriter | None = None,
        keys: Keyring | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.registry = registry
        self.options = options
        self.keys = keys
        """the deployment's keys: appends are tagged, inputs from workers and handlers
        checked (None: nothing is tagged or checked)"""
        self.objects = Objects(nc, subjects, options.payloads)
        self.journal = journal or open_journal(nc, subjects, self.objects, keys)
        self.inbox = inbox or open_inbox(nc, subjects, keys)
        self.index = RunIndex(nc, subjects, keys)
        """where a keyed worker records each run it starts (audit finds vanished ones)"""
        self.active = ActiveRuns(nc, subjects)
        """the cap on runs not yet ended, if the deployment has one (read at start)"""

    async def dead_letter(self, msg: Msg, *, source: str, reason: str, run_id: str) -> None:
        """Move an inbox message that cannot be applied to the dead-letter stream."""
        await dead_letter_msg(
            self.nc,
            self.subjects,
            msg,
            source=source,
            reason=reason,
            run_id=run_id,
        )

    async def send_inbox(self, message: InboxUnion, msg_id: str) -> None:
        """Send to a run's inbox (a large value goes by reference)."""
        await self.inbox.send(await self.objects.store_fields(message), msg_id=msg_id)

    async def schedule(self, run_id: str, seq: int, when: datetime) -> None:
        """Have ``timer.fire`` for (run, seq) delivered into the run's inbox at ``when``."""
        await self.inbox.schedule(TimerFire(run_id=run_id, seq=seq), when)
