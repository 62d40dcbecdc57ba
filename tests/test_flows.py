"""Declarative workflows: checkpointflow/v1 documents validate with positions and run durably.

The interpreter is a workflow like any other: each case that runs one runs live and under
forced replay."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from flows import SpecInvalid, flow_registry, load_spec, resolve_refs, validate_spec
from flows._expressions import ExpressionError, condition, parse, render
from handlers import builtin_handlers
from handlers._builtins import run_command
from streams import Subjects
from tests.harness import running, types, wait_status, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.replayed]
ROOT = Path(__file__).resolve().parent.parent
TAG_RELEASE = ROOT / "examples" / "flows" / "tag_release.yaml"


def _spec_errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    with pytest.raises(SpecInvalid) as err:
        validate_spec(load_spec(path))
    return [str(e) for e in err.value.errors]


def test_the_original_example_validates() -> None:
    """The checkpointflow/v1 example from the format's own docs is valid unchanged."""
    spec = validate_spec(load_spec(TAG_RELEASE))
    assert [s["id"] for s in spec.steps] == ["changelog", "review", "publish", "done", "held"]


def test_validation_errors_name_file_line_and_column(tmp_path: Path) -> None:
    """Unknown references, unreachable steps, bad expressions and schemas point at the line."""
    errors = _spec_errors(
        tmp_path,
        """\
schema_version: checkpointflow/v1
workflow:
  id: broken
  inputs: {type: object, properties: {n: {type: nonsense}}}
  steps:
    - id: ask
      kind: await_event
      event_name: go
      input_schema: {type: object}
      transitions:
        - when: ${event.ok == }
          next: finish
        - when: ${event.ok}
          next: nowhere
    - id: finish
      kind: end
      result: ${steps.ghost.outputs.x}
    - id: orphan
      kind: end
""",
    )
    text = "\n".join(errors)
    assert "flow.yaml:4:3: workflow.inputs: invalid JSON Schema" in text
    assert "flow.yaml:11:11: workflow.steps[0].transitions[0].when: bad expression" in text
    assert "flow.yaml:14:11: workflow.steps[0].transitions[1].next: unknown step 'nowhere'" in text
    assert (
        "flow.yaml:17:7: workflow.steps[1].result: expression refers to unknown step 'ghost'"
        in text
    )
    assert "flow.yaml:18:7: workflow.steps[2]: step 'orphan' can never be reached" in text


def test_unknown_kind_and_version(tmp_path: Path) -> None:
    """A wrong schema_version or step kind is refused, saying what is allowed."""
    errors = _spec_errors(
        tmp_path,
        """\
schema_version: checkpointflow/v2
workflow:
  id: x
  inputs: {type: object}
  steps:
    - {id: a, kind: sleep, seconds: 1}
""",
    )
    assert any(
        "schema_version: must be one of checkpointflow/v1, mainspring/v1" in e for e in errors
    )
    assert any("unknown step kind 'sleep' (mainspring/v1 only)" in e for e in errors)


def test_expressions_are_safe_and_small() -> None:
    """Paths, comparisons and boolean logic work; anything else is a syntax error."""
    scope = {"inputs": {"n": 3, "tag": "v1"}, "event": {"d": "publish"}}
    assert condition('${event.d == "publish" and inputs.n >= 3}', scope)
    assert render("tag ${inputs.tag}", scope) == "tag v1"
    assert render("${inputs.n}", scope) == 3
    for bad in ["__import__('os')", "inputs.n + 1", "a ==", "f(x)"]:
        with pytest.raises(ExpressionError):
            parse(bad)


