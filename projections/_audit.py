"""Audit: prove a run's history was not altered.

Three sources tell the same story when nothing was tampered with: the journal
stream, the Postgres projection, and signed checkpoints of finished runs. Each
source's hash chain is checked on its own (``ChainChecker``), then their heads
are compared: with a hash chain, equal heads mean identical histories.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import asyncpg
import msgspec
import nats.errors
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from projections._checkpoints import verify_signature
from schemas import PayloadRef, stored_refs
from streams import (
    GENESIS,
    HDR_HASH,
    HDR_MAC,
    HDR_N,
    HDR_PREV,
    Keyring,
    Objects,
    RunIndex,
    Subjects,
    Verdict,
    chain,
    is_placeholder,
    journal_states,
    read_records,
    stream_seq,
)

if TYPE_CHECKING:
    from projections._schema import Conn


class _OnlyN(msgspec.Struct):
    n: int


_n_decoder = msgspec.json.Decoder(_OnlyN)


@dataclass(frozen=True)
class Problem:
    """One thing wrong, where, and at which event."""

    run_id: str
    source: str  # stream | postgres | file | cross-check | checkpoint
    n: int
    kind: str  # modified | inserted | deleted | reordered | truncated | link-broken | ...
    detail: str

    def __str__(self) -> str:
        return f"run {self.run_id}: {self.source}, event {self.n}: {self.kind}: {self.detail}"


class ChainChecker:
    """Checks one run's events, fed in storage order; remembers the first problem."""

    __slots__ = ("hash", "legacy", "n", "problem", "refs", "run_id", "source")

    def __init__(self, run_id: str, source: str) -> None:
        self.run_id = run_id
        self.source = source
        self.n = 0
        self.hash = GENESIS
        self.problem: Problem | None = None
        self.refs: list[tuple[int, PayloadRef]] = []
        """payloads stored by reference, by event: their objects are checked too"""
        self.legacy = 0
        """entries from before the deployment had keys (untagged, not refused)"""

    def add(
        self, n: int, prev: bytes, link: bytes, data: bytes, author: Verdict | None = None
    ) -> None:
        """The next stored entry; ``author``: how its tag checked (None: not checked)."""
        if self.problem is not None:
            return
        i = self.n + 1
        try:
            inner_n: int | None = _n_decoder.decode(data).n
        except (msgspec.DecodeError, msgspec.ValidationError):
            inner_n = None
        if n > i:
            self._fail(i, "deleted", f"event {i} is missing: the next stored event is {n}")
        elif n < i:
            self._fail(i, "inserted", f"event {n} appears again after event {self.n}")
        elif inner_n is not None and inner_n != n:
            self._fail(n, "reordered", f"position {n} holds the bytes of event {inner_n}")
        elif chain(prev, data) != link:
            self._fail(n, "modified", "the stored bytes do not match their hash")
        elif prev != self.hash:
            self._fail(
                n,
                "link-broken",
                f"its link does not match event {i - 1}: an event before it was altered "
                "(with its hash recomputed), inserted or removed",
            )
        elif author is not None and not author.ok:
            self._fail(n, "forged", f"not written by a worker of this deployment: {author.problem}")
        else:
            if author is not None and author.legacy:
                self.legacy += 1
            self.n, self.hash = n, link
            self.refs += [(n, ref) for ref in stored_refs(data)]

    def _fail(self, n: int, kind: str, detail: str) -> None:
        self.problem = Problem(self.run_id, self.source, n, kind, detail)


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    n: int
    hash: bytes
    signature: bytes | None
    key_id: str | None


@dataclass
class AuditReport:
    runs: int = 0
    events: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------------ sources
async def check_stream(
    nc: NATS,
    subjects: Subjects,
    run_id: str | None = None,
    keys: Keyring | None = None,
    erased: dict[str, Erased] | None = None,
) -> dict[str, ChainChecker]:
    """One ordered pass over the journal (one run, or all of them); with ``keys`` each
    entry's tag is checked too (an untagged one is forged, or legacy if old enough).
    The placeholders of erased runs are counted into ``erased``, by run.

    Uses an ordered push consumer: its messages carry only the stored headers,
    which is what makes this pass fast (nats-py parses every header).
    """
    checkers: dict[str, ChainChecker] = {}
    if run_id is not None:
        where = [(subjects.run_journal_stream(run_id), subjects.journal_run_filter(run_id))]
    else:
        where = [
            (subjects.journal_stream_of(k), subjects.journal_all(k)) for k in range(subjects.shards)
        ]
    for stream, filt in where:  # a run's entries are all in its shard's journal
        await _check_shard(nc, stream, filt, keys, erased, checkers)
    return checkers


