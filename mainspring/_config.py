"""Where each setting comes from: a flag, else the environment, else a running
``mainspring dev`` that *is* the deployment asked for, else the default.

A running ``mainspring dev`` publishes its settings in ``.mainspring/dev.json`` (this
folder) and ``~/.mainspring-dev.json``. Its settings are used only as a whole and only
when they cannot contradict what was asked for: if a NATS URL or a PostgreSQL DSN was
given (flag or environment) and differs from the dev instance's, nothing of that
instance is used — a command never talks to one deployment's NATS and another's
database, and never checks signatures with a key that belongs to neither.

``resolve()`` returns every setting with its source; ``--verbose`` and
``mainspring config show`` print them.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from schemas import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEV_DIR = Path(".mainspring")
DEV_POINTER = Path.home() / ".mainspring-dev.json"

Source = Literal["flag", "environment", "dev", "default", "unset"]


@dataclass(frozen=True)
class Setting:
    """One setting's value and where it came from."""

    name: str
    value: str | None
    source: Source
    origin: str = ""
    """the flag, the variable, the dev instance's file, or empty"""

    @property
    def shown(self) -> str:
        """The value as it may be printed (a DSN's password hidden)."""
        if self.value is None:
            return "(none)"
        return redact(self.value) if self.name == "postgres_dsn" else self.value

    def describe(self) -> str:
        where = {
            "flag": f"flag {self.origin}",
            "environment": f"environment {self.origin}",
            "dev": f"dev instance at {self.origin}",
            "default": "default",
            "unset": "not set",
        }[self.source]
        return f"{self.name} = {self.shown}  ({where})"


@dataclass(frozen=True)
class DevInstance:
    """What a running ``mainspring dev`` published about itself, and where."""

    path: Path
    info: Mapping[str, Any]

    @property
    def pid(self) -> int:
        try:
            return int(self.info.get("pid", 0))
        except (TypeError, ValueError):
            return 0

    @property
    def nats_url(self) -> str | None:
        value = self.info.get("nats_url")
        return str(value) if value else None

    @property
    def postgres_dsn(self) -> str | None:
        value = self.info.get("postgres_dsn")
        return str(value) if value else None

    def _file(self, value: object) -> Path | None:
        """A path the dev instance wrote (absolute, or relative to the folder it ran in)."""
        if not value:
            return None
        path = Path(str(value))
        if not path.is_absolute():
            data_dir = Path(str(self.info.get("data_dir", "")))
            # .mainspring/dev.json sits in the data dir: relative paths start at its parent
            if self.path.parent.name != data_dir.name or len(data_dir.parts) != 1:
                return None
            path = self.path.parent.parent / path
        return path if path.exists() else None

    @property
    def verify_key(self) -> Path | None:
        return self._file(self.info.get("verify_key"))

    @property
    def signing_key(self) -> Path | None:
        data_dir = self.info.get("data_dir")
        return self._file(f"{data_dir}/keys/signing.pem") if data_dir else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dev_files() -> tuple[Path, ...]:
    """Where a running ``mainspring dev`` is looked for, in order."""
    return (DEV_DIR / "dev.json", DEV_POINTER)


def find_devs(paths: tuple[Path, ...] | None = None) -> tuple[list[DevInstance], list[str]]:
    """Running dev instances (this folder's first) and notes about stale files."""
    found: list[DevInstance] = []
    notes: list[str] = []
    for path in dev_files() if paths is None else paths:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        dev = DevInstance(path, info)
        if _alive(dev.pid):
            if all(d.pid != dev.pid for d in found):
                found.append(dev)
        else:
            notes.append(f"{path} names a dev instance (pid {dev.pid}) that is not running")
    return found, notes


def _same_url(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.strip().rstrip("/").lower().replace("://localhost", "://127.0.0.1")

    return norm(a) == norm(b)


@dataclass(frozen=True)
class Settings:
    """Every connection setting of one command, each with its source."""

    nats_url: Setting
    postgres_dsn: Setting
    signing_key: Setting
    verify_key: Setting
    dev: DevInstance | None = None
    """the dev instance whose settings were used (None: none were)"""
    notes: list[str] = field(default_factory=list)

    def all(self) -> list[Setting]:
        return [self.nats_url, self.postgres_dsn, self.signing_key, self.verify_key]

    def lines(self) -> list[str]:
        return [s.describe() for s in self.all()] + [f"note: {n}" for n in self.notes]

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": {
                s.name: {
                    "value": None if s.value is None else s.shown,
                    "source": s.source,
                    "origin": s.origin or None,
                }
                for s in self.all()
            },
            "dev_instance": None
            if self.dev is None
            else {"path": str(self.dev.path), "pid": self.dev.pid},
            "notes": list(self.notes),
        }


