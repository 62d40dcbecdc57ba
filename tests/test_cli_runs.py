"""Run control from the CLI, in subprocesses: envelopes, exit codes, resume commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from flows import flow_registry, load_spec, resolve_refs, validate_spec
from handlers import builtin_handlers
from mainspring import NatsServer
from servers import free_port
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import running, wait_status
from tests.procs import acli, cli, conn_args, spawn

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


async def test_start_wait_resume_complete(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """start --wait exits 40 with a resume command; resume --wait exits 0 with the result."""
    reg = flow_registry(registry)
    async with running(nc, subjects, reg, handlers):
        conn = conn_args(nats_server, subjects)
        started = await acli("start", "agent", "--input", '"otters"', "--wait", "--json", *conn)
        assert started.returncode == 40, started.stderr
        env = json.loads(started.stdout)
        assert env["ok"] is True
        assert env["status"] == "waiting"
        assert env["exit_code"] == 40
        wait = env["wait"]
        assert wait["event"] == "approval"
        assert wait["subject"] == f"{subjects.prefix}.event.{env['run_id']}.approval"
        assert wait["resume_command"].startswith(f"mainspring resume {env['run_id']} approval")
        assert wait["schema"]["$defs"]["Approval"]["required"] == ["approved"]
        st = await acli("status", env["run_id"], "--json", *conn)
        assert st.returncode == 40
        assert json.loads(st.stdout)["wait"] == wait
        bad = await acli(
            "resume", env["run_id"], "approval", "--payload", '{"approved": "yes"}', "--json", *conn
        )
        assert bad.returncode == 10
        assert "$.approved" in json.loads(bad.stdout)["error"]["message"]
        done = await acli(
            "resume",
            env["run_id"],
            "approval",
            "--payload",
            '{"approved": true, "by": "cli"}',
            "--wait",
            "--json",
            *conn,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout)
        assert result["status"] == "completed"
        assert result["result"]["by"] == "cli"


async def test_run_spec_and_cancel(nc: NATS, nats_server: NatsServer, subjects: Subjects) -> None:
    """run flow.yaml waits at the review step (exit 40, step id, filled-in prompt, named by
    its document); cancel exits 50."""
    async with running(nc, subjects, flow_registry(), builtin_handlers(cli_allow="*")):
        conn = conn_args(nats_server, subjects)
        out = await acli(
            "run",
            "examples/flows/tag_release.yaml",
            "--input",
            '{"repo": "mainspring", "tag": "v1.2"}',
            "--wait",
            "--json",
            *conn,
        )
        assert out.returncode == 40, out.stdout + out.stderr
        env = json.loads(out.stdout)
        assert env["current_step_id"] == "review"
        assert env["wait"]["prompt"] == "Publish v1.2 of mainspring?"
        assert env["workflow"] == "flow.tag_release"
        assert "x-mainspring-wait" not in env["wait"]["schema"]
        cancelled = await acli("cancel", env["run_id"], "--json", *conn)
        assert cancelled.returncode == 50
        assert json.loads(cancelled.stdout)["status"] == "cancelled"


def test_bad_input_names_the_field(nats_server: NatsServer) -> None:
    """Inputs that break the spec's schema are refused before starting: exit 10, field named."""
    out = cli(
        "run",
        "examples/flows/tag_release.yaml",
        "--input",
        '{"repo": 1, "tag": "x"}',
        "--json",
        "--nats-url",
        nats_server.url,
    )
    assert out.returncode == 10
    env = json.loads(out.stdout)
    assert env["ok"] is False
    assert "$.repo" in env["error"]["message"]
    assert cli("start", "agent", "--input", "{oops", "--nats-url", nats_server.url).returncode == 10


def test_unreachable_server_says_what_to_start() -> None:
    """No NATS at the address: exit 20 and a message naming `mainspring dev`."""
    out = cli("start", "agent", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--json")
    assert out.returncode == 20
    env = json.loads(out.stdout)
    assert "mainspring dev" in env["error"]["message"]


def test_validate_reports_positions(tmp_path: Path) -> None:
    """validate: exit 0 for the example, exit 10 with file:line:col for a broken spec."""
    assert cli("validate", "examples/flows/tag_release.yaml").returncode == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "schema_version: checkpointflow/v1\nworkflow:\n  id: x\n"
        "  inputs: {type: object}\n  steps:\n    - {id: a, kind: end}\n"
        "    - {id: b, kind: cli, command: 'echo ${steps.zz.outputs}'}\n"
    )
    out = cli("validate", str(broken), "--json")
    assert out.returncode == 10
    problems = json.loads(out.stdout)["problems"]
    assert any(p.startswith(f"{broken}:7:7: workflow.steps[1]") for p in problems), problems


@pytest.mark.parametrize("app", ["handlers:builtin_handlers", "actors:builtin_handlers"])
async def test_documented_builtin_handlers_app_serves(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path, app: str
) -> None:
    """`mainspring handlers --app handlers:builtin_handlers --cli-allow python3,echo` (as
    documented) serves the example's cli steps; the path from before the reshape still
    works and names the new one."""
    proc = spawn(
        "handlers",
        app,
        nats_server.url,
        subjects,
        tmp_path / "h.log",
        extra=("--cli-allow", "python3,echo"),
    )
    try:
        async with running(nc, subjects, flow_registry()) as h:
            spec = validate_spec(load_spec(ROOT / "examples" / "flows" / "tag_release.yaml"))
            rid = await h.client.start(
                "flow.tag_release", {"spec": spec.document, "inputs": {"repo": "r", "tag": "v1"}}
            )
            await wait_status(h.client, rid, "waiting")
    finally:
        proc.stop()
    log = (tmp_path / "h.log").read_text()
    assert proc.popen.returncode == 0, log
    moved = "note: --app actors:builtin_handlers is now handlers:builtin_handlers; use that"
    assert (moved in log) == app.startswith("actors:"), log


