"""Shared plumbing of CLI commands: connections, error messages, exit codes.

Exit codes (DESIGN.md §11): 0 ok/completed, 10 invalid input, 20 runtime or
connection error, 30 run failed (or audit/replay found a problem), 40 waiting,
50 cancelled, 60 still running.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
import typer
from nats.aio.client import Client as NATS

from mainspring._config import Settings, nats_auth, resolve
from mainspring._logging import configure_logging
from mainspring._shutdown import until_signalled
from schemas import ConfigError, ConnectionFailed, MainspringError, RunNotFound, RunState, redact
from streams import (
    EffectKeys,
    Journal,
    Keyring,
    Subjects,
    check_shards,
    connect,
    deployed_shards,
)

EXIT_OK, EXIT_INVALID, EXIT_RUNTIME = 0, 10, 20
EXIT_FAILED, EXIT_WAITING, EXIT_CANCELLED, EXIT_RUNNING = 30, 40, 50, 60
STATUS_EXIT: dict[str, int] = {
    RunState.COMPLETED: EXIT_OK,
    RunState.FAILED: EXIT_FAILED,
    RunState.WAITING: EXIT_WAITING,
    RunState.CANCELLED: EXIT_CANCELLED,
    RunState.PARKED: EXIT_FAILED,
    RunState.RUNNING: EXIT_RUNNING,
}

# The shared options of connecting commands: _cli_options (this one is validate's too).
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON envelope")]


@dataclass
class Env:
    """What a command gets: connections made from flags and environment."""

    nc: NATS
    subjects: Subjects
    pool: Any = None  # asyncpg.Pool when the command needs Postgres
    settings: Settings | None = None

    def signer(self) -> Any:
        """The checkpoint signer (--signing-key, MAINSPRING_SIGNING_KEY or the dev
        instance's key); None when no key is configured."""
        from projections import Signer

        key = self.settings.signing_key.value if self.settings else None
        return Signer.load(key) if key else None

    def keys(self) -> Keyring | None:
        """The deployment's keys (--keys, MAINSPRING_KEYS or the dev instance's); None
        when none are configured: nothing is tagged or checked."""
        path = self.settings["keys"].value if self.settings else None
        return Keyring.load(path) if path else None

    def effect_keys(self, kinds: list[str]) -> EffectKeys | None:
        """A handler's keys: its effect keys file, else those derived for ``kinds``
        from the deployment's keys (a host trusted with both); None: neither is set."""
        path = self.settings["effect_keys"].value if self.settings else None
        if path:
            return EffectKeys.load(path)
        keys = self.keys()
        return keys.effect_keys(kinds) if keys is not None else None

    def journal(self) -> Journal:
        """The run journals, read with the deployment's keys when it has them."""
        return Journal(self.nc, self.subjects, keys=self.keys())

    def verify_key(self) -> Any:
        """The checkpoint signer's public key (--public-key, MAINSPRING_VERIFY_KEY or the
        dev instance's key); None when none is configured."""
        from projections import load_public_key

        key = self.settings.verify_key.value if self.settings else None
        return load_public_key(key) if key else None


def exit_code_for(error: BaseException) -> int:
    """10 for what the user can fix in their input, 20 for everything else."""
    if isinstance(error, ConfigError | RunNotFound):
        return EXIT_INVALID
    return EXIT_RUNTIME


def report_errors(command: str, as_json: bool) -> Callable[[MainspringError, int], None]:
    """How a command reports an error: one line on stderr, or an envelope under --json."""

    def report(error: MainspringError, code: int) -> None:
        if not as_json:
            print(f"error: {error}", file=sys.stderr)
            return
        import msgspec

        from schemas import Envelope, ErrorInfo

        info = ErrorInfo(type=type(error).__name__, message=str(error))
        envelope = Envelope(ok=False, command=command, status="error", exit_code=code, error=info)
        print(msgspec.json.encode(envelope).decode())

    return report


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def print_settings(settings: Settings) -> None:
    """--verbose: where each setting came from, on stderr."""
    for line in settings.lines():
        print(f"config: {line}", file=sys.stderr)


SERVICE_QUERY_TIMEOUT_S = 30.0
"""how long a service's (the projector's) PostgreSQL query may take before it is given
up and retried"""


async def _layout(nc: NATS, prefix: str, partitions: int, shards: int | None) -> Subjects:
    """The deployment's subjects: its shards as it was created with (``shards`` given
    and different is refused, naming the number to give), or ``shards`` (1 if not
    given) for a deployment not created yet."""
    if shards is not None:
        subjects = Subjects(prefix, partitions, shards)
        await check_shards(nc, subjects)
        return subjects
    return Subjects(
        prefix, partitions, await deployed_shards(nc, Subjects(prefix, partitions)) or 1
    )


def run_command(
    body: Callable[[Env], Awaitable[int]],
    *,
    flags: Mapping[str, str | None],
    prefix: str,
    partitions: int,
    shards: int | None = None,
    postgres: Literal["needs", "wants"] | None = None,
    verbose: bool = False,
    log_level: str = "warning",
    on_error: Callable[[MainspringError, int], None] | None = None,
    service: bool = False,
) -> None:
    """Connect, run ``body``, exit with its code; errors become one readable line.

    ``flags`` are the settings' flags as given (``_config.resolve`` adds environment,
    dev instance and defaults). Postgres is connected only for commands that read it
    (``postgres="needs"``: refuse without a DSN; ``"wants"``: use it when configured).
    ``service=True`` (worker, handlers, projector): reconnect to NATS forever, log at
    info level, and stop cleanly on SIGINT or SIGTERM (exit 0). Commands call it through
    ``_cli_options.Connection.run``.
    """
    configure_logging("info" if service or verbose else log_level)
    settings = resolve(flags)
    if verbose:
        print_settings(settings)
    url = settings.nats_url.value or ""
    dsn = settings.postgres_dsn.value if postgres else None

    async def main() -> int:
        if postgres == "needs" and not dsn:
            raise ConfigError(
                "this command reads the Postgres projections: pass --postgres-dsn or set "
                "MAINSPRING_POSTGRES_DSN (and run `mainspring projector`); "
                "`mainspring config show` says what is configured"
            )
        nc = await connect(url, auth=nats_auth(settings), reconnect_forever=service)
        pool = None
        try:
            if dsn:
                import asyncpg

                try:
                    # a service's queries end within SERVICE_QUERY_TIMEOUT_S: over a cut
                    # link one would otherwise hang until TCP gives up (many minutes)
                    limit = SERVICE_QUERY_TIMEOUT_S if service else None
                    pool = await asyncpg.create_pool(
                        dsn, min_size=1, max_size=8, timeout=5, command_timeout=limit
                    )
                except (OSError, asyncpg.PostgresError) as e:
                    raise ConnectionFailed(
                        f"cannot reach PostgreSQL at {redact(dsn)} ({e}); check {_where(settings)}"
                    ) from None
            return await body(
                Env(nc, await _layout(nc, prefix, partitions, shards), pool, settings)
            )
        finally:
            with anyio.CancelScope(shield=True):
                if pool is not None:
                    await pool.close()
                await nc.close()

    async def serve() -> int:
        """Services stop on SIGINT and SIGTERM within seconds, busy or not (_shutdown)."""
        code = await until_signalled(main)
        return EXIT_OK if code is None else code

    try:
        code = anyio.run(serve if service else main, backend_options={"use_uvloop": has_uvloop()})
    except KeyboardInterrupt:
        code = EXIT_OK if service else 130
    except MainspringError as e:
        code = exit_code_for(e)
        if on_error is not None:
            on_error(e, code)
        else:
            print(f"error: {e}", file=sys.stderr)
    raise SystemExit(code)


def _where(settings: Settings) -> str:
    dsn = settings.postgres_dsn
    if dsn.source == "dev":
        return f"the dev instance at {dsn.origin} (is `mainspring dev` still up?)"
    return "MAINSPRING_POSTGRES_DSN / --postgres-dsn"


def ts(value: datetime | None) -> str:
    """A time as CLI tables show it (``-`` for none)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"
