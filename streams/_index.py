"""The run index: every run a worker started, tagged, in a stream of its own.

A journal that vanished whole (its stream deleted, or restored from an older copy)
leaves nothing in the journal to notice it by. So a keyed worker also records each
run it starts in ``<PREFIX>_RUNS`` (subject ``<prefix>.runs.<run>``, one message per
run, deletes and purges denied): the body is the stream sequence of its
``run.started``, tagged like an inbox input (``ms1:idx:``). ``audit verify --all``
compares the index with the journal: a run the index knows and the journal does not
has vanished, even without PostgreSQL (DESIGN.md §9). A run erased on request
(``mainspring erase``) keeps its entry, replaced by the erasure's record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS

from streams._erase import Erasure, erasure_record
from streams._jsapi import stream_info
from streams._keys import HDR_MAC, Keyring
from streams._publish import publish_checked
from streams._records import read_all
from streams._subjects import Subjects


def index_stream_config(subjects: Subjects) -> dict[str, Any]:
    return {
        "name": subjects.index_stream,
        "description": "Mainspring run index: every run a worker started, tagged",
        "subjects": [subjects.index_all()],
        "retention": "limits",
        "storage": "file",
        "max_msgs_per_subject": 1,
        "deny_delete": True,
        "deny_purge": True,
        "allow_direct": True,
        "duplicate_window": 120 * 1_000_000_000,
    }


@dataclass(frozen=True)
class IndexEntry:
    problem: str | None
    """None if the entry checks out (or there are no keys to check it with)"""
    erasure: Erasure | None
    """the record of its erasure, if the run was erased on request"""
    started_seq: int
    """the journal stream sequence of its ``run.started`` (0: unknown)"""


class RunIndex:
    """Record runs as they start; list what was recorded, with each entry's verdict."""

    def __init__(self, nc: NATS, subjects: Subjects, keys: Keyring | None) -> None:
        self._nc = nc
        self._s = subjects
        self._keys = keys
        self.present = False
        """the stream exists (``open``): entries are written only then, and only keyed"""

    async def open(self) -> None:
        self.present = await stream_info(self._nc, self._s.index_stream) is not None

    async def record(self, run_id: str, started_seq: int) -> None:
        """Note that ``run_id`` began at journal stream sequence ``started_seq``
        (idempotent: a redelivered start records it again harmlessly)."""
        if not self.present or self._keys is None:
            return
        subject = self._s.index(run_id)
        body = str(started_seq).encode()
        headers = {"Nats-Msg-Id": f"idx:{run_id}", HDR_MAC: self._keys.tag_index(subject, body)}
        await publish_checked(self._nc, subject, body, headers)

    async def entries(self) -> dict[str, IndexEntry]:
        """Every indexed run, with what is wrong with its entry (if anything)."""
        found: dict[str, IndexEntry] = {}
        for rec in await read_all(self._nc, self._s.index_stream, self._s.index_all()):
            run_id = rec.subject.rsplit(".", 1)[-1]
            problem = None
            if self._keys is not None:
                problem = self._keys.check_index(rec.subject, rec.data, rec.headers.get(HDR_MAC))
            erasure = erasure_record(rec.data)
            started = int(rec.data) if erasure is None and rec.data.isdigit() else 0
            found[run_id] = IndexEntry(problem, erasure, started)
        return found
