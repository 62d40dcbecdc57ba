"""Secrets never appear in output: one redaction for URLs, DSNs and messages."""

from __future__ import annotations

import re

# ``scheme://user:password@host`` (also each URL of a comma-separated cluster list)
_URL_PASSWORD = re.compile(r"(//[^/:@,\s]*):[^@/,\s]*@")
# ``nats://<token>@host``: for NATS URLs a user part alone is a token
_NATS_TOKEN = re.compile(r"((?:nats|tls|ws|wss)://)[^/:@,\s]+@")
# ``password=...`` in a libpq keyword DSN or a URL's query (quoted or not)
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|[^\s&]+)")
_SECRETS: set[str] = set()
_MIN_SECRET = 4  # shorter values would mask ordinary words


def add_secret(value: str) -> None:
    """Redact ``value`` wherever it shows up from now on (a token, a password given
    on its own): ``redact`` replaces it, and so every log line and error message."""
    if len(value) >= _MIN_SECRET:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """``text`` with every URL password or NATS token, ``password=`` value and
    registered secret (``add_secret``) replaced by ``***``."""
    text = _KEYWORD_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1:***@", text))
    text = _NATS_TOKEN.sub(r"\1***@", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text
