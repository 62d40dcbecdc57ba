"""Statuses as enums: of a run (``RunState``), of a wait (``WaitState``) and of an
effect (``EffectState``), as ``RunView`` folds them from a journal.

The values are stored (projection columns, envelopes, ``runs --json``) and never
change. A ``StrEnum`` member *is* its string: ``status == "completed"`` keeps working,
and a member encodes as its plain value.
"""

from __future__ import annotations

import enum


class RunState(enum.StrEnum):
    """What a run is doing."""

    RUNNING = "running"
    """started, neither waiting for an event nor ended"""
    WAITING = "waiting"
    """waiting for at least one event (``ctx.wait_event``)"""
    COMPLETED = "completed"
    """ended with an output"""
    FAILED = "failed"
    """ended with an error"""
    CANCELLED = "cancelled"
    """ended by a cancel"""
    PARKED = "parked"
    """its code no longer matches its journal: held until fixed code wakes it"""


class WaitState(enum.StrEnum):
    """Where one ``ctx.wait_event`` stands."""

    OPEN = "open"
    """no valid event yet"""
    SATISFIED = "satisfied"
    """an event was accepted"""
    TIMED_OUT = "timed_out"
    """its deadline passed first"""
    CANCELLED = "cancelled"
    """the run was cancelled while it was open"""
    ABANDONED = "abandoned"
    """the run failed or completed while it was open"""


class EffectState(enum.StrEnum):
    """Where one effect stands."""

    REQUESTED = "requested"
    """journaled, no result yet"""
    COMPLETED = "completed"
    """its handler returned a result"""
    FAILED = "failed"
    """it failed for good (after its retries)"""
