"""Mainspring: durable workflows for AI agents and automation, event-sourced on NATS JetStream.

The public facade::

    import mainspring as ms

    registry = ms.Registry()

    @registry.workflow
    async def greet(ctx: ms.Context, name: str) -> str:
        text = await ctx.effect("llm.chat", {"prompt": f"greet {name}"})
        return text
"""

from actors import (
    Context,
    Registry,
    Replayer,
    StepFailedError,
    Worker,
    WorkerOptions,
    WorkflowMisuse,
)
from client import Client, RunStatus
from handlers import EffectContext, Handlers, HandlerService
from schemas import (
    ChildFailedError,
    ConfigError,
    ConnectionFailed,
    EffectFailedError,
    ErrorCode,
    ErrorInfo,
    InvalidNameError,
    JournalForged,
    MainspringError,
    NondeterminismError,
    PayloadTooLarge,
    QuotaExceeded,
    RetryPolicy,
    RunCancelledError,
    RunFailedError,
    RunNotFound,
    RunState,
    ServerUnsupported,
    TerminalError,
    WaitTimeoutError,
    WorkflowNotFound,
)
from servers import NatsServer
from streams import EffectKeys, Keyring, NatsAuth, PayloadLimits, Subjects

__all__ = [
    "ChildFailedError",
    "Client",
    "ConfigError",
    "ConnectionFailed",
    "Context",
    "EffectContext",
    "EffectFailedError",
    "EffectKeys",
    "ErrorCode",
    "ErrorInfo",
    "HandlerService",
    "Handlers",
    "InvalidNameError",
    "JournalForged",
    "Keyring",
    "MainspringError",
    "NatsAuth",
    "NatsServer",
    "NondeterminismError",
    "PayloadLimits",
    "PayloadTooLarge",
    "QuotaExceeded",
    "Registry",
    "Replayer",
    "RetryPolicy",
    "RunCancelledError",
    "RunFailedError",
    "RunNotFound",
    "RunState",
    "RunStatus",
    "ServerUnsupported",
    "StepFailedError",
    "Subjects",
    "TerminalError",
    "WaitTimeoutError",
    "Worker",
    "WorkerOptions",
    "WorkflowMisuse",
    "WorkflowNotFound",
]
