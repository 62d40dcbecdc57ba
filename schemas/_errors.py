"""The Mainspring error tree: every error Mainspring raises on purpose, wherever it lives.

::

    MainspringError
    ├── ConfigError                 bad configuration or arguments (exit 10)
    │   ├── InvalidNameError*       a run id / event name / kind that cannot be a subject
    │   ├── PayloadTooLarge**       a value over the payload cap (payload_too_large)
    │   └── SpecInvalid [flows]     a declarative spec with problems, each at file:line:column
    ├── ConnectionFailed            NATS (or Postgres) unreachable (exit 20)
    │   └── QuotaExceeded           a stream refused a write: the account's limits are reached
    ├── ServerUnsupported           nats-server too old / stream lacks a needed feature
    ├── ApiError [streams]          the JetStream API answered a request with an error
    ├── JournalError
    │   ├── JournalConflict         another writer appended first (OCC); reload and retry
    │   └── JournalCorrupt          hash chain or encoding broken in a stored journal
    │       └── JournalForged       an entry not tagged by a key of the deployment
    ├── WorkflowNotFound            no workflow registered under that name
    │   └── VersionUnavailable      not the version of it that started the run (parked)
    ├── RunNotFound                 no journal for that run id
    ├── RunFailedError              awaited run ended failed (carries ErrorInfo)
    ├── RunCancelledError           awaited run was cancelled
    ├── NondeterminismError         code no longer matches the journal; the run is parked
    ├── TerminalError               raised by user code: never retried
    ├── PayloadUnavailable          a referenced payload object is missing or altered
    ├── EffectFailedError           an effect failed after its retries (raised in workflow code)
    ├── ChildFailedError            a child run failed (raised in workflow code)
    ├── WaitTimeoutError            wait_event deadline passed (raised in workflow code)
    ├── StepFailedError [actors]    a step raised (raised in workflow code where it is awaited)
    └── WorkflowMisuse*** [actors]  workflow code awaited something that is not a ctx call

(*InvalidNameError also derives from ValueError; **PayloadTooLarge also from
TerminalError: a step or handler that produces one fails at once; ***WorkflowMisuse
also from RuntimeError. [package]: defined there, not here, because it belongs to that
layer.)

Internal, not in the tree on purpose (no user ever catches them):

- ``ExpressionError`` [flows] (a ValueError): spec validation reports it as a
  ``SpecInvalid`` problem.
- ``Unavailable`` [streams]: retried, then raised as ``ConnectionFailed``.
- ``CommandFailed``, ``HttpStatusError``, ``LlmUnavailable`` [handlers]: raised inside
  the built-in handlers and retried by the effect's policy; a run sees them only as
  their ``ErrorInfo.type`` (the class name, an ``ErrorCode``), in another process.

The ``ErrorInfo.type`` codes Mainspring itself writes are ``ErrorCode`` (schemas/_codes.py).
"""

from __future__ import annotations

from schemas._codes import ErrorCode
from schemas._common import ErrorInfo


class MainspringError(Exception):
    """Root of every error Mainspring raises on purpose."""


class ConfigError(MainspringError):
    """Bad configuration, arguments or input; fix the input and try again."""


class ConnectionFailed(MainspringError):
    """A server Mainspring needs could not be reached."""


class QuotaExceeded(ConnectionFailed):
    """A stream refused a write because the account (a tenant) reached its JetStream
    limits (storage, streams): retrying will not help until space is freed or the
    limits are raised."""


class ServerUnsupported(MainspringError):
    """The NATS server lacks a feature Mainspring relies on."""


class JournalError(MainspringError):
    pass


class JournalConflict(JournalError):
    """Another writer appended to this run's journal first."""

    def __init__(self, run_id: str, expected_seq: int, detail: str) -> None:
        self.run_id = run_id
        self.expected_seq = expected_seq
        super().__init__(
            f"journal of run {run_id} moved past sequence {expected_seq} ({detail}); "
            "another worker owns it or did: reload the journal and retry"
        )


