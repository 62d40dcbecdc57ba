"""Worker and handler processes for crash tests (killed with real SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from mainspring import NatsServer
from streams import Subjects

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def spawn(
    command: str,
    app: str,
    url: str,
    subjects: Subjects,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Proc:
    """Start `mainspring <command> [--app <app>]` against the test server."""
    app_args = ["--app", app] if app else []
    args = [
        sys.executable,
        "-m",
        "mainspring",
        command,
        *app_args,
        "--nats-url",
        url,
        "--prefix",
        subjects.prefix,
        "--partitions",
        str(subjects.partitions),
        *extra,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(args, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    return Proc(popen, log)


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run a `mainspring` command to completion; returns its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "mainspring", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def acli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`cli` from async tests: in a thread, so in-process workers keep running meanwhile."""
    import anyio

    return await anyio.to_thread.run_sync(lambda: cli(*args, env=env, timeout=timeout))


def conn_args(server: NatsServer, subjects: Subjects, dsn: str | None = None) -> tuple[str, ...]:
    """The flags that point a `mainspring` command at a test deployment."""
    args = (
        "--nats-url",
        server.url,
        "--prefix",
        subjects.prefix,
        "--partitions",
        str(subjects.partitions),
    )
    return (*args, "--postgres-dsn", dsn) if dsn else args