async def _check_shard(
    nc: NATS,
    stream: str,
    filt: str,
    keys: Keyring | None,
    erased: dict[str, Erased] | None,
    checkers: dict[str, ChainChecker],
) -> None:
    first, _ = await read_records(nc, stream, filt, 1, size=1)
    if not first:
        return
    done = anyio.Event()

    async def check(msg: Msg) -> None:
        rid = msg.subject.split(".", 3)[2]
        if is_placeholder(msg.subject):
            if erased is not None:
                _placeholder(msg, keys, erased)
            if msg.reply and msg.reply.rsplit(".", 1)[-1] == "0":
                done.set()
            return
        checker = checkers.get(rid)
        if checker is None:
            checker = checkers[rid] = ChainChecker(rid, "stream")
        headers = msg.headers or {}
        try:
            link = (
                int(headers[HDR_N]),
                bytes.fromhex(headers[HDR_PREV]),
                bytes.fromhex(headers[HDR_HASH]),
            )
        except (KeyError, ValueError):
            if checker.problem is None:
                checker._fail(
                    checker.n + 1, "undecodable", f"{msg.subject} lacks its hash-chain headers"
                )
        else:
            author = None
            if keys is not None:
                mac = headers.get(HDR_MAC)
                author = keys.check_entry(msg.subject, link[2], mac, lambda: stream_seq(msg))
            checker.add(link[0], link[1], link[2], msg.data, author)
        if msg.reply and msg.reply.rsplit(".", 1)[-1] == "0":  # nothing pending after it
            done.set()

    sub = await nc.jetstream().subscribe(
        filt,
        cb=check,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        stream=stream,
    )
    try:
        await done.wait()
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


@dataclass
class Erased:
    """An erased run's placeholders in the journal (streams/_erase.py)."""

    entries: int = 0
    first_seq: int = 0
    problem: str | None = None


def _placeholder(msg: Msg, keys: Keyring | None, erased: dict[str, Erased]) -> None:
    rid = msg.data.decode(errors="replace")
    found = erased.setdefault(rid, Erased(first_seq=stream_seq(msg)))
    found.entries += 1
    if keys is not None and found.problem is None:
        found.problem = keys.check_index(msg.subject, msg.data, (msg.headers or {}).get(HDR_MAC))


async def check_postgres(conn: Conn, run_id: str | None = None) -> dict[str, ChainChecker]:
    """One ordered pass over ``run_events`` (by run, then position)."""
    checkers: dict[str, ChainChecker] = {}
    query = (
        "SELECT run_id, n, prev_hash, hash, data FROM run_events "
        "WHERE ($1::text IS NULL OR run_id = $1) ORDER BY run_id, n"
    )
    async with conn.transaction():
        async for row in conn.cursor(query, run_id, prefetch=5000):
            rid = row["run_id"]
            checker = checkers.get(rid)
            if checker is None:
                checker = checkers[rid] = ChainChecker(rid, "postgres")
            checker.add(row["n"], bytes(row["prev_hash"]), bytes(row["hash"]), bytes(row["data"]))
    return checkers


async def load_checkpoints(conn: Conn, run_id: str | None = None) -> list[Checkpoint]:
    rows = await conn.fetch(
        "SELECT run_id, n, hash, signature, key_id FROM checkpoints "
        "WHERE ($1::text IS NULL OR run_id = $1) ORDER BY run_id, n",
        run_id,
    )
    return [
        Checkpoint(
            r["run_id"],
            r["n"],
            bytes(r["hash"]),
            None if r["signature"] is None else bytes(r["signature"]),
            r["key_id"],
        )
        for r in rows
    ]


