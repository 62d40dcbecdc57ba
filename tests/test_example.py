"""The README's example really runs end to end on servers it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_approval_agent_example_runs() -> None:
    """examples/approval_agent.py starts its own nats-server, waits, is approved, completes."""
    env = {k: v for k, v in os.environ.items() if k != "MAINSPRING_NATS_URL"}
    done = subprocess.run(
        [sys.executable, "examples/approval_agent.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "is waiting for ['approval']" in out
    assert "nats pub ms.event." in out
    assert "completed: published=True reviewer=ada" in out
    assert "run.completed" in out
