"""Run control from the CLI, in subprocesses: envelopes, exit codes, resume commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from actors import builtin_handlers, flow_registry
from mainspring import NatsServer
from mainspring._natsserver import free_port
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import running
from tests.procs import acli, cli, conn_args

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
    """run flow.yaml waits at the review step (exit 40, step id, prompt); cancel exits 50."""
    async with running(nc, subjects, flow_registry(), builtin_handlers()):
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
        assert env["wait"]["prompt"] == "Publish ${inputs.tag} of ${inputs.repo}?"
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
