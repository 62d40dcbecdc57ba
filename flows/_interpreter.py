"""Running declarative specs: the durable workflow that interprets a document.

A spec runs as the workflow ``flow.<document id>`` (``flow_name``) whose input is
``{"spec": ..., "inputs": ...}``: the exact spec is journaled with the run, so replay
always sees what ran. One interpreter serves every ``flow.*`` name (``FlowRegistry``);
runs recorded before runs were named by document are named ``flow`` and still replay.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgspec

from actors import Context, JsonSchema, Registry, WorkflowDef
from flows import _expressions as ex
from flows._specs import strip_from, sub_document
from schemas import ErrorCode, RetryPolicy, TerminalError, WaitTimeoutError

FLOW_WORKFLOW = "flow"
FLOW_PREFIX = "flow."
WAIT_ANNOTATION = "x-mainspring-wait"
"""Key of the annotation an await_event adds to its wait's JSON Schema: the step id and
its prompt, summary and audience with ``${...}`` filled in (what clients show)."""


def flow_name(document_id: object) -> str:
    """The workflow name of a document's runs: ``flow.<id>`` (characters a workflow
    name cannot hold become ``_``); plain ``flow`` when the document has no id."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", str(document_id or ""))[: 128 - len(FLOW_PREFIX)]
    return FLOW_PREFIX + text if text else FLOW_WORKFLOW


def is_flow(workflow: str) -> bool:
    """Whether runs of ``workflow`` are interpreted declarative specs."""
    return workflow == FLOW_WORKFLOW or workflow.startswith(FLOW_PREFIX)


class FlowInput(msgspec.Struct, frozen=True):
    spec: dict[str, Any]
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)


def _policy(step: dict[str, Any]) -> RetryPolicy:
    retry = step.get("retry") or {}
    backoff = float(retry.get("backoff_seconds", 1.0))
    return RetryPolicy(
        max_attempts=int(retry.get("max_attempts", 1)),
        initial_backoff_s=backoff,
        backoff_multiplier=2.0 if retry.get("strategy") == "exponential" else 1.0,
        max_backoff_s=max(backoff, 300.0),
    )


def _check_against(schema: dict[str, Any] | None, value: Any, what: str) -> None:
    if not schema:
        return
    from jsonschema import Draft202012Validator

    errors = list(Draft202012Validator(strip_from(schema)).iter_errors(value))
    if errors:
        first = errors[0]
        raise TerminalError(
            f"{what}: {first.message} - at `{first.json_path}`",
            type=ErrorCode.OUTPUT_INVALID if "output" in what else ErrorCode.INPUT_INVALID,
        )


def _child(ctx: Context, document: dict[str, Any]) -> str:
    """The workflow name of a child run (a sub-workflow, a foreach item, a branch)."""
    if ctx.workflow == FLOW_WORKFLOW:  # recorded before runs were named by document
        return FLOW_WORKFLOW
    return flow_name((document.get("workflow") or {}).get("id"))


def _wait_schema(step: dict[str, Any], scope: dict[str, Any]) -> dict[str, Any]:
    """The step's input schema, annotated with what a person resuming it needs to see."""
    shown = {
        "step": step["id"],
        "prompt": ex.render_text(step.get("prompt"), scope),
        "summary": ex.render_text(step.get("summary"), scope),
        "audience": step.get("audience"),
    }
    annotation = {k: v for k, v in shown.items() if v is not None}
    return {**step["input_schema"], WAIT_ANNOTATION: annotation}