# ------------------------------------------------------------------ comparisons
def compare(
    primary: dict[str, ChainChecker], secondary: dict[str, ChainChecker], label: str
) -> list[Problem]:
    """Both sources verified on their own: equal heads mean equal histories."""
    problems = []
    for rid in sorted(set(primary) | set(secondary)):
        a, b = primary.get(rid), secondary.get(rid)
        if a is None or b is None:
            missing = "the stream" if a is None else label
            problems.append(
                Problem(rid, "cross-check", 1, "missing", f"the run is absent from {missing}")
            )
            continue
        if a.problem or b.problem:
            continue  # already reported where it is
        if (a.n, a.hash) != (b.n, b.hash):
            n = min(a.n, b.n)
            detail = (
                f"{label} has {b.n} events, the stream has {a.n}"
                if a.n != b.n
                else f"{label} and the stream end in different hashes"
            )
            kind = "truncated" if b.n < a.n else ("inserted" if b.n > a.n else "mismatch")
            problems.append(Problem(rid, "cross-check", n + (1 if a.n != b.n else 0), kind, detail))
    return problems


def check_checkpoints(
    checkpoints: Iterable[Checkpoint],
    sources: list[dict[str, ChainChecker]],
    public_key: Ed25519PublicKey | None,
) -> tuple[list[Problem], list[str]]:
    """A signed checkpoint (run, n, h_n) must match every source's chain."""
    problems: list[Problem] = []
    notes: list[str] = []
    unsigned = 0
    for cp in checkpoints:
        if cp.signature is None:
            unsigned += 1
        elif public_key is not None and not verify_signature(
            public_key, cp.run_id, cp.n, cp.hash, cp.signature
        ):
            problems.append(
                Problem(
                    cp.run_id,
                    "checkpoint",
                    cp.n,
                    "bad-signature",
                    "the checkpoint's signature does not verify with this key",
                )
            )
            continue
        for checkers in sources:
            checker = checkers.get(cp.run_id)
            if checker is None or checker.problem is not None:
                continue
            if checker.n < cp.n:
                problems.append(
                    Problem(
                        cp.run_id,
                        checker.source,
                        checker.n + 1,
                        "truncated",
                        f"a checkpoint signed event {cp.n} but only {checker.n} events are stored",
                    )
                )
            elif checker.n == cp.n and checker.hash != cp.hash:
                problems.append(
                    Problem(
                        cp.run_id,
                        checker.source,
                        cp.n,
                        "mismatch",
                        "the last event differs from the signed checkpoint",
                    )
                )
            elif checker.n > cp.n:
                problems.append(
                    Problem(
                        cp.run_id,
                        checker.source,
                        cp.n + 1,
                        "inserted",
                        f"events after the run's signed end (event {cp.n})",
                    )
                )
    if unsigned:
        notes.append(f"{unsigned} checkpoint(s) are unsigned (no signing key was configured)")
    if public_key is None:
        notes.append("no public key given: checkpoint signatures were not verified")
    return problems, notes


async def audit(
    nc: NATS,
    subjects: Subjects,
    pool: asyncpg.Pool | None,
    run_id: str | None = None,
    public_key: Ed25519PublicKey | None = None,
    keys: Keyring | None = None,
) -> AuditReport:
    """Verify the stream (with ``keys``: who wrote each entry too), Postgres (if given),
    checkpoints, and cross-check them."""
    report = AuditReport()
    erased: dict[str, Erased] = {}
    stream = await check_stream(nc, subjects, run_id, keys, erased if run_id is None else None)
    sources = [stream]
    report.runs = len(stream)
    report.events = sum(c.n for c in stream.values())
    if pool is not None:
        async with pool.acquire() as conn:
            pg = await check_postgres(conn, run_id)
            checkpoints = await load_checkpoints(conn, run_id)
        sources.append(pg)
        report.problems += [c.problem for c in pg.values() if c.problem]
        report.problems += compare(stream, pg, "postgres")
        found, notes = check_checkpoints(checkpoints, sources, public_key)
        report.problems += found
        report.notes += notes
    else:
        report.notes.append("no Postgres DSN: only the stream was verified")
    report.problems = [c.problem for c in stream.values() if c.problem] + report.problems
    if run_id is None:
        report.problems += await check_index(nc, subjects, keys, stream, erased, report.notes)
    if keys is None:
        report.notes.append(
            "no keys given (--keys): who wrote each entry was not checked, only its chain"
        )
    legacy = sum(c.legacy for c in stream.values())
    if legacy:
        report.notes.append(
            f"{legacy} entr{'y is' if legacy == 1 else 'ies are'} unauthenticated-legacy: "
            "untagged, written before the deployment had keys"
        )
    report.problems += await check_objects(Objects(nc, subjects), stream)
    if run_id is not None and not stream:
        report.problems.append(Problem(run_id, "stream", 1, "missing", "no journal for this run"))
    return report


