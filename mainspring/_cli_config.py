"""``mainspring config show``: the settings a command would use, and where each came from."""

from __future__ import annotations

import typer

from mainspring._cli_options import Connection, every_setting
from mainspring._cli_runner import EXIT_OK

config_app = typer.Typer(
    help="Show the configuration commands use (flags, environment, a running dev).",
    no_args_is_help=True,
)


@config_app.command("show")
@every_setting()
def config_show(*, conn: Connection) -> None:
    """Print each setting with its source: flag, environment, a running `mainspring dev`
    (and which file), or the default. Pass the same flags as the command you are checking."""
    from mainspring._cli_runs import emit
    from mainspring._config import resolve
    from schemas import Envelope

    settings = resolve(conn.flags)
    if conn.json:
        raise SystemExit(
            emit(
                Envelope(
                    ok=True,
                    command="config show",
                    status="ok",
                    exit_code=EXIT_OK,
                    details=settings.as_dict(),
                ),
                True,
            )
        )
    for line in settings.lines():
        print(line)
    if settings.dev is None:
        print("dev instance: none used")
    else:
        print(f"dev instance: {settings.dev.path} (pid {settings.dev.pid})")
    raise SystemExit(EXIT_OK)