class JournalCorrupt(JournalError):
    """A stored journal does not verify (bad hash link, gap, undecodable bytes)."""

    def __init__(self, run_id: str, n: int, problem: str) -> None:
        self.run_id = run_id
        self.n = n
        self.problem = problem
        super().__init__(f"journal of run {run_id} is corrupt at event {n}: {problem}")


class JournalForged(JournalCorrupt):
    """A journal entry not written by a worker of this deployment: its ``Ms-Mac`` tag
    is missing, wrong, or made with an unknown or revoked key (streams/_keys.py)."""

    def __init__(self, run_id: str, n: int, problem: str) -> None:
        super().__init__(run_id, n, problem)
        self.args = (f"journal of run {run_id} has a forged entry at event {n}: {problem}",)


class WorkflowNotFound(MainspringError):
    pass


class VersionUnavailable(WorkflowNotFound):
    """A run was started by a version of its workflow this worker does not have."""


class RunNotFound(MainspringError):
    pass


class _RunOutcomeError(MainspringError):
    def __init__(self, run_id: str, error: ErrorInfo) -> None:
        self.run_id = run_id
        self.error = error
        super().__init__(f"run {run_id}: {error.type}: {error.message}")


class RunFailedError(_RunOutcomeError):
    """The awaited run ended failed."""


class RunCancelledError(_RunOutcomeError):
    """The awaited run was cancelled."""


class NondeterminismError(MainspringError):
    """Workflow code made a different decision than the one recorded in the journal."""

    def __init__(self, run_id: str, n: int | None, seq: int, recorded: str, now: str) -> None:
        self.run_id = run_id
        self.n = n
        self.seq = seq
        self.recorded = recorded
        self.now = now
        where = f"journal event {n}" if n is not None else f"command {seq}"
        super().__init__(
            f"nondeterminism in run {run_id} at {where} (command #{seq}): "
            f"the journal recorded {recorded} but the code now did {now}. "
            "The run is parked: deploy code that matches (use ctx.patched() for changes "
            "to in-flight runs), then wake it"
        )


class TerminalError(MainspringError):
    """Raise from a handler or step to fail without retries."""

    def __init__(self, message: str, *, type: str = ErrorCode.TERMINAL) -> None:
        self.type = type
        super().__init__(message)


class EffectFailedError(MainspringError):
    """An effect failed for good; raised where workflow code awaits it."""

    def __init__(self, kind: str, error: ErrorInfo, attempts: int) -> None:
        self.kind = kind
        self.error = error
        self.attempts = attempts
        super().__init__(
            f"effect {kind} failed after {attempts} attempt(s): {error.type}: {error.message}"
        )


class ChildFailedError(MainspringError):
    def __init__(self, child_run_id: str, error: ErrorInfo) -> None:
        self.child_run_id = child_run_id
        self.error = error
        super().__init__(f"child run {child_run_id} failed: {error.type}: {error.message}")


class WaitTimeoutError(MainspringError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no valid '{name}' event arrived before the wait's deadline")


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.1f} KiB"


class PayloadTooLarge(TerminalError, ConfigError):
    """A value is larger than the payload cap: refused before it is stored or sent."""

    def __init__(self, what: str, size: int, cap: int) -> None:
        self.what = what
        self.size = size
        self.cap = cap
        super().__init__(
            f"{what} is {size:,} bytes ({_mib(size)}), over the payload cap of {cap:,} bytes "
            f"({_mib(cap)}): pass a reference to where the data lives instead, or raise the "
            "cap (PayloadLimits.cap)",
            type=ErrorCode.PAYLOAD_TOO_LARGE,
        )

    @property
    def info(self) -> ErrorInfo:
        """The terminal error a run, step or effect ends with."""
        return ErrorInfo(
            type=ErrorCode.PAYLOAD_TOO_LARGE,
            message=str(self),
            details={"size": self.size, "cap": self.cap},
        )


class PayloadUnavailable(MainspringError):
    """A payload reference names an object that is missing, altered or unreadable."""

    def __init__(self, ref: str, problem: str) -> None:
        self.ref = ref
        self.problem = problem
        super().__init__(f"payload object {ref}: {problem}")