def _explicit(
    name: str, flag_value: str | None, flag: str, var: str, env: Mapping[str, str], *, empty: bool
) -> Setting | None:
    """The flag's or the environment's value; ``empty`` means an empty variable counts
    (as an explicit "none"), otherwise it is ignored."""
    if flag_value:
        return Setting(name, flag_value, "flag", flag)
    if var in env and (env[var] or empty):
        return Setting(name, env[var] or None, "environment", var)
    return None


def resolve(
    *,
    nats_url: str | None = None,
    postgres_dsn: str | None = None,
    signing_key: str | None = None,
    verify_key: str | None = None,
    environ: Mapping[str, str] | None = None,
    devs: list[DevInstance] | None = None,
) -> Settings:
    """Each setting from its flag, else its variable, else a matching dev instance, else
    its default. ``environ`` and ``devs`` default to the real ones (tests pass their own)."""
    env = os.environ if environ is None else environ
    notes: list[str] = []
    if devs is None:
        devs, notes = find_devs()
    nats = _explicit("nats_url", nats_url, "--nats-url", "MAINSPRING_NATS_URL", env, empty=False)
    pg = _explicit(
        "postgres_dsn", postgres_dsn, "--postgres-dsn", "MAINSPRING_POSTGRES_DSN", env, empty=True
    )
    sk = _explicit(
        "signing_key", signing_key, "--signing-key", "MAINSPRING_SIGNING_KEY", env, empty=True
    )
    vk = _explicit(
        "verify_key", verify_key, "--public-key", "MAINSPRING_VERIFY_KEY", env, empty=True
    )
    dev = None
    for candidate in devs:
        conflicts = []
        if nats and nats.value and not _same_url(nats.value, candidate.nats_url or ""):
            conflicts.append(f"{nats.origin} is {nats.shown}, it serves {candidate.nats_url}")
        if pg and pg.value and not _same_url(pg.value, candidate.postgres_dsn or ""):
            conflicts.append(f"{pg.origin} names another database than its own")
        if conflicts:
            notes.append(f"dev instance at {candidate.path} not used: " + "; ".join(conflicts))
            continue
        dev = candidate
        break
    origin = str(dev.path) if dev else ""

    def from_dev(name: str, value: object) -> Setting | None:
        return Setting(name, str(value), "dev", origin) if dev and value else None

    return Settings(
        nats_url=nats
        or from_dev("nats_url", dev and dev.nats_url)
        or Setting("nats_url", DEFAULT_NATS_URL, "default"),
        postgres_dsn=pg
        or from_dev("postgres_dsn", dev and dev.postgres_dsn)
        or Setting("postgres_dsn", None, "unset"),
        signing_key=sk
        or from_dev("signing_key", dev and dev.signing_key)
        or Setting("signing_key", None, "unset"),
        verify_key=vk
        or from_dev("verify_key", dev and dev.verify_key)
        or Setting("verify_key", None, "unset"),
        dev=dev,
        notes=notes,
    )


def redact(dsn: str) -> str:
    """A URL or DSN with its password replaced by ``***``."""
    dsn = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", dsn)
    if "@" not in dsn:
        return dsn
    userinfo, rest = dsn.rsplit("@", 1)
    scheme, sep, user = userinfo.rpartition("//")
    if ":" not in user:
        return dsn
    return f"{scheme}{sep}{user.split(':', 1)[0]}:***@{rest}"


# --app paths documented before handlers, flows and the client left ``actors``: still
# accepted, with a note on stderr that names the new path.
MOVED_APPS = {
    "actors:builtin_handlers": "handlers:builtin_handlers",
    "actors:flow_registry": "flows:flow_registry",
}


def load_object(spec: str) -> Any:
    """Import ``package.module:attribute`` (the app a worker or handler service serves)."""
    if spec in MOVED_APPS:
        print(f"note: --app {spec} is now {MOVED_APPS[spec]}; use that", file=sys.stderr)
        spec = MOVED_APPS[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--app must look like 'package.module:attribute', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import {module_name!r} for --app {spec}: {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None


T = TypeVar("T")


def load_app(spec: str, kind: type[T]) -> T:
    """What ``--app module:attribute`` names: a ``kind`` instance, or a function that
    returns one when called without arguments (``handlers:builtin_handlers``)."""
    obj = load_object(spec)
    if not isinstance(obj, kind) and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as e:
            raise ConfigError(
                f"--app {spec} is a function that needs arguments ({e}); name a "
                f"{kind.__name__} or a function without arguments that returns one"
            ) from None
    if not isinstance(obj, kind):
        raise ConfigError(f"--app {spec} is a {type(obj).__name__}, not {kind.__name__}")
    return obj
