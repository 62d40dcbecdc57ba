"""Validation of names that become subject tokens (run ids, event names, effect kinds).

A bad name is refused with a message saying what is allowed: never escaped
silently into a different subject (DESIGN.md §4).
"""

from __future__ import annotations

import re

from schemas._errors import ConfigError

MAX_ID_LEN = 128
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_KIND_RE = re.compile(r"[a-z0-9_-]{1,64}(\.[a-z0-9_-]{1,64}){0,3}")
_WORKFLOW_RE = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class InvalidNameError(ConfigError, ValueError):
    """A run id, event name or effect kind that cannot become a subject token."""


def _shown(value: object) -> str:
    """A name as shown in an error: never thousands of characters of it."""
    if isinstance(value, str) and len(value) > 64:
        return f"{value[:64]!r}… ({len(value)} characters)"
    return repr(value)


def check_run_id(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidNameError(
            f"invalid run id {_shown(value)}: use 1-{MAX_ID_LEN} characters from "
            "A-Z a-z 0-9 _ - (it becomes a NATS subject token)"
        )
    return value


def check_event_name(value: str) -> str:
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise InvalidNameError(
            f"invalid event name {_shown(value)}: use 1-{MAX_ID_LEN} characters from "
            "A-Z a-z 0-9 _ - (it becomes a NATS subject token)"
        )
    return value


def check_effect_kind(value: str) -> str:
    if not isinstance(value, str) or not _KIND_RE.fullmatch(value):
        raise InvalidNameError(
            f"invalid effect kind {value!r}: use up to 4 dot-separated lowercase "
            "tokens of a-z 0-9 _ - (e.g. 'llm.chat', 'cli')"
        )
    return value


def check_workflow_name(value: str) -> str:
    if not isinstance(value, str) or not _WORKFLOW_RE.fullmatch(value):
        raise InvalidNameError(
            f"invalid workflow name {value!r}: use 1-128 characters from A-Z a-z 0-9 _ . -"
        )
    return value
