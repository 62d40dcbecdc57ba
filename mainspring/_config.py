"""Configuration from the environment (flags override): MAINSPRING_NATS_URL, ..."""

from __future__ import annotations

import importlib
import os
from typing import Any

from schemas import ConfigError

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def nats_url(flag: str | None = None) -> str:
    return flag or os.environ.get("MAINSPRING_NATS_URL", DEFAULT_NATS_URL)


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
