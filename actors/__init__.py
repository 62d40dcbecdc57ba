"""Workflow API and context, deterministic replay, run actors, workers, effect handlers, client."""

from actors._client import Client, RunStatus, status_from_journal
from actors._context import Context
from actors._futures import DFuture, WorkflowMisuse
from actors._handlers import EffectContext, Handlers, HandlerService
from actors._machine import StepFailedError
from actors._registry import Registry, WorkflowDef
from actors._replay import ReplayResult, replay_history
from actors._runtime import WorkerOptions
from actors._worker import Worker

__all__ = [
    "Client",
    "Context",
    "DFuture",
    "EffectContext",
    "HandlerService",
    "Handlers",
    "Registry",
    "ReplayResult",
    "RunStatus",
    "StepFailedError",
    "Worker",
    "WorkerOptions",
    "WorkflowDef",
    "WorkflowMisuse",
    "replay_history",
    "status_from_journal",
]