async def run_flow(ctx: Context, inp: FlowInput) -> Any:
    """Interpret a validated spec, step by step, durably."""
    wf = inp.spec["workflow"]
    _check_against(wf.get("inputs"), inp.inputs, "workflow inputs")
    steps: list[dict[str, Any]] = wf["steps"]
    index = {s["id"]: i for i, s in enumerate(steps)}
    scope: dict[str, Any] = {"inputs": inp.inputs, "steps": {}}
    shell = (wf.get("defaults") or {}).get("shell", "bash")
    i = 0
    while i < len(steps):
        step = steps[i]
        nxt = index[step["next"]] if "next" in step else i + 1
        if "if" in step and not ex.condition(step["if"], scope):
            i = nxt
            continue
        kind = step["kind"]
        timeout = float(step.get("timeout_seconds", 600))
        outputs: Any = None
        if kind == "end":
            return ex.render(step.get("result"), scope)
        if kind == "cli":
            res = await ctx.effect(
                "cli",
                {
                    "command": ex.render(step["command"], scope),
                    "cwd": ex.render(step.get("cwd"), scope),
                    "shell": step.get("shell", shell),
                    "exit_codes": (step.get("success") or {}).get("exit_codes", [0]),
                    "parse_json": bool(step.get("outputs")),
                },
                retry=_policy(step),
                timeout=timeout,
            )
            outputs = (
                res["json"]
                if step.get("outputs")
                else {"stdout": res["stdout"], "exit_code": res["exit_code"]}
            )
        elif kind == "await_event":
            try:
                outputs = await ctx.wait_event(
                    step["event_name"],
                    JsonSchema(_wait_schema(step, scope)),
                    timeout=step.get("timeout_seconds"),
                )
            except WaitTimeoutError:
                on_timeout = step.get("on_timeout") or {}
                if "next" not in on_timeout:
                    raise
                scope["steps"][step["id"]] = {"outputs": None, "timed_out": True}
                i = index[on_timeout["next"]]
                continue
            event_scope = {**scope, "event": outputs}
            for t in step.get("transitions") or []:
                if ex.condition(t["when"], event_scope):
                    nxt = index[t["next"]]
                    break
        elif kind == "switch":
            nxt = index[step["default"]] if "default" in step else nxt
            for case in step.get("cases") or []:
                if ex.condition(case["when"], scope):
                    nxt = index[case["next"]]
                    break
        elif kind == "api":
            res = await ctx.effect(
                "http",
                {
                    "url": ex.render(step["url"], scope),
                    "method": step.get("method", "GET"),
                    "headers": ex.render(step.get("headers") or {}, scope),
                    "body": ex.render(step.get("body"), scope),
                    "status_codes": (step.get("success") or {}).get("status_codes", []),
                },
                retry=_policy(step),
                timeout=timeout,
            )
            outputs = res["body"] if step.get("outputs") else res
        elif kind == "foreach":
            items = ex.render("${" + ex.unwrap(step["items"]) + "}", scope)
            if not isinstance(items, list):
                raise TerminalError(
                    f"step {step['id']}: items is not a list: {items!r}",
                    type=ErrorCode.FOREACH_ITEMS,
                )
            body = step.get("workflow") or sub_document(
                inp.spec["schema_version"], f"{wf.get('id')}.{step['id']}", step["body"]
            )
            outputs = []
            for n, item in enumerate(items):  # one at a time, each a durable child run
                outputs.append(
                    await ctx.child(
                        _child(ctx, body),
                        {"spec": body, "inputs": {"item": item, "index": n, "parent": inp.inputs}},
                    )
                )
        elif kind == "parallel":
            children = []
            for b, branch in enumerate(step["branches"]):
                doc = branch.get("workflow") or sub_document(
                    inp.spec["schema_version"], f"{wf.get('id')}.{step['id']}.{b}", branch["steps"]
                )
                children.append(
                    ctx.child(
                        _child(ctx, doc),
                        {"spec": doc, "inputs": {"index": b, "parent": inp.inputs}},
                    )
                )
            outputs = await ctx.gather(*children)
        elif kind == "workflow":
            outputs = await ctx.child(
                _child(ctx, step["workflow"]),
                {"spec": step["workflow"], "inputs": ex.render(step.get("inputs") or {}, scope)},
            )
        elif kind == "effect":
            outputs = await ctx.effect(
                step["effect"],
                ex.render(step.get("payload"), scope),
                retry=_policy(step),
                timeout=timeout,
            )
        elif kind == "llm":
            messages = step.get("messages") or [{"role": "user", "content": step["prompt"]}]
            outputs = await ctx.effect(
                "llm.chat",
                {
                    "messages": ex.render(messages, scope),
                    "model": step.get("model", "mock"),
                    "models": step.get("models", []),
                },
                retry=_policy(step),
                timeout=timeout,
            )
        elif kind == "sleep":
            await ctx.sleep(float(step["seconds"]))
        _check_against(step.get("outputs"), outputs, f"outputs of step {step['id']}")
        scope["steps"][step["id"]] = {"outputs": outputs}
        i = nxt
    return _workflow_outputs(wf.get("outputs"), scope)


def _workflow_outputs(schema: dict[str, Any] | None, scope: dict[str, Any]) -> Any:
    props = (schema or {}).get("properties") or {}
    mapped = {
        k: ex.render("${" + v["from"] + "}", scope)
        for k, v in props.items()
        if isinstance(v, dict) and "from" in v
    }
    return mapped or None


class FlowRegistry(Registry):
    """A registry whose interpreter also serves every ``flow.<document id>`` name."""

    def get(self, name: str) -> WorkflowDef:
        if name not in self._workflows and name.startswith(FLOW_PREFIX):
            return dataclasses.replace(super().get(FLOW_WORKFLOW), name=name)
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name.startswith(FLOW_PREFIX):
            return FLOW_WORKFLOW in self._workflows
        return super().__contains__(name)


def declared_events(inp: FlowInput) -> set[str]:
    """The resume events a spec run can wait for: its await_event steps' names (the
    worker rejects any other name on arrival, with the list)."""
    steps = (inp.spec.get("workflow") or {}).get("steps") or []
    return {
        step["event_name"]
        for step in steps
        if isinstance(step, dict)
        and step.get("kind") == "await_event"
        and isinstance(step.get("event_name"), str)
    }


def flow_registry(registry: Registry | None = None) -> Registry:
    """A new registry with ``registry``'s workflows and the declarative-spec interpreter
    (``flow`` and every ``flow.<document id>``)."""
    reg = FlowRegistry()
    if registry is not None:
        reg._workflows.update(registry._workflows)
        reg._previous.update(registry._previous)
    if FLOW_WORKFLOW not in reg._workflows:
        reg.workflow(name=FLOW_WORKFLOW, version="1", events=declared_events)(run_flow)
    return reg
