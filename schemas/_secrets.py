"""Secrets never appear in output: one redaction for URLs, DSNs and messages."""

from __future__ import annotations

import re

# ``scheme://user:password@host`` (also each URL of a comma-separated cluster list)
_URL_PASSWORD = re.compile(r"(//[^/:@,\s]*):[^@/,\s]*@")
# ``password=...`` in a libpq keyword DSN (quoted or not)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)")


def redact(text: str) -> str:
    """``text`` with every URL password and ``password=`` value replaced by ``***``."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))
