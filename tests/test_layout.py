"""Package layering (DESIGN.md §3) and the public names each package exports."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# DESIGN.md §3, bottom to top.
ALLOWED = {
    "schemas": set(),
    "streams": {"schemas"},
    "servers": {"schemas"},
    "client": {"schemas", "streams"},
    # A handler is a separate service: never the kernel.
    "handlers": {"schemas", "streams"},
    "actors": {"schemas", "streams"},
    "projections": {"schemas", "streams"},
    "flows": {"schemas", "streams", "actors"},
    "mainspring": {
        "schemas",
        "streams",
        "servers",
        "client",
        "handlers",
        "actors",
        "projections",
        "flows",
    },
}
OURS = set(ALLOWED)


# Parsed once, at collection, before any other test has run: CPython 3.11's AST builder
# was seen failing ("recursion depth mismatch") after a failed async test left garbage
# whose finalizers ran in the middle of a parse.
TREES = {
    package: [
        (path, ast.parse(path.read_text(), str(path))) for path in (ROOT / package).rglob("*.py")
    ]
    for package in sorted(OURS)
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): tree for package in TREES for path, tree in TREES[package]}


def _imported(tree: ast.Module) -> set[str]:
    """Every module of ours this one imports: at the top, inside functions and under
    TYPE_CHECKING alike (`from pkg import name` counts as pkg.name when that is a module)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {name for name in found if name in MODULES}


def _imports(package: str) -> set[str]:
    found: set[str] = set()
    for _path, tree in TREES[package]:
        found |= {name.split(".")[0] for name in _imported(tree)}
    return found - {package}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    """Each package imports only the packages below it."""
    assert _imports(package) <= ALLOWED[package]


def test_no_import_cycles() -> None:
    """No two modules import each other, directly or around a loop: every import counts,
    including those inside functions and under TYPE_CHECKING."""
    graph = {name: _imported(tree) - {name} for name, tree in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert cycles == []


def test_kernel_names_the_journal_and_inbox_protocols_only() -> None:
    """The run kernel uses a journal and an inbox through streams' protocols
    (JournalStore, InboxWriter), never the JetStream classes: sharded ones are next."""
    concrete = {"Journal", "Inbox"}
    offenders = [
        f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}"
        for path, tree in TREES["actors"]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streams")
        for alias in node.names
        if alias.name in concrete
    ]
    assert offenders == []


@pytest.mark.parametrize("package", ["client", "handlers"])
def test_client_and_handlers_load_no_kernel(package: str) -> None:
    """A service that starts runs (client) or serves effects (handlers) loads no worker,
    flow, projection or CLI code: importing it in a fresh interpreter loads only the
    packages below it."""
    code = f"import sys, {package}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = {name.split(".")[0] for name in out.stdout.split()} & OURS
    assert loaded == {package} | ALLOWED[package]


def test_no_package_holds_more_than_a_quarter_of_the_code() -> None:
    """A package that holds more than a quarter of the code is doing two jobs (DESIGN.md
    §3): split it before it grows further."""
    lines = {
        package: sum(
            len([ln for ln in path.read_text().splitlines() if ln.strip()]) for path, _ in trees
        )
        for package, trees in TREES.items()
    }
    total = sum(lines.values())
    assert {p: n for p, n in lines.items() if n * 4 > total} == {}


PUBLIC = {
    "schemas": 91,
    "streams": 91,
    "servers": 3,
    "client": 3,
    "handlers": 4,
    "actors": 13,
    "projections": 25,
    "flows": 11,
    "mainspring": 39,
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