SPEC_WITH_OUTPUT_PROMPT = """\
schema_version: mainspring/v1
workflow:
  id: ask_about
  inputs: {type: object, required: [topic], properties: {topic: {type: string}}}
  steps:
    - id: draft
      kind: llm
      prompt: "Write about ${inputs.topic}"
    - id: review
      kind: await_event
      event_name: verdict
      audience: user
      prompt: "Publish '${steps.draft.outputs.content}' (${steps.draft.outputs.model})?"
      input_schema: {type: object}
"""


async def test_prompts_are_filled_in_and_runs_named_by_document(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """A waiting spec's prompt has its ${...} (inputs and step outputs) filled in; the run
    is named flow.<document id>, and replay needs no module (and no --app)."""
    spec = tmp_path / "ask.yaml"
    spec.write_text(SPEC_WITH_OUTPUT_PROMPT)
    conn = conn_args(nats_server, subjects)
    async with running(nc, subjects, flow_registry(), builtin_handlers(cli_allow="*")):
        out = await acli(
            "run", str(spec), "--input", '{"topic": "otters"}', "--wait", "--json", *conn
        )
        assert out.returncode == 40, out.stdout + out.stderr
        env = json.loads(out.stdout)
        assert env["workflow"] == "flow.ask_about"
        assert env["current_step_id"] == "review"
        assert env["wait"]["prompt"] == "Publish '[mock] Write about otters' (mock)?"
        assert env["wait"]["audience"] == "user"
        assert env["wait"]["schema"] == {"type": "object"}
    replayed = await acli("replay", env["run_id"], *conn)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert f"ok   {env['run_id']} (flow.ask_about" in replayed.stdout


CHANGED_TAG_RELEASE = (
    (ROOT / "examples" / "flows" / "tag_release.yaml")
    .read_text()
    .replace(
        "    - id: changelog\n",
        "    - id: bump\n      kind: sleep\n      seconds: 1\n    - id: changelog\n",
    )
    .replace("schema_version: checkpointflow/v1", "schema_version: mainspring/v1")
)


async def test_replay_old_flow_runs_and_against_an_edited_document(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """A run recorded as plain `flow` still replays (from its recorded document); --spec
    replays it against a file: the same document passes, an edited one fails (exit 30)."""
    example = ROOT / "examples" / "flows" / "tag_release.yaml"
    document = resolve_refs(validate_spec(load_spec(example))).document
    async with running(nc, subjects, flow_registry(), builtin_handlers(cli_allow="*")) as h:
        old = await h.client.start(
            "flow", {"spec": document, "inputs": {"repo": "r", "tag": "v0"}}, run_id="oldflow"
        )
        await wait_status(h.client, old, "waiting")
        await h.client.send_event(old, "release_review", {"decision": "hold"})
        assert await h.client.result(old, timeout=30) == {"status": "held"}
    conn = conn_args(nats_server, subjects)
    assert (await acli("replay", "oldflow", *conn)).returncode == 0
    same = await acli("replay", "oldflow", "--spec", str(example), *conn)
    assert same.returncode == 0, same.stdout + same.stderr
    edited = tmp_path / "tag_release.yaml"
    edited.write_text(CHANGED_TAG_RELEASE)
    changed = await acli("replay", "--all", "--spec", str(edited), "--json", *conn)
    assert changed.returncode == 30, changed.stdout + changed.stderr
    result = json.loads(changed.stdout)
    assert [r["run_id"] for r in result["details"]] == ["oldflow"]
    assert "nondeterminism in run oldflow" in result["problems"][0]
    code_run = await acli(
        "replay", "oldflow", "--spec", str(ROOT / "examples/flows/notify.yaml"), *conn
    )
    assert code_run.returncode == 30
    assert "not 'notify'" in code_run.stdout


FALLS_INTO_REJECTED = """\
schema_version: checkpointflow/v1
workflow:
  id: change
  inputs: {type: object}
  steps:
    - id: review
      kind: await_event
      event_name: decision
      input_schema: {type: object}
      transitions:
        - when: ${event.ok == true}
          next: apply
        - when: ${event.ok == false}
          next: rejected
    - id: apply
      kind: cli
      command: echo applied
    - id: rejected
      kind: end
      result: {status: rejected}
"""


def test_validate_warns_about_falling_into_another_branchs_end(tmp_path: Path) -> None:
    """validate accepts a step falling through into another branch's end step, but warns
    with file:line:column; the shipped examples draw no warning."""
    spec = tmp_path / "change.yaml"
    spec.write_text(FALLS_INTO_REJECTED)
    out = cli("validate", str(spec))
    assert out.returncode == 0, out.stderr
    assert (
        f"warning: {spec}:15:7: workflow.steps[1]: step 'apply' has no `next` and falls "
        "through into end step 'rejected', which step 'review' goes to on a condition"
    ) in out.stderr
    as_json = cli("validate", str(spec), "--json")
    assert as_json.returncode == 0
    [warning] = json.loads(as_json.stdout)["details"]["warnings"]
    assert warning.startswith(f"{spec}:15:7:")
    for example in ("tag_release", "triage", "notify"):
        clean = cli("validate", f"examples/flows/{example}.yaml")
        assert clean.returncode == 0
        assert "warning" not in clean.stderr
