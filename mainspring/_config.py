"""Configuration from the environment (flags override): MAINSPRING_NATS_URL, ..."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from schemas import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEV_DIR = Path(".mainspring")
DEV_POINTER = Path.home() / ".mainspring-dev.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_dev() -> dict[str, Any] | None:
    """What a running `mainspring dev` published about itself (this folder's first)."""
    for path in (DEV_DIR / "dev.json", DEV_POINTER):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and _alive(int(info.get("pid", 0))):
            return info
    return None


def nats_url(flag: str | None = None) -> str:
    """Flag, else MAINSPRING_NATS_URL, else a running `mainspring dev`, else the default."""
    if flag:
        return flag
    if env := os.environ.get("MAINSPRING_NATS_URL"):
        return env
    dev = running_dev()
    return str(dev["nats_url"]) if dev else DEFAULT_NATS_URL


def postgres_dsn(flag: str | None = None) -> str | None:
    """Flag, else MAINSPRING_POSTGRES_DSN, else a running `mainspring dev`'s database."""
    if flag:
        return flag
    if "MAINSPRING_POSTGRES_DSN" in os.environ:
        return os.environ["MAINSPRING_POSTGRES_DSN"] or None
    dev = running_dev()
    return str(dev["postgres_dsn"]) if dev else None


def load_object(spec: str) -> Any:
    """Import ``package.module:attribute`` (the app a worker or handler service serves)."""
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
