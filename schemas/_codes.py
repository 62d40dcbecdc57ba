"""``ErrorCode``: every ``ErrorInfo.type`` Mainspring itself writes, each with its meaning.

The values are wire values: journals, inbox messages, envelopes and projections store
them, so a value never changes (add a member, never rename one). A ``StrEnum`` member
*is* its string, so ``error.type == "limit.cost"`` and ``error.type ==
ErrorCode.LIMIT_COST`` both hold. Codes chosen by users (``TerminalError(type=...)``)
and the class names of exceptions raised by user code are free strings, not members.

A few codes are class names (``WaitTimeoutError``, ``WorkflowMisuse`` and the built-in
handlers' retryable failures): what a run records when that exception ends it. Tests
pin each to its class's name. ``meaning`` is one line for people and tooling (the
envelope's JSON Schema and docs/cli.md list them).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """A code Mainspring writes in ``ErrorInfo.type``; ``.meaning`` says what it means."""

    meaning: str

    def __new__(cls, value: str, meaning: str = "") -> ErrorCode:
        member = str.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member

    # A run that cannot start or end as its code says.
    WORKFLOW_NOT_FOUND = (
        "workflow.not_found",
        "the worker that took the run's start has no workflow of that name",
    )
    INPUT_INVALID = (
        "input.invalid",
        "the run's input does not fit the workflow's input type or (specs) its inputs schema",
    )
    OUTPUT_INVALID = (
        "output.invalid",
        "the workflow's output is not JSON, or (specs) a step's outputs do not fit its schema",
    )
    NONDETERMINISM = (
        "nondeterminism",
        "the code no longer matches the run's journal: the run is parked, not failed",
    )
    VERSION_UNAVAILABLE = (
        "version.unavailable",
        "the worker holding the run lacks the workflow version that started it: the run is "
        "parked until a worker that has it takes it (a deploy in progress)",
    )
    CANCELLED = "cancelled", "the run was cancelled (the error of RunCancelledError)"
    WORKFLOW_MISUSE = (
        "WorkflowMisuse",
        "workflow code awaited something that is not a ctx call, and did not catch it",
    )
    WAIT_TIMEOUT = (
        "WaitTimeoutError",
        "a wait_event's deadline passed and the code (or spec: no on_timeout) did not catch it",
    )
    # Limits (DESIGN.md §5): a run that crossed one ends, never loops.
    LIMIT_EVENTS = "limit.events", "the run reached its limit of journal events (max_events)"
    LIMIT_CHILD_DEPTH = (
        "limit.child_depth",
        "a child run would be deeper than the run's limit (max_depth)",
    )
    LIMIT_COST = "limit.cost", "the run spent more than its cost budget (max_cost_usd)"
    LIMIT_WALL_TIME = (
        "limit.wall_time",
        "the run was still going at its wall-time limit (max_duration_s)",
    )
    LIMIT_ACTIVE_RUNS = (
        "limit.active_runs",
        "the deployment (a tenant) had its cap of runs not yet ended: this one never began",
    )
    # Payloads.
    PAYLOAD_TOO_LARGE = (
        "payload_too_large",
        "a value is over the payload cap: refused, never retried",
    )
    PAYLOAD_UNAVAILABLE = (
        "payload_unavailable",
        "a referenced payload object is missing from the object store or altered",
    )
    PAYLOAD_INVALID = (
        "payload.invalid",
        "an effect's payload does not fit what its handler accepts",
    )
    RESULT_INVALID = (
        "result.invalid",
        "a handler's result is not JSON, or a result does not fit the type the code awaits",
    )
    # Effects (the handler runtime).
    EFFECT_TIMEOUT = "effect.timeout", "an attempt overran the effect's timeout (retried)"
    EFFECT_INTERRUPTED = (
        "effect.interrupted",
        "an at-most-once effect was redelivered after an interruption: not run again",
    )
    EFFECT_DELIVERY_LIMIT = (
        "effect.delivery_limit",
        "the request was delivered max_deliveries times without a result (dead-lettered)",
    )
    EFFECT_FAILED = (
        "effect.failed",
        "a handler reported the effect failed without saying how (no error given)",
    )
    # Children.
    CHILD_FAILED = (
        "child.failed",
        "a child run failed without saying how (no error given)",
    )
    CHILD_CANCELLED = "child.cancelled", "a child run was cancelled"
    # User code's failures that name no type of their own.
    TERMINAL = "terminal", "a TerminalError raised without a type of its own"
    # Declarative workflows.
    SPEC_INVALID = (
        "spec.invalid",
        "`mainspring validate`: the spec has problems, each listed in `problems`",
    )
    FOREACH_ITEMS = "foreach.items", "a foreach step's items did not evaluate to a list"
    # The built-in handlers.
    CLI_SHELL = "cli.shell", "cli: the shell asked for is unknown or not installed"
    CLI_REFUSED = (
        "cli.refused",
        "cli: the command is not on the handler's allow-list, or needs a shell it does not allow",
    )
    CLI_OUTPUT = "cli.output", "cli: parse_json was asked for and stdout is not JSON"
    COMMAND_FAILED = (
        "CommandFailed",
        "cli: the command exited with a code the step does not accept (retried by policy)",
    )
    HTTP_STATUS = (
        "http.status",
        "http: a status the step does not accept, other than 5xx and 429 (not retried)",
    )
    HTTP_STATUS_ERROR = (
        "HttpStatusError",
        "http: a 5xx or 429 status the step does not accept (retried by policy)",
    )
    LLM_REQUEST = "llm.request", "llm.chat: the endpoint refused the request (4xx, not retried)"
    LLM_UNAVAILABLE = (
        "LlmUnavailable",
        "llm.chat: every model of the chain failed transiently (retried by policy)",
    )


def describe_codes() -> str:
    """Every code and its meaning, one ``- code: meaning`` per line (for schemas)."""
    return "\n".join(f"- {code.value}: {code.meaning}" for code in ErrorCode)
