"""Types shared by several unions: errors, retry policy, parent references."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from schemas._codes import describe_codes

_ERROR_TYPE = (
    "A stable code: one of Mainspring's own (below), the type a user's TerminalError "
    "names, the class name of an exception raised by user code, or in a CLI envelope "
    "the class name of the MainspringError a command failed with. Mainspring's own "
    "codes (schemas.ErrorCode):\n" + describe_codes()
)


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A failure as it travels on the wire and is stored in a journal.

    ``type`` is a stable code: an ``ErrorCode`` (``effect.timeout``, ``limit.events``
    ...), the type a user's ``TerminalError`` names, or the exception class name raised
    by user code; ``retryable`` tells handlers whether another attempt may help.
    """

    type: Annotated[str, msgspec.Meta(description=_ERROR_TYPE)]
    message: str
    retryable: bool = False
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How an effect is retried by its handler: exponential backoff with a cap."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.5
    backoff_multiplier: float = 2.0
    max_backoff_s: float = 30.0
    non_retryable: tuple[str, ...] = ()

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        delay = self.initial_backoff_s * self.backoff_multiplier ** max(attempt - 1, 0)
        return float(min(delay, self.max_backoff_s))


class ParentRef(msgspec.Struct, frozen=True, kw_only=True):
    """The run (and its command) that started a child run."""

    run_id: str
    seq: int
