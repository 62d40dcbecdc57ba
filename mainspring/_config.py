"""Where each setting comes from: a flag, else the environment, else a running
``mainspring dev`` that *is* the deployment asked for, else the default.

A running ``mainspring dev`` publishes its settings in ``.mainspring/dev.json`` (this
folder) and ``~/.mainspring-dev.json``. Its settings are used only as a whole and only
when they cannot contradict what was asked for: if a NATS URL or a PostgreSQL DSN was
given (flag or environment) and differs from the dev instance's, nothing of that
instance is used — a command never talks to one deployment's NATS and another's
database, and never checks signatures with a key that belongs to neither.

Each setting is declared once, in ``SETTINGS``: its flag (which the CLI gives every
command of the setting's scope), its environment variable, what a dev instance lends.
``resolve()`` returns every setting with its source; ``--verbose`` and
``mainspring config show`` print them.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from schemas import ConfigError, add_secret, redact
from streams import NatsAuth

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEV_DIR = Path(".mainspring")
DEV_POINTER = Path.home() / ".mainspring-dev.json"

Source = Literal["flag", "environment", "dev", "default", "unset"]
Scope = Literal["nats", "postgres", "signing", "verifying", "effects"]
"""Which commands take a setting's flag: every command that connects (``nats``), those
that read PostgreSQL, those that sign checkpoints, those that verify them, those that
serve effects."""


@dataclass(frozen=True)
class Setting:
    """One setting's value and where it came from."""

    name: str
    value: str | None
    source: Source
    origin: str = ""
    """the flag, the variable, the dev instance's file, or empty"""
    secret: bool = False
    """printed redacted (a DSN's password hidden)"""

    @property
    def shown(self) -> str:
        """The value as it may be printed (a DSN's password hidden)."""
        if self.value is None:
            return "(none)"
        return redact(self.value) if self.secret else self.value

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

    @property
    def nats_nkey(self) -> Path | None:
        """the operator's seed (dev runs NATS with the roles)"""
        return self._file(self.info.get("nats_nkey"))

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
    def keys(self) -> Path | None:
        return self._file(self.info.get("keys"))

    @property
    def signing_key(self) -> Path | None:
        data_dir = self.info.get("data_dir")
        return self._file(f"{data_dir}/keys/signing.pem") if data_dir else None


@dataclass(frozen=True)
class SettingSpec:
    """One connection setting, declared once: the CLI derives its flag and help from
    this, ``resolve`` its value and source, ``config show`` its line."""

    name: str
    flag: str
    var: str
    help: str
    scope: Scope
    lent: Callable[[DevInstance], object] = lambda dev: None
    """what a running dev instance lends (None: nothing)"""
    default: str | None = None
    empty_is_none: bool = True
    """a variable set but empty is an explicit "none" (False: it is ignored)"""
    secret: bool = False
    whole_secret: bool = False
    """the whole value is secret (a token, a password): shown as ``***`` everywhere"""

    @property
    def help_text(self) -> str:
        """The flag's help, naming its variable."""
        return f"{self.help} [env: {self.var}]"


