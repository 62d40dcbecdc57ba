"""Inbox messages: inputs from outside a run that are not facts yet.

Published to ``<prefix>.in.<partition>.<run_id>.<kind>``; only the run's actor
turns them into journal events. External resume events are *not* in this union:
they are plain user JSON published to ``<prefix>.event.<run_id>.<name>``.
"""

from __future__ import annotations

from typing import Union

import msgspec

from schemas._common import ErrorInfo, ParentRef
from schemas._journal import NULL


class InboxMessage(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    run_id: str


class StartRun(InboxMessage, frozen=True, kw_only=True, tag="start"):
    workflow: str
    input: msgspec.Raw = NULL
    parent: ParentRef | None = None
    depth: int = 0
    max_cost_usd: float | None = None
    """overrides the worker's default budget for this run"""
    max_duration_s: float | None = None


class EffectResult(InboxMessage, frozen=True, kw_only=True, tag="effect.result"):
    """What a handler sends back (``Nats-Msg-Id`` = effect id drops duplicates)."""

    seq: int
    effect_id: str
    ok: bool
    result: msgspec.Raw = NULL
    error: ErrorInfo | None = None
    attempts: int = 1


class TimerFire(InboxMessage, frozen=True, kw_only=True, tag="timer.fire"):
    """Body of a scheduled message; the server publishes it when the timer is due."""

    seq: int


class ChildDone(InboxMessage, frozen=True, kw_only=True, tag="child.done"):
    seq: int
    child_run_id: str
    ok: bool
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None


class CancelRun(InboxMessage, frozen=True, kw_only=True, tag="cancel"):
    reason: str = ""


class WakeRun(InboxMessage, frozen=True, kw_only=True, tag="wake"):
    """Ask a worker to load (replay) a run: used to continue a parked run after a fix."""


InboxUnion = Union[StartRun, EffectResult, TimerFire, ChildDone, CancelRun, WakeRun]  # noqa: UP007

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[InboxUnion] = msgspec.json.Decoder(InboxUnion)


def encode_inbox(msg: InboxUnion) -> bytes:
    return _encoder.encode(msg)


def decode_inbox(data: bytes) -> InboxUnion:
    return _decoder.decode(data)


def inbox_kind(msg: InboxMessage) -> str:
    tag = type(msg).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
