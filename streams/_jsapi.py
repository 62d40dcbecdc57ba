"""Thin calls to the JetStream JSON API, with driver errors translated at the boundary.

We talk to ``$JS.API.*`` directly (instead of nats-py's JetStream context) where
we need fields nats-py does not model (message schedules, subject transforms,
batch direct get) or want to see exactly what the server echoes back.
"""

from __future__ import annotations

from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from schemas import ConnectionFailed, MainspringError, redact

log = structlog.get_logger()


class ApiError(MainspringError):
    """The JetStream API answered with an error."""

    def __init__(self, subject: str, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"JetStream API {subject}: {description} (code {code}/{err_code})")


class _ApiErr(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _ApiResp(msgspec.Struct):
    error: _ApiErr | None = None


_resp_decoder = msgspec.json.Decoder(_ApiResp)


async def api_request(nc: NATS, subject: str, body: Any = None, timeout: float = 5.0) -> Any:
    """Send one API request; return the decoded JSON answer or raise ``ApiError``."""
    payload = b"" if body is None else msgspec.json.encode(body)
    try:
        msg = await nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError as e:
        raise ConnectionFailed(
            "the NATS server does not answer JetStream requests: start nats-server with "
            "JetStream enabled (-js), e.g. `mainspring dev`"
        ) from e
    except nats.errors.TimeoutError as e:
        raise ConnectionFailed(f"JetStream API {subject} did not answer within {timeout}s") from e
    except nats.errors.ConnectionClosedError as e:
        raise ConnectionFailed("the NATS connection is closed") from e
    head = _resp_decoder.decode(msg.data)
    if head.error is not None:
        raise ApiError(subject, head.error.code, head.error.err_code, head.error.description)
    return msgspec.json.decode(msg.data)


async def connect(url: str, *, reconnect_forever: bool = False, **options: Any) -> NATS:
    """Connect to NATS (``url`` may list a cluster's servers, comma-separated); an
    unreachable server is a ``ConnectionFailed`` saying what to do."""
    import nats

    connected = False

    async def on_error(e: Exception) -> None:
        # nats-py's default prints a traceback per attempt; before the first connection
        # the ConnectionFailed below says it all, after it one line says what happened.
        level = log.warning if connected else log.debug
        level("nats_error", error=redact(str(e)) or type(e).__name__)

    settings: dict[str, Any] = {"connect_timeout": 3, "reconnect_time_wait": 0.2}
    settings["max_reconnect_attempts"] = -1 if reconnect_forever else 3
    settings["error_cb"] = on_error
    servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: "nats://a,nats://b"
    try:
        nc = await nats.connect(servers, **{**settings, **options})
        connected = True
        return nc
    except Exception as e:  # nats-py raises several unrelated types here
        raise ConnectionFailed(
            f"cannot reach NATS at {redact(url)} ({redact(str(e))}); start one with "
            "`mainspring dev`, or point MAINSPRING_NATS_URL / --nats-url at your server"
        ) from None
