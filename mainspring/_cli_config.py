"""``mainspring config show``: the settings a command would use, and where each came from."""

from __future__ import annotations

from typing import Annotated

import typer

from mainspring._cli_runner import EXIT_OK, JsonOpt, NatsOpt, PgOpt

config_app = typer.Typer(
    help="Show the configuration commands use (flags, environment, a running dev).",
    no_args_is_help=True,
)


@config_app.command("show")
def config_show(
    as_json: JsonOpt = False,
    nats_url: NatsOpt = None,
    postgres_dsn: PgOpt = None,
    signing_key: Annotated[
        str | None,
        typer.Option(
            help="checkpoint signing key (PEM) [env: MAINSPRING_SIGNING_KEY]", show_default=False
        ),
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            help="checkpoint verify key (PEM) [env: MAINSPRING_VERIFY_KEY]", show_default=False
        ),
    ] = None,
) -> None:
    """Print each setting with its source: flag, environment, a running `mainspring dev`
    (and which file), or the default. Pass the same flags as the command you are checking."""
    from mainspring._cli_runs import emit
    from mainspring._config import resolve
    from schemas import Envelope

    settings = resolve(
        nats_url=nats_url,
        postgres_dsn=postgres_dsn,
        signing_key=signing_key,
        verify_key=public_key,
    )
    if as_json:
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
