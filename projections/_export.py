"""``audit export``: a run's history as JSONL that verifies offline, with only the file.

Line 1 is a header; then one line per event carrying the exact stored bytes (as
the JSON text they are) and the hash links; then one line per payload object the
events reference (large values, DESIGN.md §10), with its bytes; then the run's
signed checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Union

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS

from projections._audit import (
    AuditReport,
    ChainChecker,
    Checkpoint,
    Problem,
    check_checkpoints,
    load_checkpoints,
)
from schemas import RunNotFound, stored_refs
from streams import Journal, Objects, Subjects, object_problem

FORMAT = "mainspring-audit/v1"


class ExportHeader(msgspec.Struct, tag="header", tag_field="kind"):
    format: str
    run_id: str
    events: int
    exported_at: datetime


class ExportEvent(msgspec.Struct, tag="event", tag_field="kind"):
    n: int
    seq: int
    prev: str
    hash: str
    data: str


class ExportObject(msgspec.Struct, tag="object", tag_field="kind"):
    """A payload stored by reference: ``ref`` is ``sha256:<hex>``, ``data`` the value's
    JSON text exactly as stored (its SHA-256 must be the digest)."""

    ref: str
    size: int
    data: str


class ExportCheckpoint(msgspec.Struct, tag="checkpoint", tag_field="kind"):
    n: int
    hash: str
    signature: str | None = None
    key_id: str | None = None


Line = Union[ExportHeader, ExportEvent, ExportObject, ExportCheckpoint]  # noqa: UP007
_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Line] = msgspec.json.Decoder(Line)


async def export_run(
    nc: NATS, subjects: Subjects, pool: asyncpg.Pool | None, run_id: str, out: IO[bytes]
) -> int:
    """Write the run's JSONL history to ``out``; return the number of events."""
    events = await Journal(nc, subjects).load(run_id, verify=False, resolve=False)
    if not events:
        raise RunNotFound(f"no journal for run {run_id!r}")
    checkpoints: list[Checkpoint] = []
    if pool is not None:
        async with pool.acquire() as conn:
            checkpoints = await load_checkpoints(conn, run_id)
    lines: list[Line] = [ExportHeader(FORMAT, run_id, len(events), datetime.now(UTC))]
    lines += [ExportEvent(e.n, e.seq, e.prev.hex(), e.hash.hex(), e.data.decode()) for e in events]
    lines += await _objects_of(Objects(nc, subjects), [e.data for e in events])
    lines += [
        ExportCheckpoint(
            cp.n, cp.hash.hex(), cp.signature.hex() if cp.signature else None, cp.key_id
        )
        for cp in checkpoints
    ]
    for line in lines:
        out.write(_encoder.encode(line) + b"\n")
    return len(events)


def verify_export(lines: Iterable[bytes], public_key: Ed25519PublicKey | None) -> AuditReport:
    """Verify an exported history with nothing but the file (and the public key)."""
    report = AuditReport()
    header: ExportHeader | None = None
    checker: ChainChecker | None = None
    checkpoints: list[Checkpoint] = []
    objects: dict[str, bytes] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            line = _decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            report.problems.append(Problem("?", "file", 0, "unreadable", f"line {number}: {e}"))
            return report
        if isinstance(line, ExportHeader):
            if line.format != FORMAT:
                report.problems.append(
                    Problem(line.run_id, "file", 0, "format", f"unknown format {line.format!r}")
                )
                return report
            header, checker = line, ChainChecker(line.run_id, "file")
        elif checker is None or header is None:
            report.problems.append(Problem("?", "file", 0, "format", "the header line is missing"))
            return report
        elif isinstance(line, ExportEvent):
            checker.add(
                line.n, bytes.fromhex(line.prev), bytes.fromhex(line.hash), line.data.encode()
            )
        elif isinstance(line, ExportObject):
            objects[line.ref.removeprefix("sha256:")] = line.data.encode()
        else:
            checkpoints.append(
                Checkpoint(
                    header.run_id,
                    line.n,
                    bytes.fromhex(line.hash),
                    bytes.fromhex(line.signature) if line.signature else None,
                    line.key_id,
                )
            )
    if checker is None or header is None:
        report.problems.append(Problem("?", "file", 0, "format", "empty file"))
        return report
    report.runs, report.events = 1, checker.n
    if checker.problem:
        report.problems.append(checker.problem)
    elif checker.n != header.events:
        report.problems.append(
            Problem(
                header.run_id,
                "file",
                checker.n + 1,
                "truncated",
                f"the header announces {header.events} events, the file holds {checker.n}",
            )
        )
    for n, ref in checker.refs:
        wrong = object_problem(ref, objects.get(ref.digest), "the file")
        if wrong is not None:
            report.problems.append(Problem(header.run_id, "file", n, wrong[0], wrong[1]))
    found, notes = check_checkpoints(checkpoints, [{header.run_id: checker}], public_key)
    report.problems += found
    report.notes += notes
    if not checkpoints:
        report.notes.append("the file has no checkpoint: a truncated tail cannot be ruled out")
    return report


async def _objects_of(objects: Objects, stored: list[bytes]) -> list[Line]:
    """The payload objects the events reference, each once, as stored (unchecked: the
    verifier checks them; a missing one is simply absent from the file)."""
    lines: list[Line] = []
    seen: set[str] = set()
    for data in stored:
        for ref in stored_refs(data):
            if ref.digest in seen:
                continue
            seen.add(ref.digest)
            content = await objects.read(ref.digest)
            if content is not None:
                text = content.decode(errors="replace")
                lines.append(ExportObject(ref.ref, len(content), text))
    return lines