async def check_index(
    nc: NATS,
    subjects: Subjects,
    keys: Keyring | None,
    stream: dict[str, ChainChecker],
    erased: dict[str, Erased],
    notes: list[str],
) -> list[Problem]:
    """Every run the index knows still has a journal (a whole journal can vanish
    without a trace in the journal stream), and every index entry is a worker's. A run
    erased on request has a record in the index and placeholders in the journal: each
    without the other is reported."""
    index = RunIndex(nc, subjects, keys)
    await index.open()
    entries = await index.entries() if index.present else {}
    if not index.present:
        notes.append("no run index: a run whose whole journal vanished cannot be noticed")
    problems = []
    for rid, found in sorted(erased.items()):
        record = entries[rid].erasure if rid in entries else None
        if found.problem is not None:
            problems.append(Problem(rid, "stream", 1, "forged", f"its erasure: {found.problem}"))
        elif record is None and index.present:
            problems.append(
                Problem(
                    rid,
                    "stream",
                    1,
                    "erased-unrecorded",
                    f"{found.entries} entries from stream sequence {found.first_seq} were "
                    "replaced by erasure placeholders, but the run index has no record of it",
                )
            )
        elif record is not None:
            notes.append(
                f"run {rid} was erased on request at {record.erased_at} ({record.reason!r}): "
                f"{record.entries} entries, the last with hash {record.head_hash[:16]}…"
            )
    first_seqs = await _journal_first_seqs(nc, subjects)
    retired = 0
    for rid, entry in sorted(entries.items()):
        record = entry.erasure
        if entry.problem is not None:
            problems.append(Problem(rid, "index", 1, "forged", f"its index entry: {entry.problem}"))
        elif record is not None:
            if rid not in erased or erased[rid].entries != record.entries:
                problems.append(
                    Problem(
                        rid,
                        "index",
                        1,
                        "erased-mismatch",
                        f"the run index records {record.entries} entries erased; the journal "
                        f"holds {erased[rid].entries if rid in erased else 0} placeholders",
                    )
                )
        elif rid not in stream and 0 < entry.started_seq < first_seqs[subjects.shard_of(rid)]:
            retired += 1  # aged out by the journal's limits (retention), not removed
        elif rid not in stream:
            problems.append(
                Problem(
                    rid,
                    "index",
                    1,
                    "vanished",
                    "a worker started this run (the run index says so) but the journal "
                    "holds none of it: its history was removed",
                )
            )
    if retired:
        firsts = ", ".join(map(str, first_seqs))
        notes.append(
            f"{retired} run(s) began before the journal's first entry ({firsts}): "
            "aged out by its limits (retention), not reported as vanished"
        )
    return problems


async def _journal_first_seqs(nc: NATS, subjects: Subjects) -> list[int]:
    """Each shard's journal's first sequence (0: no such stream)."""
    return [int(state.get("first_seq", 0)) for state in await journal_states(nc, subjects)]


async def check_objects(objects: Objects, checkers: dict[str, ChainChecker]) -> list[Problem]:
    """Every payload stored by reference is in the bucket, byte for byte what its digest
    (covered by the chain) says: a replaced or missing object is reported at the event
    that references it. Each object is read once."""
    problems: list[Problem] = []
    verdicts: dict[str, tuple[str, str] | None] = {}
    for rid in sorted(checkers):
        for n, ref in checkers[rid].refs:
            if ref.digest not in verdicts:
                verdicts[ref.digest] = await objects.verify(ref)
            found = verdicts[ref.digest]
            if found is not None:
                problems.append(Problem(rid, checkers[rid].source, n, found[0], found[1]))
    return problems
