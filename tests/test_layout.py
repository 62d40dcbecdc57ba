"""Package layering (DESIGN.md §3) and the public names each package exports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"schemas", "streams", "actors", "projections", "mainspring"}
ALLOWED = {
    "schemas": set(),
    "streams": {"schemas"},
    "actors": {"schemas", "streams"},
    "projections": {"schemas", "streams"},
    "mainspring": OURS - {"mainspring"},
}


# Parsed once, at collection, before any other test has run: CPython 3.11's AST builder
# was seen failing ("recursion depth mismatch") after a failed async test left garbage
# whose finalizers ran in the middle of a parse.
TREES = {
    package: [
        (path, ast.parse(path.read_text(), str(path))) for path in (ROOT / package).rglob("*.py")
    ]
    for package in sorted(OURS)
}


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for _path, tree in TREES[package]:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return (found & OURS) - {package}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    """Each package imports only the packages below it."""
    assert _imports(package) <= ALLOWED[package]


PUBLIC = {
    "schemas": 81,
    "streams": 46,
    "actors": 25,
    "projections": 23,
    "mainspring": 31,
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_are_pinned_and_sorted(package: str) -> None:
    """__all__ is sorted, resolvable, and changes only on purpose (update the pin)."""
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(names)
    assert all(hasattr(module, n) for n in names)
    assert len(names) == PUBLIC[package], f"{package}.__all__ changed: {names}"


def test_no_log_call_passes_event_as_a_keyword() -> None:
    """structlog's first argument is `event`: a keyword of that name raises TypeError at
    the call, which once turned every late event into an endless redelivery loop."""
    levels = {"debug", "info", "warning", "error", "exception", "critical", "msg"}
    offenders = []
    for package in sorted(PUBLIC):
        for path, tree in TREES[package]:
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in levels
                    and any(k.arg == "event" for k in node.keywords)
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
