"""Thin calls to the JetStream JSON API, with driver errors translated at the boundary.

We talk to ``$JS.API.*`` directly (instead of nats-py's JetStream context) where
we need fields nats-py does not model (message schedules, subject transforms,
batch direct get) or want to see exactly what the server echoes back.
"""

from __future__ import annotations

import re
import ssl
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats.errors
import structlog
from nats.aio.client import Client as NATS

from schemas import ConfigError, ConnectionFailed, MainspringError, add_secret, redact

log = structlog.get_logger()
CONNECT_WITHIN_S = 15.0
"""the first connection succeeds within this long or fails with what went wrong"""


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


def nkey_public(seed_file: Path) -> str:
    """The public key (U...) of the nkey seed kept in ``seed_file``."""
    import nkeys  # type: ignore[import-untyped]

    try:
        return str(nkeys.from_seed(bytearray(seed_file.read_bytes().strip())).public_key.decode())
    except (OSError, nkeys.ErrInvalidSeed, ValueError) as e:
        raise ConfigError(f"{seed_file} does not hold a NATS nkey seed (SU...): {e}") from None


def reply_prefix(public_key: str) -> str:
    """Where a user's replies come: ``_INBOX.<first 16 of its public key>``."""
    return f"_INBOX.{public_key[:16]}"


_DENIED: weakref.WeakKeyDictionary[NATS, set[str]] = weakref.WeakKeyDictionary()
"""subjects (lowercase, as the server reports them) each connection was refused"""
_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


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
        if subject.lower() in _DENIED.get(nc, ()):
            raise ConnectionFailed(
                f"NATS refused {subject} to these credentials (permissions violation): use "
                "the credentials of a role allowed to do this (`mainspring roles write` "
                "lists what each may), or widen the user's permissions"
            ) from e
        raise ConnectionFailed(f"JetStream API {subject} did not answer within {timeout}s") from e
    except nats.errors.ConnectionClosedError as e:
        raise ConnectionFailed("the NATS connection is closed") from e
    head = _resp_decoder.decode(msg.data)
    if head.error is not None:
        raise ApiError(subject, head.error.code, head.error.err_code, head.error.description)
    return msgspec.json.decode(msg.data)


@dataclass(frozen=True)
class NatsAuth:
    """How a process proves who it is to NATS, and how it checks the server: each of
    nats-server's client authentication methods, and TLS. Empty fields are not used;
    credentials in the URL (``nats://user:pass@host``, ``nats://token@host``) work too."""

    creds: str | None = None
    """a ``.creds`` file (user JWT and nkey seed; decentralized auth with accounts)"""
    nkey: str | None = None
    """a file holding an nkey seed (``SU...``)"""
    token: str | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    """CA certificates (PEM) the server's certificate must chain to"""
    tls_cert: str | None = None
    """this client's certificate (PEM), for servers that verify clients"""
    tls_key: str | None = None
    tls_server_name: str | None = None
    """the name to check the server's certificate against (default: the URL's host)"""

    def options(self) -> dict[str, Any]:
        """nats-py ``connect`` options. Secret values are registered with ``redact``."""
        for secret in (self.token, self.password):
            if secret:
                add_secret(secret)
        opts: dict[str, Any] = {}
        for path, what in ((self.creds, "credentials file"), (self.nkey, "nkey seed file")):
            if path and not Path(path).is_file():
                raise ConfigError(f"the NATS {what} {path} does not exist (or is not a file)")
        if self.creds:
            opts["user_credentials"] = self.creds
        if self.nkey:
            opts["nkeys_seed"] = self.nkey
            # replies to this user come under its own prefix: the roles' permissions
            # (streams/_roles.py) let each user subscribe to its own replies only
            opts["inbox_prefix"] = reply_prefix(nkey_public(Path(self.nkey)))
        if self.token:
            opts["token"] = self.token
        if self.user:
            opts["user"] = self.user
        if self.password:
            opts["password"] = self.password
        if self.tls_cert and not self.tls_key:
            raise ConfigError("a NATS TLS client certificate needs its key: give the key file too")
        if self.tls_ca or self.tls_cert:
            opts["tls"] = self._tls_context()
        if self.tls_server_name:
            opts["tls_hostname"] = self.tls_server_name
        return opts

    def _tls_context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert and self.tls_key:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot use the NATS TLS files: {e}") from None
        return ctx


PING_INTERVAL_S = 2
MAX_OUTSTANDING_PINGS = 3