SETTINGS = (
    SettingSpec(
        "nats_url",
        "--nats-url",
        "MAINSPRING_NATS_URL",
        "NATS server URL",
        "nats",
        lent=lambda dev: dev.nats_url,
        default=DEFAULT_NATS_URL,
        empty_is_none=False,
        secret=True,
    ),
    SettingSpec(
        "postgres_dsn",
        "--postgres-dsn",
        "MAINSPRING_POSTGRES_DSN",
        "PostgreSQL DSN",
        "postgres",
        lent=lambda dev: dev.postgres_dsn,
        secret=True,
    ),
    SettingSpec(
        "nats_creds",
        "--nats-creds",
        "MAINSPRING_NATS_CREDS",
        "NATS credentials file (.creds: a user JWT and its nkey seed)",
        "nats",
    ),
    SettingSpec(
        "nats_nkey",
        "--nats-nkey",
        "MAINSPRING_NATS_NKEY",
        "file holding a NATS nkey seed (SU...)",
        "nats",
        lent=lambda dev: dev.nats_nkey,
    ),
    SettingSpec(
        "nats_token",
        "--nats-token",
        "MAINSPRING_NATS_TOKEN",
        "NATS authentication token",
        "nats",
        secret=True,
        whole_secret=True,
    ),
    SettingSpec("nats_user", "--nats-user", "MAINSPRING_NATS_USER", "NATS user name", "nats"),
    SettingSpec(
        "nats_password",
        "--nats-password",
        "MAINSPRING_NATS_PASSWORD",
        "NATS password (of --nats-user)",
        "nats",
        secret=True,
        whole_secret=True,
    ),
    SettingSpec(
        "nats_tls_ca",
        "--nats-tls-ca",
        "MAINSPRING_NATS_TLS_CA",
        "CA certificates (PEM) the NATS server's certificate must chain to (turns TLS on)",
        "nats",
    ),
    SettingSpec(
        "nats_tls_cert",
        "--nats-tls-cert",
        "MAINSPRING_NATS_TLS_CERT",
        "client certificate (PEM) for NATS servers that verify clients",
        "nats",
    ),
    SettingSpec(
        "nats_tls_key",
        "--nats-tls-key",
        "MAINSPRING_NATS_TLS_KEY",
        "private key (PEM) of --nats-tls-cert",
        "nats",
    ),
    SettingSpec(
        "nats_tls_server_name",
        "--nats-tls-server-name",
        "MAINSPRING_NATS_TLS_SERVER_NAME",
        "name the NATS server's certificate must carry (default: the URL's host)",
        "nats",
    ),
    SettingSpec(
        "keys",
        "--keys",
        "MAINSPRING_KEYS",
        "deployment keys file (`mainspring keys new`): workers tag what they write with "
        "it, every reader checks the tags",
        "nats",
        lent=lambda dev: dev.keys,
    ),
    SettingSpec(
        "effect_keys",
        "--effect-keys",
        "MAINSPRING_EFFECT_KEYS",
        "a handler's effect keys file (`mainspring keys handler`): requests must carry a "
        "worker's tag, results get the handler's",
        "effects",
    ),
    SettingSpec(
        "signing_key",
        "--signing-key",
        "MAINSPRING_SIGNING_KEY",
        "Ed25519 private key (PEM) that signs checkpoints",
        "signing",
        lent=lambda dev: dev.signing_key,
    ),
    SettingSpec(
        "verify_key",
        "--public-key",
        "MAINSPRING_VERIFY_KEY",
        "Ed25519 public key (PEM) of the checkpoint signer",
        "verifying",
        lent=lambda dev: dev.verify_key,
    ),
)
"""Every connection setting (a new one — credentials, TLS — is one more entry here)."""


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

    by_name: Mapping[str, Setting]
    """each of ``SETTINGS``, in their order"""
    dev: DevInstance | None = None
    """the dev instance whose settings were used (None: none were)"""
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Setting:
        return self.by_name[name]

    @property
    def nats_url(self) -> Setting:
        return self["nats_url"]

    @property
    def postgres_dsn(self) -> Setting:
        return self["postgres_dsn"]

    @property
    def signing_key(self) -> Setting:
        return self["signing_key"]

    @property
    def verify_key(self) -> Setting:
        return self["verify_key"]

    def all(self) -> list[Setting]:
        return list(self.by_name.values())

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


def _explicit(spec: SettingSpec, flag_value: str | None, env: Mapping[str, str]) -> Setting | None:
    """The flag's or the environment's value (an empty variable counts as an explicit
    "none" when ``spec.empty_is_none``, otherwise it is ignored)."""
    if flag_value:
        return Setting(spec.name, flag_value, "flag", spec.flag, spec.secret)
    if spec.var in env and (env[spec.var] or spec.empty_is_none):
        return Setting(spec.name, env[spec.var] or None, "environment", spec.var, spec.secret)
    return None


def resolve(
    flags: Mapping[str, str | None] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    devs: list[DevInstance] | None = None,
    **given: str | None,
) -> Settings:
    """Each setting from its flag (``flags`` and ``given``: values by setting name, as in
    ``SETTINGS``), else its variable, else a matching dev instance, else its default.
    ``environ`` and ``devs`` default to the real ones (tests pass their own)."""
    env = os.environ if environ is None else environ
    asked = {**(flags or {}), **given}
    unknown = set(asked) - {spec.name for spec in SETTINGS}
    if unknown:
        raise TypeError(f"resolve() got unknown settings {sorted(unknown)}")
    notes: list[str] = []
    if devs is None:
        devs, notes = find_devs()
    explicit = {spec.name: _explicit(spec, asked.get(spec.name), env) for spec in SETTINGS}
    nats, pg = explicit["nats_url"], explicit["postgres_dsn"]
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

    def setting(spec: SettingSpec) -> Setting:
        found = explicit[spec.name]
        if found:
            return found
        lent = spec.lent(dev) if dev else None
        if dev and lent:
            return Setting(spec.name, str(lent), "dev", str(dev.path), spec.secret)
        if spec.default is not None:
            return Setting(spec.name, spec.default, "default", secret=spec.secret)
        return Setting(spec.name, None, "unset", secret=spec.secret)

    resolved = {spec.name: setting(spec) for spec in SETTINGS}
    for spec in SETTINGS:
        value = resolved[spec.name].value
        if spec.whole_secret and value:
            add_secret(value)  # from here on no log line or message shows it
    return Settings(resolved, dev=dev, notes=notes)


def nats_auth(settings: Settings) -> NatsAuth:
    """The NATS credentials and TLS files the settings name."""
    return NatsAuth(
        creds=settings["nats_creds"].value,
        nkey=settings["nats_nkey"].value,
        token=settings["nats_token"].value,
        user=settings["nats_user"].value,
        password=settings["nats_password"].value,
        tls_ca=settings["nats_tls_ca"].value,
        tls_cert=settings["nats_tls_cert"].value,
        tls_key=settings["nats_tls_key"].value,
        tls_server_name=settings["nats_tls_server_name"].value,
    )


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
