"""Declarative workflows: load and validate ``checkpointflow/v1`` and ``mainspring/v1``
documents, the expression language, and the interpreter (a workflow like any other,
served by any worker whose registry includes ``flow_registry()``).

Above the kernel: imports ``schemas``, ``streams`` and ``actors``.
"""

from flows._interpreter import (
    WAIT_ANNOTATION,
    FlowInput,
    flow_name,
    flow_registry,
    is_flow,
)
from flows._specs import Spec, SpecError, SpecInvalid, load_spec, resolve_refs, validate_spec

__all__ = [
    "FlowInput",
    "Spec",
    "SpecError",
    "SpecInvalid",
    "WAIT_ANNOTATION",
    "flow_name",
    "flow_registry",
    "is_flow",
    "load_spec",
    "resolve_refs",
    "validate_spec",
]
