"""`mainspring` processes (workers, handler services, CLI commands) for tests and benchmarks.

Crash tests kill them with a real SIGKILL; bench/_env.py spawns its workers here too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from mainspring import NatsServer
from schemas import ConfigError
from streams import Keyring, Subjects
from tests.harness import keys_for

ROOT = Path(__file__).resolve().parent.parent


class Proc:
    """A spawned `mainspring` process and the file its output goes to."""

    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill9(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def stop(self) -> None:
        """SIGINT (a clean stop), then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self, lines: int = 20) -> str:
        """The last lines of its output (for a failure report)."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def spawn(
    command: str,
    app: str,
    url: str,
    subjects: Subjects,
    log: Path,
    *,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
    python: tuple[str, ...] = (),
    new_session: bool = False,
    wrap: tuple[str, ...] = (),
) -> Proc:
    """Start `mainspring <command> [--app <app>]` against the test server, with the
    deployment keys every harness of ``subjects`` has.

    ``python``: interpreter options before ``-m mainspring`` (e.g. ``-m cProfile -o f``);
    ``new_session``: a Ctrl-C in the terminal does not reach it (the caller stops it);
    ``wrap``: a command prefix (``ip netns exec <host>``: run it on a lab host)."""
    app_args = ["--app", app] if app else []
    args = [
        *wrap,
        sys.executable,
        *python,
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
    keys = str(keys_file(subjects))
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MAINSPRING_KEYS": keys, **(env or {})}
    with log.open("ab") as out:
        popen = subprocess.Popen(
            args,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=new_session,
        )
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


def keys_file(subjects: Subjects) -> Path:
    """A file of the keys every harness of ``subjects`` has (``harness.keys_for``)."""
    path = Path(tempfile.gettempdir()) / "mainspring-test-keys" / f"{subjects.prefix}.keys"
    ring = keys_for(subjects)
    try:
        current = Keyring.load(path).signing.id == ring.signing.id
    except ConfigError:  # none yet, or from an older format
        current = False
    if not current:
        ring.save(path)
    return path


def conn_args(server: NatsServer, subjects: Subjects, dsn: str | None = None) -> tuple[str, ...]:
    """The flags that point a `mainspring` command at a test deployment (its keys too)."""
    args = (
        "--nats-url",
        server.url,
        "--prefix",
        subjects.prefix,
        "--partitions",
        str(subjects.partitions),
        "--keys",
        str(keys_file(subjects)),
    )
    return (*args, "--postgres-dsn", dsn) if dsn else args
