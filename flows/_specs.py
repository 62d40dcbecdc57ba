"""Declarative workflow specs: load (keeping line numbers) and validate before anything runs.

``checkpointflow/v1`` and ``mainspring/v1`` documents: shape, JSON Schemas, expressions,
step references, reachability and nested bodies, each problem at ``file:line:column``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows import _expressions as ex
from schemas import ConfigError

VERSIONS = ("checkpointflow/v1", "mainspring/v1")
COMMON_KINDS = {"cli", "await_event", "end", "switch", "workflow", "api", "foreach", "parallel"}
MAINSPRING_KINDS = {"effect", "llm", "sleep"}


@dataclass(frozen=True)
class SpecError:
    where: str  # file:line:column
    path: str  # workflow.steps[2].next
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}"


class SpecInvalid(ConfigError):
    """A declarative spec failed validation: every problem, each at file:line:column."""

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = errors
        super().__init__("the workflow spec is invalid:\n  " + "\n  ".join(map(str, errors)))


@dataclass
class Spec:
    """A loaded spec: the plain JSON document plus where each part came from."""

    document: dict[str, Any]
    source: str = "<spec>"
    positions: dict[str, tuple[int, int]] = field(default_factory=dict)
    warnings: list[SpecError] = field(default_factory=list)
    """what validation accepted but looks unintended (each at file:line:column)"""

    @property
    def workflow(self) -> dict[str, Any]:
        wf = self.document.get("workflow")
        return wf if isinstance(wf, dict) else {}

    @property
    def steps(self) -> list[dict[str, Any]]:
        steps = self.workflow.get("steps")
        return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []

    def where(self, path: str) -> str:
        probe = path
        while probe:
            if probe in self.positions:
                line, col = self.positions[probe]
                return f"{self.source}:{line + 1}:{col + 1}"
            probe = probe.rsplit(".", 1)[0] if "." in probe else ""
        return f"{self.source}:1:1"


def _plain(node: Any, path: str, positions: dict[str, tuple[int, int]]) -> Any:
    """ruamel's round-trip nodes -> plain JSON values, recording key positions."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        out = {}
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            with contextlib.suppress(KeyError, TypeError):
                positions[sub] = node.lc.key(key)
            out[str(key)] = _plain(value, sub, positions)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            sub = f"{path}[{i}]"
            with contextlib.suppress(KeyError, TypeError, IndexError):
                positions[sub] = node.lc.item(i)
            items.append(_plain(value, sub, positions))
        return items
    # ruamel hands back str/int/float subclasses that remember their style
    for plain in (bool, int, float, str):
        if isinstance(node, plain):
            return plain(node)
    return None if node is None else str(node)