async def connect(
    url: str, *, auth: NatsAuth | None = None, reconnect_forever: bool = False, **options: Any
) -> NATS:
    """Connect to NATS (``url`` may list a cluster's servers, comma-separated), with
    ``auth`` (credentials, TLS); an unreachable server or a refused login is a
    ``ConnectionFailed`` saying what to do."""
    connected = False
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        # nats-py's default prints a traceback per attempt; before the first connection
        # the ConnectionFailed below says it all, after it one line says what happened.
        level = log.warning if connected else log.debug
        text = redact(str(e)) or type(e).__name__
        denied = _VIOLATION.search(text)
        if denied:  # a request to that subject will time out: say why instead
            _DENIED.setdefault(nc, set()).add(denied.group(1))
        errors.append(text)
        level("nats_error", error=text)

    settings: dict[str, Any] = {"connect_timeout": 3, "reconnect_time_wait": 0.2}
    # A server that stops answering (a cut link, a frozen host) is given up after
    # PING_INTERVAL_S * (MAX_OUTSTANDING_PINGS + 1), and another cluster node tried:
    # nats-py's defaults (120 s * 2) would leave a worker deaf for minutes.
    settings["ping_interval"] = PING_INTERVAL_S
    settings["max_outstanding_pings"] = MAX_OUTSTANDING_PINGS
    settings["max_reconnect_attempts"] = -1 if reconnect_forever else 3
    settings["error_cb"] = on_error
    servers = [u.strip() for u in url.split(",") if u.strip()]  # a cluster: "nats://a,nats://b"
    if auth is not None:
        settings.update(auth.options())
    nc = NATS()
    try:
        # bounded: after a failed TLS handshake nats-py retries without end
        with anyio.fail_after(CONNECT_WITHIN_S):
            await nc.connect(servers, **{**settings, **options})
        connected = True
        return nc
    except Exception as e:  # nats-py raises several unrelated types here
        with anyio.CancelScope(shield=True):
            await nc.close()
        last = errors[-1] if errors else redact(str(e)) or type(e).__name__

        def first(*words: str) -> str | None:  # the attempt's errors come in any order
            return next((t for t in errors if any(w in t.lower() for w in words)), None)

        refused = first("authorization", "authentication")
        if refused is not None:
            raise ConnectionFailed(
                f"NATS at {redact(url)} refused this connection ({refused}): give the "
                "credentials this server expects (--nats-creds, --nats-nkey, --nats-token, "
                "--nats-user/--nats-password or the URL; `mainspring config show` says "
                "what is configured)"
            ) from None
        tls = first("ssl", "certificate", "tls")
        if tls is not None:
            raise ConnectionFailed(
                f"TLS with NATS at {redact(url)} failed ({tls}): check --nats-tls-ca (the "
                "CA the server's certificate chains to), --nats-tls-cert/--nats-tls-key "
                "(when the server verifies clients) and --nats-tls-server-name"
            ) from None
        raise ConnectionFailed(
            f"cannot reach NATS at {redact(url)} ({last}); start one with "
            "`mainspring dev`, or point MAINSPRING_NATS_URL / --nats-url at your server"
        ) from None


_STREAM_NOT_FOUND = 10059


async def stream_info(nc: NATS, name: str) -> dict[str, Any] | None:
    """The stream's info (``config``, ``state``), or None if there is no such stream."""
    try:
        info: dict[str, Any] = await api_request(nc, f"$JS.API.STREAM.INFO.{name}")
    except ApiError as e:
        if e.err_code != _STREAM_NOT_FOUND:
            raise
        return None
    return info


async def consumer_infos(nc: NATS, stream: str) -> list[dict[str, Any]]:
    """Every consumer of ``stream`` as the server describes it (its config, where it
    is, whether a reader is connected); none when there is no such stream."""
    found: list[dict[str, Any]] = []
    while True:
        try:
            page = await api_request(nc, f"$JS.API.CONSUMER.LIST.{stream}", {"offset": len(found)})
        except ApiError as e:
            if e.err_code == _STREAM_NOT_FOUND:
                return found
            raise
        infos = page.get("consumers") or []
        found += infos
        if not infos or len(found) >= int(page.get("total", 0)):
            return found


async def purge_subject(
    nc: NATS, stream: str, subjects_filter: str, *, missing_ok: bool = False
) -> int:
    """Remove every message of ``stream`` matching the filter; how many went.
    ``missing_ok``: no such stream counts as nothing to remove (else ``ApiError``)."""
    try:
        answer = await api_request(
            nc, f"$JS.API.STREAM.PURGE.{stream}", {"filter": subjects_filter}
        )
    except ApiError as e:
        if missing_ok and e.err_code == _STREAM_NOT_FOUND:
            return 0
        raise
    return int(answer.get("purged", 0))


async def stream_subjects(nc: NATS, stream: str, subjects_filter: str) -> dict[str, int]:
    """Messages per subject of ``stream`` matching the filter (the stream's subject
    index, read page by page)."""
    found: dict[str, int] = {}
    offset = 0
    while True:
        info = await api_request(
            nc,
            f"$JS.API.STREAM.INFO.{stream}",
            {"subjects_filter": subjects_filter, "offset": offset},
        )
        page: dict[str, int] = info.get("state", {}).get("subjects") or {}
        found.update(page)
        offset += len(page)
        if not page or offset >= int(info.get("total", 0)):
            return found