async def test_spec_runs_with_cli_approval_and_branches(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """The example runs: cli step output parsed, waits for review, branches on the decision."""
    spec = validate_spec(load_spec(TAG_RELEASE)).document
    async with running(
        nc,
        subjects,
        flow_registry(),
        builtin_handlers(cli_allow="python3,echo"),
        forced_replay=forced_replay,
    ) as h:
        publish = await h.client.start("flow", {"spec": spec, "inputs": {"repo": "r", "tag": "v9"}})
        hold = await h.client.start("flow", {"spec": spec, "inputs": {"repo": "r", "tag": "v8"}})
        waiting = await wait_status(h.client, publish, "waiting")
        assert waiting.waiting_for == ["release_review"]
        await wait_status(h.client, hold, "waiting")
        await h.client.send_event(publish, "release_review", {"decision": "maybe"})  # invalid
        await h.client.send_event(publish, "release_review", {"decision": "publish"})
        await h.client.send_event(hold, "release_review", {"decision": "hold"})
        assert await h.client.result(publish, timeout=30) == {"status": "published", "lines": 3}
        assert await h.client.result(hold, timeout=30) == {"status": "held"}
        kinds = types(await h.client.history(publish))
    assert kinds.count("effect.requested") == 2  # changelog, publish
    assert "event.rejected" in kinds


def _open_pipes() -> set[str]:
    """This process's open pipe descriptors (Linux: /proc/self/fd)."""
    fds = Path("/proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith("pipe:"):
                found.add(fd.name)
    return found


def _gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts: it holds no pipe and runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
async def test_cancelled_cli_command_leaves_nothing_behind(tmp_path: Path) -> None:
    """A cli command cut short (effect timeout, handler stopping) is killed with the
    processes it started, and its pipes are closed before the handler returns, not later
    by the garbage collector (an unclosed-file warning in whatever test runs next)."""
    started = tmp_path / "started"
    argv = ["sh", "-c", f"sleep 60 & echo $! > {started}; sleep 60"]
    before = _open_pipes()

    async def child_started() -> bool:
        return started.exists() and started.read_text().strip() != ""

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run_command(argv, cwd=None, env=dict(os.environ)))
            await wait_until(child_started)
            tg.cancel_scope.cancel()
    assert _open_pipes() <= before  # no event-loop turn in between: closed, not closing
    grandchild = int(started.read_text())

    async def grandchild_gone() -> bool:
        return _gone(grandchild)

    await wait_until(grandchild_gone, timeout=5)


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")
async def test_cli_command_cut_short_while_starting_closes_its_pipes() -> None:
    """Cancelled at any moment, even while its process is being spawned, a cli command
    has closed its pipes by the time the handler returns."""
    before = _open_pipes()
    for i in range(40):  # cancellation points from "before the spawn" to "after the exit"
        with anyio.move_on_after(i * 0.0005):
            await run_command(["sh", "-c", "echo hi"], cwd=None, env=dict(os.environ))
        assert _open_pipes() <= before, f"pipes left open when cut short after {i * 0.5} ms"


async def test_invalid_inputs_fail_the_run(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Inputs not matching the spec's JSON Schema fail the run, naming the field."""
    spec = validate_spec(load_spec(TAG_RELEASE)).document
    async with running(
        nc,
        subjects,
        flow_registry(),
        builtin_handlers(cli_allow="python3,echo"),
        forced_replay=forced_replay,
    ) as h:
        rid = await h.client.start("flow", {"spec": spec, "inputs": {"repo": "r"}})
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=20)
    assert err.value.error.type == "input.invalid"
    assert "'tag' is a required property" in err.value.error.message


async def test_mainspring_v1_kinds(
    nc: NATS, subjects: Subjects, tmp_path: Path, forced_replay: bool
) -> None:
    """llm, sleep, effect, switch, if, a sub-workflow file and an enforced cli retry."""
    spec = resolve_refs(validate_spec(load_spec(ROOT / "examples" / "flows" / "triage.yaml")))
    async with running(
        nc, subjects, flow_registry(), builtin_handlers(cli_allow="*"), forced_replay=forced_replay
    ) as h:
        high = await h.client.start(
            "flow",
            {
                "spec": spec.document,
                "inputs": {"ticket": "db down", "severity": 4, "workdir": str(tmp_path)},
            },
        )
        out = await h.client.result(high, timeout=30)
        kinds = types(await h.client.history(high))
        (tmp_path / "marker").unlink()
        low = await h.client.start(
            "flow",
            {
                "spec": spec.document,
                "inputs": {"ticket": "typo", "severity": 1, "workdir": str(tmp_path)},
            },
        )
        low_out = await h.client.result(low, timeout=30)
    assert out == {
        "label": "[mock-small] Classify: db down",
        "notified": {"paged": "oncall", "text": "[mock] page oncall: db down"},
        "low": None,
    }
    assert "timer.started" in kinds
    assert "child.completed" in kinds
    assert low_out["notified"] is None
    assert low_out["low"] == "low\n"
    fx = [e for e in kinds if e == "effect.completed"]
    assert len(fx) == 2  # classify, flaky (retried inside its handler); only_if_low skipped


LATER_KINDS = """\
schema_version: checkpointflow/v1
workflow:
  id: later_kinds
  inputs:
    type: object
    required: [base_url, names]
    properties: {base_url: {type: string}, names: {type: array}}
  steps:
    - id: lookup
      kind: api
      method: POST
      url: ${inputs.base_url}/lookup
      body: {names: "${inputs.names}"}
      success: {status_codes: [201]}
      outputs: {type: object, required: [count]}
    - id: greet_each
      kind: foreach
      items: ${inputs.names}
      body:
        - id: say
          kind: cli
          command: >-
            echo '{"hello": "${inputs.item}"}'
          outputs: {type: object}
        - id: out
          kind: end
          result: {n: "${inputs.index}", said: "${steps.say.outputs.hello}"}
    - id: both
      kind: parallel
      branches:
        - steps: [{id: a, kind: end, result: left}]
        - steps: [{id: b, kind: end, result: right}]
    - id: done
      kind: end
      result:
        count: ${steps.lookup.outputs.count}
        greetings: ${steps.greet_each.outputs}
        branches: ${steps.both.outputs}
"""


class _Api(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        names = json.loads(self.rfile.read(length))["names"]
        body = json.dumps({"count": len(names), "key": self.headers["Idempotency-Key"]})
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


async def test_api_foreach_parallel(
    nc: NATS, subjects: Subjects, tmp_path: Path, forced_replay: bool
) -> None:
    """The original's later kinds: an HTTP call, a loop of child runs, parallel branches."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        path = tmp_path / "later.yaml"
        path.write_text(LATER_KINDS)
        spec = validate_spec(load_spec(path)).document
        inputs = {"base_url": f"http://127.0.0.1:{server.server_port}", "names": ["ada", "bo"]}
        async with running(
            nc,
            subjects,
            flow_registry(),
            builtin_handlers(cli_allow="*"),
            forced_replay=forced_replay,
        ) as h:
            rid = await h.client.start("flow", {"spec": spec, "inputs": inputs})
            out = await h.client.result(rid, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert out == {
        "count": 2,
        "greetings": [{"n": 0, "said": "ada"}, {"n": 1, "said": "bo"}],
        "branches": ["left", "right"],
    }


def test_nested_body_errors_have_positions(tmp_path: Path) -> None:
    """A mistake inside a foreach body is reported at its own line."""
    errors = _spec_errors(
        tmp_path,
        """\
schema_version: checkpointflow/v1
workflow:
  id: nested
  inputs: {type: object}
  steps:
    - id: loop
      kind: foreach
      items: ${inputs.xs}
      body:
        - id: inner
          kind: teleport
""",
    )
    assert errors == [
        f"{tmp_path / 'flow.yaml'}:11:11: workflow.steps[0].body[0].kind: unknown step kind "
        "'teleport'; known: api, await_event, cli, end, foreach, parallel, switch, workflow"
    ]


FAN_OUT = """\
schema_version: checkpointflow/v1
workflow:
  id: fan
  inputs: {type: object}
  steps:
    - id: both
      kind: parallel
      branches:
        - steps: [{id: a, kind: end, result: left}]
        - steps: [{id: b, kind: end, result: right}]
    - id: done
      kind: end
      result: ${steps.both.outputs}
"""


async def test_runs_and_children_are_named_by_document(
    nc: NATS, subjects: Subjects, tmp_path: Path, forced_replay: bool
) -> None:
    """A `flow.<id>` run names its child runs by their documents; one recorded as plain
    `flow` keeps naming them `flow` (so its journal still replays)."""
    from schemas import ChildStarted

    path = tmp_path / "fan.yaml"
    path.write_text(FAN_OUT)
    doc = validate_spec(load_spec(path)).document
    async with running(
        nc, subjects, flow_registry(), builtin_handlers(cli_allow="*"), forced_replay=forced_replay
    ) as h:
        new = await h.client.start("flow.fan", {"spec": doc, "inputs": {}})
        old = await h.client.start("flow", {"spec": doc, "inputs": {}})
        assert await h.client.result(new, timeout=30) == ["left", "right"]
        assert await h.client.result(old, timeout=30) == ["left", "right"]
        new_events = [e.event for e in await h.client.history(new)]
        old_events = [e.event for e in await h.client.history(old)]
    assert [e.workflow for e in new_events if isinstance(e, ChildStarted)] == [
        "flow.fan.both.0",
        "flow.fan.both.1",
    ]
    assert [e.workflow for e in old_events if isinstance(e, ChildStarted)] == ["flow", "flow"]
