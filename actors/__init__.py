"""Workflow API and context, deterministic replay, run actors, workers, effect handlers, client."""

from actors._builtins import builtin_handlers
from actors._client import Client, RunStatus, status_from_journal
from actors._context import Context, JsonSchema
from actors._flows import FlowInput, flow_registry
from actors._futures import DFuture, WorkflowMisuse
from actors._handlers import EffectContext, Handlers, HandlerService
from actors._machine import StepFailedError
from actors._registry import Registry, WorkflowDef
from actors._replay import ReplayResult, replay_history
from actors._runtime import WorkerOptions
from actors._specs import SpecError, SpecInvalid, load_spec, resolve_refs, validate_spec
from actors._worker import Worker

__all__ = [
    "Client",
    "Context",
    "DFuture",
    "EffectContext",
    "FlowInput",
    "HandlerService",
    "Handlers",
    "JsonSchema",
    "Registry",
    "ReplayResult",
    "RunStatus",
    "SpecError",
    "SpecInvalid",
    "StepFailedError",
    "Worker",
    "WorkerOptions",
    "WorkflowDef",
    "WorkflowMisuse",
    "builtin_handlers",
    "flow_registry",
    "load_spec",
    "replay_history",
    "resolve_refs",
    "status_from_journal",
    "validate_spec",
]
