"""The CLI's ``--json`` envelope: one stable object per command (JSON Schema exported).

``schema_version`` changes only when a field changes meaning; fields are only added.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas._common import ErrorInfo

ENVELOPE_VERSION = "mainspring.cli/v1"

EXIT_CODES = {
    0: "ok: the run completed, the command succeeded, the audit found everything intact",
    10: "invalid input: a bad run id or payload, an unknown run, a bad spec, a usage error",
    20: "runtime or connection error: NATS or PostgreSQL unreachable, server too old",
    30: "the run failed or is parked, an audit found an alteration, or a replay an incompatibility",
    40: "the run is waiting for an event",
    50: "the run was cancelled",
    60: "the run is still running (neither finished nor waiting)",
}
ExitCode = Annotated[
    int,
    msgspec.Meta(
        description="; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    ),
]


class WaitInfo(msgspec.Struct, kw_only=True):
    """What a waiting run waits for, and exactly how to resume it."""

    event: str
    subject: str
    schema: Any = None
    deadline: str | None = None
    prompt: str | None = None
    audience: str | None = None
    resume_command: str
    nats_command: str


class Envelope(msgspec.Struct, kw_only=True):
    schema_version: str = ENVELOPE_VERSION
    ok: bool
    command: str
    status: str
    """completed, waiting, running, failed, cancelled, parked, started, sent, valid,
    invalid, ok, error; audits: intact, altered; replays: compatible, incompatible"""
    exit_code: ExitCode
    run_id: str | None = None
    workflow: str | None = None
    current_step_id: str | None = None
    wait: WaitInfo | None = None
    result: Any = None
    error: ErrorInfo | None = None
    problems: list[str] = msgspec.field(default_factory=list)
    details: Any = None
    """command-specific data: inspect's waits/effects/events, logs' timeline, audit counts"""


def envelope_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the envelope, for docs and client generators."""
    schema: dict[str, Any] = msgspec.json.schema(Envelope)
    return schema
