"""`mainspring dev`: one foreground process others use; Ctrl-C stops it; data persists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mainspring._natsserver import free_port
from tests.procs import ROOT, cli

EXAMPLE = ROOT / "examples" / "flows" / "tag_release.yaml"


def _env(home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAINSPRING_")}
    return {**clean, "HOME": str(home), "PYTHONPATH": str(ROOT)}


def _start_dev(work: Path, env: dict[str, str], port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mainspring", "dev", "--nats-port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until dev prints; bounded by the deadline check
        if "mainspring dev is up" in line:
            return proc
        assert time.monotonic() < deadline, "mainspring dev did not come up"
    raise AssertionError(f"mainspring dev exited with {proc.wait()}")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)  # drains and closes its output
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc.returncode


def _status_until(run_id: str, code: int, work: Path, env: dict[str, str]) -> str:
    """The projection may trail the journal by a moment: wait for the expected exit code."""
    deadline = time.monotonic() + 30
    while True:
        out = cli("status", run_id, cwd=work, env=env)
        if out.returncode == code or time.monotonic() > deadline:
            return out.stdout + out.stderr
        time.sleep(0.2)  # re-checking a condition with a deadline


def test_dev_serves_other_commands_and_keeps_data(tmp_path: Path) -> None:
    """Other commands find `mainspring dev` without configuration; after Ctrl-C and a
    restart, the run and its projection are still there."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = _env(home)
    port = free_port()
    dev = _start_dev(work, env, port)
    try:
        assert json.loads((work / ".mainspring" / "dev.json").read_text())["pid"] == dev.pid
        started = cli(
            "run",
            str(EXAMPLE),
            "--input",
            '{"repo": "r", "tag": "v3"}',
            "--wait",
            "--json",
            cwd=work,
            env=env,
        )
        assert started.returncode == 40, started.stdout + started.stderr
        run_id = json.loads(started.stdout)["run_id"]
        done = cli(
            "resume",
            run_id,
            "release_review",
            "--payload",
            '{"decision": "publish"}',
            "--wait",
            "--json",
            cwd=work,
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["result"] == {"status": "published", "lines": 3}
        assert "status    completed" in _status_until(run_id, 0, work, env)
    finally:
        code = _stop(dev)
    assert code == 0
    assert not (work / ".mainspring" / "dev.json").exists()
    dev = _start_dev(work, env, port)
    try:
        assert "status    completed" in _status_until(run_id, 0, work, env)
        audit = cli(
            "audit",
            "verify",
            run_id,
            "--public-key",
            str(work / ".mainspring" / "keys" / "signing.pub.pem"),
            cwd=work,
            env=env,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        assert _stop(dev) == 0