def load_spec(path: str | Path) -> Spec:
    """Read a YAML or JSON spec, keeping line numbers for error messages."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    file = Path(path)
    try:
        text = file.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {file}: {e}") from e
    try:
        node = YAML(typ="rt").load(text)
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        raise SpecInvalid([SpecError(where, "", f"not valid YAML: {e}")]) from None
    positions: dict[str, tuple[int, int]] = {}
    document = _plain(node, "", positions)
    if not isinstance(document, dict):
        raise SpecInvalid([SpecError(f"{file}:1:1", "", "the document must be a mapping")])
    return Spec(document, str(file), positions)


# ---------------------------------------------------------------------- validation
class _Checker:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.errors: list[SpecError] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(SpecError(self.spec.where(path), path, message))

    def warn(self, path: str, message: str) -> None:
        self.spec.warnings.append(SpecError(self.spec.where(path), path, message))

    def schema(self, path: str, value: Any, required: bool = False) -> None:
        if value is None:
            if required:
                self.error(path, "a JSON Schema is required here")
            return
        if not isinstance(value, dict):
            self.error(path, "must be a JSON Schema object")
            return
        from jsonschema import Draft202012Validator  # imported when used: keeps workers quick
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(strip_from(dict(value.items())))
        except SchemaError as e:
            self.error(path, f"invalid JSON Schema: {e.message}")

    def expression(self, path: str, text: Any, ids: set[str], event: bool) -> None:
        if isinstance(text, bool):
            return
        if not isinstance(text, str):
            self.error(path, "must be an expression string")
            return
        self._check_expr(path, ex.unwrap(text), ids, event)

    def templates(self, path: str, value: Any, ids: set[str], event: bool = False) -> None:
        if isinstance(value, str):
            for inner in ex.embedded(value):
                self._check_expr(path, inner, ids, event)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.templates(f"{path}[{i}]", v, ids, event)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.templates(f"{path}.{k}", v, ids, event)

    def _check_expr(self, path: str, text: str, ids: set[str], event: bool) -> None:
        try:
            node = ex.parse(text)
        except ex.ExpressionError as e:
            self.error(path, f"bad expression: {e}")
            return
        for p in ex.paths(node):
            if p.root == "steps":
                if len(p.parts) < 2 or p.parts[1] not in ids:
                    name = p.parts[1] if len(p.parts) > 1 else ""
                    self.error(path, f"expression refers to unknown step {name!r}")
            elif p.root == "event" and not event:
                self.error(path, "`event` is only available in an await_event's transitions")
            elif p.root not in ("inputs", "steps", "event"):
                self.error(path, f"unknown name {p.root!r} (use inputs, steps or event)")


def strip_from(schema: Any) -> Any:
    """Outputs schemas carry ``from:`` mappings; they are not JSON Schema keywords."""
    if isinstance(schema, dict):
        return {k: strip_from(v) for k, v in schema.items() if k != "from"}
    if isinstance(schema, list):
        return [strip_from(v) for v in schema]
    return schema


def _conditional_targets(step: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Targets a step goes to only when a condition holds (transitions, cases, timeouts)."""
    for sub, target in _targets(step):
        if sub not in ("next", "default"):
            yield sub, target


