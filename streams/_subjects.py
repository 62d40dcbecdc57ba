"""The one module that builds subjects and stream names (no f-string subjects elsewhere).

Layout for prefix ``ms`` (configurable, so tests and tenants can be isolated)::

    ms.j.<run>.e                 journal events of a run (stream MS_JOURNAL)
    ms.j.<run>.fx.<kind>         journal events that are effect requests of <kind>
    ms.j.<run>.end               the run's terminal event (completed, failed, cancelled)
    ms.jn.<run>...               headers-only republish of every journal append (watchers;
                                 ``ms.jn.<run>.end`` alone tells that the run ended)
    ms.event.<run>.<name>        public: publish JSON here to resume a run (stream MS_INBOX)
    ms.in.<p>.<run>.ev.<name>    ...where the stream's transform stores it, p = partition
    ms.in.<p>.<run>.<kind>       internal inbox messages (start, effect.result, ...)
    ms.sched.<run>.<seq>         timer definitions (JetStream scheduled messages)
    ms.worker.<id>.ping          liveness probe of a worker holding partition leases
    ms.dlq.<source>.<run>        dead letters: messages a consumer could not apply (MS_DEADLETTERS)
    ms.active.<run>              a run not yet ended, where a cap is set (MS_ACTIVE)
    ms.runs.<run>                the run index: every run a keyed worker started (MS_RUNS)

Shards (``shards=S``, fixed when the deployment is created, docs/scaling.md): shard k
owns a range of the partitions, with a journal stream and an inbox stream of its own.
Shard 0 keeps the names above, so a deployment of one shard is laid out as it always
was; shard k >= 1 writes its journal on ``ms.j<k>.<run>...`` (stream MS_JOURNAL_<k>,
republished to ``ms.jn.>`` like shard 0) and its timers on ``ms.sched<k>.<run>.<seq>``;
its inbox stream MS_INBOX_<k> holds ``ms.in.<p>.>`` of its partitions. Published events
are taken in by shard 0's inbox stream alone (one stream may own ``ms.event.*.*``) and
stored there under their partition's subject, which a second consumer of the
partition's owner reads.
"""

from __future__ import annotations

import base64
import functools
import re

from schemas import ConfigError

_PREFIX_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


@functools.lru_cache(maxsize=65_536)
def partition_of(run_id: str, partitions: int) -> int:
    """FNV-1a 32 of the run id modulo ``partitions``: the same function as the
    server's ``{{partition(N,1)}}`` subject transform (a test pins the equality).
    Cached: every inbox message and effect request of a run asks again."""
    h = _FNV_OFFSET
    for byte in run_id.encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h % partitions


def journal_shard(subject: str) -> int:
    """The shard of a journal subject (``ms.j3.<run>.e`` is shard 3's, ``ms.j.<run>.e``
    shard 0's)."""
    token = subject.split(".", 2)[1] if subject.count(".") >= 2 else ""
    return int(token[1:]) if token[1:].isdigit() else 0


