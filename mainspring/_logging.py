"""structlog set-up, done once by entry points (never at import time)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from schemas import redact


def _redacted(_logger: object, _name: str, rendered: Any) -> Any:
    """The rendered line (the renderer's string) with URL credentials, ``password=``
    values and registered secrets (tokens, passwords: ``schemas.add_secret``) replaced
    by ``***``."""
    return redact(rendered) if isinstance(rendered, str) else rendered


def configure_logging(level: str = "info", *, json: bool | None = None) -> None:
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
            _redacted,  # last: whatever a line holds, no secret leaves in it
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