def _targets(step: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    kind = step.get("kind")
    for i, t in enumerate(step.get("transitions") or []):
        if isinstance(t, dict):
            yield f"transitions[{i}].next", t.get("next")
    if isinstance(step.get("on_timeout"), dict):
        yield "on_timeout.next", step["on_timeout"].get("next")
    if kind == "switch":
        for i, c in enumerate(step.get("cases") or []):
            if isinstance(c, dict):
                yield f"cases[{i}].next", c.get("next")
        if "default" in step:
            yield "default", step.get("default")
    if "next" in step:
        yield "next", step.get("next")


def validate_spec(spec: Spec) -> Spec:
    """Check a spec completely; raise ``SpecInvalid`` listing every problem. What is
    valid but looks unintended lands in ``spec.warnings``."""
    spec.warnings.clear()
    c = _Checker(spec)
    doc = spec.document
    version = doc.get("schema_version")
    if version not in VERSIONS:
        c.error("schema_version", f"must be one of {', '.join(VERSIONS)}, got {version!r}")
    kinds = COMMON_KINDS | (MAINSPRING_KINDS if version == "mainspring/v1" else set())
    wf = spec.workflow
    if not wf:
        c.error("workflow", "a `workflow` mapping is required")
        raise SpecInvalid(c.errors)
    wf_id = wf.get("id")
    if not isinstance(wf_id, str) or not wf_id:
        c.error("workflow.id", "a workflow id is required")
    c.schema("workflow.inputs", wf.get("inputs"), required=True)
    c.schema("workflow.outputs", wf.get("outputs"))
    raw_steps = wf.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        c.error("workflow.steps", "at least one step is required")
        raise SpecInvalid(c.errors)
    ids: set[str] = set()
    for i, step in enumerate(raw_steps):
        path = f"workflow.steps[{i}]"
        if not isinstance(step, dict):
            c.error(path, "a step must be a mapping")
            continue
        sid = step.get("id")
        if not isinstance(sid, str) or not sid:
            c.error(path, "every step needs an `id`")
        elif sid in ids:
            c.error(f"{path}.id", f"duplicate step id {sid!r}")
        else:
            ids.add(sid)
    order = [str(s.get("id")) for s in raw_steps if isinstance(s, dict)]
    for i, step in enumerate(raw_steps):
        if not isinstance(step, dict):
            continue
        path = f"workflow.steps[{i}]"
        kind = step.get("kind")
        if kind not in kinds:
            hint = " (mainspring/v1 only)" if kind in MAINSPRING_KINDS else ""
            c.error(
                f"{path}.kind",
                f"unknown step kind {kind!r}{hint}; known: {', '.join(sorted(kinds))}",
            )
            continue
        if "if" in step:
            c.expression(f"{path}.if", step["if"], ids, event=False)
        c.schema(f"{path}.outputs", step.get("outputs"))
        _check_kind(c, path, step, ids)
        for sub, target in _targets(step):
            if not isinstance(target, str) or target not in ids:
                c.error(f"{path}.{sub}", f"unknown step {target!r} (steps: {', '.join(order)})")
        retry = step.get("retry")
        if retry is not None and (
            not isinstance(retry, dict)
            or retry.get("strategy", "fixed") not in ("fixed", "exponential")
        ):
            c.error(
                f"{path}.retry",
                "retry is {max_attempts, backoff_seconds, strategy: fixed|exponential}",
            )
    _check_reachable(c, raw_steps)
    _check_fall_through(c, raw_steps)
    if c.errors:
        raise SpecInvalid(c.errors)
    return spec


def _check_kind(c: _Checker, path: str, step: dict[str, Any], ids: set[str]) -> None:
    kind = step["kind"]
    if kind == "cli":
        cmd = step.get("command")
        if not (
            isinstance(cmd, str)
            or (isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd))
        ):
            c.error(f"{path}.command", "a command (string or list of strings) is required")
        c.templates(f"{path}.command", cmd, ids)
        c.templates(f"{path}.cwd", step.get("cwd"), ids)
    elif kind == "await_event":
        name = step.get("event_name")
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            c.error(f"{path}.event_name", "an event name of A-Z a-z 0-9 _ - is required")
        c.schema(f"{path}.input_schema", step.get("input_schema"), required=True)
        c.templates(f"{path}.prompt", step.get("prompt"), ids)
        for i, t in enumerate(step.get("transitions") or []):
            if not isinstance(t, dict) or "when" not in t:
                c.error(f"{path}.transitions[{i}]", "a transition is {when, next}")
                continue
            c.expression(f"{path}.transitions[{i}].when", t["when"], ids, event=True)
    elif kind == "end":
        c.templates(f"{path}.result", step.get("result"), ids)
    elif kind == "switch":
        for i, case in enumerate(step.get("cases") or []):
            if isinstance(case, dict):
                c.expression(f"{path}.cases[{i}].when", case.get("when"), ids, event=False)
    elif kind == "workflow":
        if not isinstance(step.get("workflow"), dict) and not step.get("workflow_ref"):
            c.error(
                path, "a workflow step needs `workflow_ref` (a spec file) or an inline `workflow`"
            )
        c.templates(f"{path}.inputs", step.get("inputs"), ids)
    elif kind == "api":
        if not isinstance(step.get("url"), str):
            c.error(f"{path}.url", "a url is required")
        for key in ("url", "headers", "body"):
            c.templates(f"{path}.{key}", step.get(key), ids)
    elif kind == "foreach":
        c.expression(f"{path}.items", step.get("items"), ids, event=False)
        if "body" in step:
            _check_nested(c, f"{path}.body", step["body"])
        elif not step.get("workflow_ref") and not isinstance(step.get("workflow"), dict):
            c.error(path, "a foreach step needs an inline `body` of steps or a `workflow_ref`")
    elif kind == "parallel":
        branches = step.get("branches")
        if not isinstance(branches, list) or not branches:
            c.error(f"{path}.branches", "a list of branches is required")
        for b, branch in enumerate(branches or []):
            bpath = f"{path}.branches[{b}]"
            if isinstance(branch, dict) and "steps" in branch:
                _check_nested(c, f"{bpath}.steps", branch["steps"])
            elif not isinstance(branch, dict) or not (
                branch.get("workflow_ref") or isinstance(branch.get("workflow"), dict)
            ):
                c.error(bpath, "a branch is {steps: [...]} or {workflow_ref: file}")
    elif kind == "effect":
        if not isinstance(step.get("effect"), str):
            c.error(f"{path}.effect", "the effect kind (e.g. `http`) is required")
        c.templates(f"{path}.payload", step.get("payload"), ids)
    elif kind == "llm":
        if not isinstance(step.get("prompt"), str) and not isinstance(step.get("messages"), list):
            c.error(path, "an llm step needs `prompt` or `messages`")
        c.templates(f"{path}.prompt", step.get("prompt"), ids)
    elif kind == "sleep" and not isinstance(step.get("seconds"), int | float):
        c.error(f"{path}.seconds", "a number of seconds is required")