class Subjects:
    """Subjects and stream names for one Mainspring deployment (a prefix)."""

    def __init__(self, prefix: str = "ms", partitions: int = 16, shards: int = 1) -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(
                f"invalid subject prefix {prefix!r}: start with a-z, then up to 31 of a-z 0-9 _ -"
            )
        if not 1 <= partitions <= 1024:
            raise ConfigError(f"partitions must be between 1 and 1024, got {partitions}")
        if not 1 <= shards <= min(partitions, 64):
            raise ConfigError(
                f"shards must be between 1 and the partitions ({partitions}, at most 64), "
                f"got {shards}"
            )
        self.prefix = prefix
        self.partitions = partitions
        self.shards = shards
        upper = prefix.upper().replace("-", "_")
        self._upper = upper
        self.journal_stream = f"{upper}_JOURNAL"
        """shard 0's journal stream (the only one of a deployment of one shard)"""
        self.inbox_stream = f"{upper}_INBOX"
        """shard 0's inbox stream: it also takes in every published event"""
        self.lease_bucket = f"{prefix.replace('-', '_')}_leases"
        self.dead_letter_stream = f"{upper}_DEADLETTERS"
        self.active_stream = f"{upper}_ACTIVE"
        self.index_stream = f"{upper}_RUNS"

    # shards -----------------------------------------------------------------
    def shard_of_partition(self, partition: int) -> int:
        """The shard owning a partition: shards own equal ranges of the partitions."""
        return partition * self.shards // self.partitions

    def shard_of(self, run_id: str) -> int:
        return self.shard_of_partition(partition_of(run_id, self.partitions))

    def shard_partitions(self, shard: int) -> list[int]:
        return [p for p in range(self.partitions) if self.shard_of_partition(p) == shard]

    def journal_stream_of(self, shard: int) -> str:
        return self.journal_stream if shard == 0 else f"{self._upper}_JOURNAL_{shard}"

    def inbox_stream_of(self, shard: int) -> str:
        return self.inbox_stream if shard == 0 else f"{self._upper}_INBOX_{shard}"

    @property
    def journal_streams(self) -> list[str]:
        return [self.journal_stream_of(k) for k in range(self.shards)]

    def run_journal_stream(self, run_id: str) -> str:
        """The journal stream a run's entries are in."""
        return self.journal_stream_of(self.shard_of(run_id))

    def shard_of_subject(self, subject: str) -> int:
        """The shard of a journal subject (``ms.j3.<run>.e`` is shard 3's)."""
        return journal_shard(subject)

    def _j(self, shard: int) -> str:
        return f"{self.prefix}.j" if shard == 0 else f"{self.prefix}.j{shard}"

    # journal ----------------------------------------------------------------
    def journal(self, run_id: str) -> str:
        return f"{self._j(self.shard_of(run_id))}.{run_id}.e"

    def journal_end(self, run_id: str) -> str:
        """The subject of a run's terminal event (journals written before 2026-12 hold
        it on ``journal(run_id)``)."""
        return f"{self._j(self.shard_of(run_id))}.{run_id}.end"

    def journal_effect(self, run_id: str, kind: str) -> str:
        return f"{self._j(self.shard_of(run_id))}.{run_id}.fx.{kind}"

    def journal_run_filter(self, run_id: str) -> str:
        return f"{self._j(self.shard_of(run_id))}.{run_id}.>"

    def journal_all(self, shard: int = 0) -> str:
        return f"{self._j(shard)}.>"

    def journal_starts(self, shard: int = 0) -> str:
        """The subjects that name every run of a shard once (each run's ``.e``)."""
        return f"{self._j(shard)}.*.e"

    def journal_placeholder(self, shard: int, token: str) -> str:
        """An erased entry's subject in a shard's journal (no run id holds ``token``)."""
        return f"{self._j(shard)}.{token}.gone"

    def effect_filter(self, kind: str, shard: int = 0) -> str:
        return f"{self._j(shard)}.*.fx.{kind}"

    def watch_all(self) -> str:
        return f"{self.prefix}.jn.>"

    def watch_run(self, run_id: str) -> str:
        return f"{self.prefix}.jn.{run_id}.>"

    def watch_end(self, run_id: str) -> str:
        """Where the append of a run's terminal event is announced (and nothing else)."""
        return f"{self.prefix}.jn.{run_id}.end"

    # inbox ------------------------------------------------------------------
    def event(self, run_id: str, name: str) -> str:
        return f"{self.prefix}.event.{run_id}.{name}"

    def event_ingest(self) -> str:
        return f"{self.prefix}.event.*.*"

    def event_transform_dest(self) -> str:
        return (
            f"{self.prefix}.in.{{{{partition({self.partitions},1)}}}}"
            ".{{wildcard(1)}}.ev.{{wildcard(2)}}"
        )

    def event_unrouted(self) -> str:
        """Where events stay that the ingest transform could not route (their subject
        holds a wildcard): swept into the dead-letter stream."""
        return f"{self.prefix}.event.>"

    def is_unrouted(self, subject: str) -> bool:
        return subject.startswith(f"{self.prefix}.event.")

    def inbox(self, run_id: str, kind: str) -> str:
        return f"{self.prefix}.in.{partition_of(run_id, self.partitions)}.{run_id}.{kind}"

    def inbox_all(self) -> str:
        return f"{self.prefix}.in.>"

    def inbox_partition(self, partition: int) -> str:
        return f"{self.prefix}.in.{partition}.>"

    def event_partition(self, partition: int) -> str:
        """A partition's published events, as shard 0's inbox stream stores them."""
        return f"{self.prefix}.in.{partition}.*.ev.*"

    def inbox_stream_subjects(self, shard: int) -> list[str]:
        """What a shard's inbox stream owns (shard 0 also takes in published events)."""
        if self.shards == 1:
            return [self.event_ingest(), self.inbox_all(), self.schedule_all()]
        mine = [self.inbox_partition(p) for p in self.shard_partitions(shard)]
        ingest = [self.event_ingest()] if shard == 0 else []
        return [*ingest, *mine, self.schedule_all(shard)]

    def _sched(self, shard: int) -> str:
        return f"{self.prefix}.sched" if shard == 0 else f"{self.prefix}.sched{shard}"

    def schedule(self, run_id: str, seq: int) -> str:
        return f"{self._sched(self.shard_of(run_id))}.{run_id}.{seq}"

    def schedule_run(self, run_id: str) -> str:
        return f"{self._sched(self.shard_of(run_id))}.{run_id}.>"

    def schedule_all(self, shard: int = 0) -> str:
        return f"{self._sched(shard)}.>"

    def is_inbox(self, subject: str) -> bool:
        """A subject of an inbox stream (a run's input), as stored or as published."""
        return subject.startswith((f"{self.prefix}.in.", f"{self.prefix}.event."))

    # dead letters ---------------------------------------------------------------
    def dead_letter(self, source: str, run_id: str) -> str:
        return f"{self.prefix}.dlq.{source}.{run_id}"

    def dead_letter_all(self) -> str:
        return f"{self.prefix}.dlq.>"

    def index(self, run_id: str) -> str:
        return f"{self.prefix}.runs.{run_id}"

    def index_all(self) -> str:
        return f"{self.prefix}.runs.*"

    def active(self, run_id: str) -> str:
        return f"{self.prefix}.active.{run_id}"

    def active_all(self) -> str:
        return f"{self.prefix}.active.*"

    def partition(self, run_id: str) -> int:
        return partition_of(run_id, self.partitions)

    def parse_inbox(self, subject: str) -> tuple[str, str | None]:
        """``(run_id, event_name)`` of an inbox subject; event_name is None for internal kinds."""
        tokens = subject.split(".")
        # prefix . in . p . run . (ev . name | kind...)
        run_id = tokens[3]
        if len(tokens) == 6 and tokens[4] == "ev":
            return run_id, tokens[5]
        return run_id, None

    # workers and consumers --------------------------------------------------------
    def worker_ping(self, worker_id: str) -> str:
        return f"{self.prefix}.worker.{worker_id}.ping"

    def lease_round(self) -> str:
        """Where a worker asks every worker for a lease round now, not at the next
        period: it found another gone (or is stopping: the id in the body), let
        partitions go to balance the load, or joined (an empty body)."""
        return f"{self.prefix}.worker.round"

    def inbox_consumer(self, partition: int) -> str:
        return f"inbox-p{partition}"

    def event_consumer(self, partition: int) -> str:
        """The consumer of a partition's events in shard 0's inbox stream, where the
        partition belongs to another shard."""
        return f"inbox-ev-p{partition}"

    def unrouted_consumer(self) -> str:
        return "inbox-unrouted"

    def effect_consumer(self, kind: str) -> str:
        return "fx-" + kind.replace(".", "_")

    def lease_key(self, partition: int) -> str:
        return f"p{partition}"

    # object store (large payloads, NATS's object-store layout) ----------------------
    @property
    def object_bucket(self) -> str:
        return f"{self.prefix.replace('-', '_')}_objects"

    @property
    def object_stream(self) -> str:
        return f"OBJ_{self.object_bucket}"

    def object_chunks(self, nuid: str) -> str:
        return f"$O.{self.object_bucket}.C.{nuid}"

    def object_meta(self, name: str) -> str:
        return f"$O.{self.object_bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    def object_all(self) -> list[str]:
        return [f"$O.{self.object_bucket}.C.>", f"$O.{self.object_bucket}.M.>"]
