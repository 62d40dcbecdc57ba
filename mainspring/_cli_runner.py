"""Shared plumbing of CLI commands: connections, error messages, exit codes.

Exit codes (DESIGN.md §11): 0 ok/completed, 10 invalid input, 20 runtime or
connection error, 30 run failed (or audit/replay found a problem), 40 waiting,
50 cancelled.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import typer
from nats.aio.client import Client as NATS

from mainspring._config import nats_url, postgres_dsn
from mainspring._logging import configure_logging
from schemas import ConfigError, ConnectionFailed, MainspringError, RunNotFound
from streams import Subjects, connect

EXIT_OK, EXIT_INVALID, EXIT_RUNTIME = 0, 10, 20
EXIT_FAILED, EXIT_WAITING, EXIT_CANCELLED = 30, 40, 50
STATUS_EXIT = {
    "completed": EXIT_OK,
    "failed": EXIT_FAILED,
    "waiting": EXIT_WAITING,
    "cancelled": EXIT_CANCELLED,
    "parked": EXIT_FAILED,
}

# Options every command that talks to a deployment shares.
NatsOpt = Annotated[
    str | None,
    typer.Option(
        "--nats-url", help="NATS server URL [env: MAINSPRING_NATS_URL]", show_default=False
    ),
]
PgOpt = Annotated[
    str | None,
    typer.Option(
        "--postgres-dsn", help="PostgreSQL DSN [env: MAINSPRING_POSTGRES_DSN]", show_default=False
    ),
]
PrefixOpt = Annotated[str, typer.Option("--prefix", help="subject prefix of the deployment")]
PartitionsOpt = Annotated[
    int, typer.Option("--partitions", help="inbox partitions (fixed per deployment)")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON envelope")]


@dataclass
class Env:
    """What a command gets: connections made from flags and environment."""

    nc: NATS
    subjects: Subjects
    pool: Any = None  # asyncpg.Pool when the command needs Postgres


def signer_from(path: str | None) -> Any:
    """The checkpoint signer from --signing-key or MAINSPRING_SIGNING_KEY (None if unset)."""
    import os

    from projections import Signer

    key = path or os.environ.get("MAINSPRING_SIGNING_KEY")
    return Signer.load(key) if key else None


def exit_code_for(error: BaseException) -> int:
    """10 for what the user can fix in their input, 20 for everything else."""
    if isinstance(error, ConfigError | RunNotFound):
        return EXIT_INVALID
    return EXIT_RUNTIME


def has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def run_command(
    body: Callable[[Env], Awaitable[int]],
    *,
    nats_flag: str | None,
    prefix: str,
    partitions: int,
    postgres: str | None = None,
    needs_postgres: bool = False,
    log_level: str = "warning",
    on_error: Callable[[MainspringError, int], None] | None = None,
    service: bool = False,
) -> None:
    """Connect, run ``body``, exit with its code; errors become one readable line.

    ``service=True`` (worker, handlers, projector): reconnect to NATS forever, log at
    info level, and treat Ctrl-C as a clean stop (exit 0).
    """
    configure_logging("info" if service else log_level)
    url = nats_url(nats_flag)
    dsn = postgres_dsn(postgres)

    async def main() -> int:
        if needs_postgres and not dsn:
            raise ConfigError(
                "this command reads the Postgres projections: pass --postgres-dsn or set "
                "MAINSPRING_POSTGRES_DSN (and run `mainspring projector`)"
            )
        nc = await connect(url, reconnect_forever=service)
        pool = None
        try:
            if dsn:
                import asyncpg

                try:
                    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8, timeout=5)
                except (OSError, asyncpg.PostgresError) as e:
                    raise ConnectionFailed(
                        f"cannot reach PostgreSQL at {_redact(dsn)} ({e}); check "
                        "MAINSPRING_POSTGRES_DSN / --postgres-dsn"
                    ) from None
            return await body(Env(nc, Subjects(prefix, partitions), pool))
        finally:
            with anyio.CancelScope(shield=True):
                if pool is not None:
                    await pool.close()
                await nc.close()

    try:
        code = anyio.run(main, backend_options={"use_uvloop": has_uvloop()})
    except KeyboardInterrupt:
        code = EXIT_OK if service else 130
    except MainspringError as e:
        code = exit_code_for(e)
        if on_error is not None:
            on_error(e, code)
        else:
            print(f"error: {e}", file=sys.stderr)
    raise SystemExit(code)


def _redact(dsn: str) -> str:
    if "@" not in dsn or ":" not in dsn.split("@")[0]:
        return dsn
    scheme_user, rest = dsn.split("@", 1)
    return scheme_user.rsplit(":", 1)[0] + ":***@" + rest