def sub_document(version: str, name: str, steps: Any) -> dict[str, Any]:
    """An inline body (foreach) or branch (parallel) as a workflow document of its own.

    Inside it, ``inputs.item`` / ``inputs.index`` (foreach) and ``inputs.parent`` (the
    enclosing run's inputs) are available; ``steps.*`` are the body's own steps.
    """
    return {
        "schema_version": version,
        "workflow": {"id": name, "inputs": {"type": "object"}, "steps": steps},
    }


def _check_nested(c: _Checker, path: str, steps: Any) -> None:
    """Validate inline steps as a workflow of their own, errors at their real lines."""
    spec = c.spec
    version = str(spec.document.get("schema_version"))
    prefix = path
    positions = {
        "workflow.steps" + p[len(prefix) :]: v
        for p, v in spec.positions.items()
        if p.startswith(prefix)
    }
    nested = Spec(sub_document(version, "body", steps), spec.source, positions)
    try:
        validate_spec(nested)
    except SpecInvalid as e:
        for err in e.errors:
            c.errors.append(
                SpecError(err.where, prefix + err.path[len("workflow.steps") :], err.message)
            )
    for warning in nested.warnings:
        spec.warnings.append(
            SpecError(
                warning.where, prefix + warning.path[len("workflow.steps") :], warning.message
            )
        )


def _check_reachable(c: _Checker, steps: list[Any]) -> None:
    index = {s.get("id"): i for i, s in enumerate(steps) if isinstance(s, dict)}
    seen: set[int] = set()
    todo = [0]
    while todo:
        i = todo.pop()
        if i in seen or i >= len(steps) or not isinstance(steps[i], dict):
            continue
        seen.add(i)
        step = steps[i]
        for _, target in _targets(step):
            if target in index:
                todo.append(index[target])
        if step.get("kind") != "end" and "next" not in step:
            todo.append(i + 1)
    for i, step in enumerate(steps):
        if i not in seen and isinstance(step, dict):
            c.error(f"workflow.steps[{i}]", f"step {step.get('id')!r} can never be reached")


def _check_fall_through(c: _Checker, steps: list[Any]) -> None:
    """Warn when a step without ``next`` falls through into an end step that another step
    reaches only on a condition: that end is the other branch's outcome, so reaching it
    from here is most likely a missing ``next``. Still valid (checkpointflow/v1 runs
    steps in order), so a warning, not an error."""
    owners: dict[str, tuple[str, str]] = {}  # end step id -> (step going there, on what)
    for step in steps:
        if isinstance(step, dict):
            for sub, target in _conditional_targets(step):
                if isinstance(target, str):
                    owners.setdefault(target, (str(step.get("id")), sub))
    for i, (step, following) in enumerate(itertools.pairwise(steps)):
        if not isinstance(step, dict) or not isinstance(following, dict):
            continue
        kind = step.get("kind")
        if kind == "end" or "next" in step or (kind == "switch" and "default" in step):
            continue
        sid, end = step.get("id"), following.get("id")
        owner = owners.get(str(end))
        if following.get("kind") != "end" or owner is None or owner[0] == sid:
            continue
        c.warn(
            f"workflow.steps[{i}]",
            f"step {sid!r} has no `next` and falls through into end step {end!r}, which "
            f"step {owner[0]!r} goes to on a condition ({owner[1]}); if {sid!r} should "
            "not end there, give it `next:` (kept as written: steps run in order)",
        )


def resolve_refs(spec: Spec) -> Spec:
    """Inline ``workflow_ref`` sub-workflows (paths relative to the spec file)."""
    base = Path(spec.source).parent
    for step in spec.steps:
        holders = [step] + [b for b in step.get("branches") or [] if isinstance(b, dict)]
        for holder in holders:
            ref = holder.get("workflow_ref")
            if isinstance(ref, str) and "workflow" not in holder:
                holder["workflow"] = resolve_refs(validate_spec(load_spec(base / ref))).document
    return spec
