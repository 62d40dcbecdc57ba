"""The run kernel: workflow API and context, deterministic replay, run actors, workers
and partition ownership, timers, children, limits.

Imports ``schemas`` and ``streams`` only. Effect handlers live in ``handlers``,
declarative workflows in ``flows``, the client in ``client``.
"""

from typing import Any

from actors._context import Context, JsonSchema
from actors._futures import DFuture, WorkflowMisuse
from actors._machine import StepFailedError
from actors._registry import Registry, WorkflowDef
from actors._replay import Divergence, Replayer, ReplayResult, replay_history
from actors._runtime import WorkerOptions
from actors._worker import Worker

__all__ = [
    "Context",
    "DFuture",
    "Divergence",
    "JsonSchema",
    "Registry",
    "ReplayResult",
    "Replayer",
    "StepFailedError",
    "Worker",
    "WorkerOptions",
    "WorkflowDef",
    "WorkflowMisuse",
    "replay_history",
]

# Names this package held before handlers, flows and the client got packages of their own.
MOVED = {
    "Client": "client",
    "RunStatus": "client",
    "status_from_journal": "client",
    "EffectContext": "handlers",
    "HandlerService": "handlers",
    "Handlers": "handlers",
    "builtin_handlers": "handlers",
    "FlowInput": "flows",
    "SpecError": "flows",
    "SpecInvalid": "flows",
    "flow_registry": "flows",
    "load_spec": "flows",
    "resolve_refs": "flows",
    "validate_spec": "flows",
}


def __getattr__(name: str) -> Any:
    if name in MOVED:
        raise AttributeError(
            f"actors.{name} moved to {MOVED[name]}.{name}: "
            f"import it from {MOVED[name]} (or from mainspring)"
        )
    raise AttributeError(f"module 'actors' has no attribute {name!r}")
