"""The ``mainspring`` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import anyio
import typer

from mainspring import _cli_ops, _cli_runs
from mainspring._cli_config import config_app
from mainspring._cli_deadletters import dead_letters
from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_OK, Env, has_uvloop
from schemas import ConfigError, MainspringError

CLI_ALLOW = typer.Option(
    "--cli-allow",
    envvar="MAINSPRING_CLI_ALLOW",
    help="turn the built-in cli handler on, for these programs only (comma-separated "
    "names on PATH or paths; '*' for any command, shell syntax included: trusted "
    "workflows only). See docs/security.md",
    show_default=False,
)

app = typer.Typer(
    name="mainspring",
    help="Mainspring: durable workflows on NATS JetStream.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
@connecting(json=False)
def worker(
    app_spec: Annotated[
        str,
        typer.Option(
            "--app",
            help="workflows to serve: 'module:registry' (or a function returning one, "
            "e.g. 'flows:flow_registry')",
        ),
    ],
    concurrency: Annotated[int, typer.Option(help="activations processed at once")] = 1000,
    lease_ttl: Annotated[
        float, typer.Option(help="seconds before a silent worker's partitions move")
    ] = 10.0,
    forced_replay: Annotated[
        bool, typer.Option(help="replay every run after each step (finds nondeterminism)")
    ] = False,
    *,
    conn: Connection,
) -> None:
    """Run workflows of a registry until interrupted (Ctrl-C stops cleanly)."""
    from actors import Registry, Worker, WorkerOptions
    from mainspring._config import load_app

    registry = load_app(app_spec, Registry)
    options = WorkerOptions(
        concurrency=concurrency, lease_ttl_s=lease_ttl, forced_replay=forced_replay
    )

    async def body(env: Env) -> int:
        keys = env.keys()
        await Worker(env.nc, registry, subjects=env.subjects, options=options, keys=keys).run()
        return EXIT_OK

    conn.run(body, service=True)


@app.command()
def dev(
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="your workflows: 'module:registry' (declarative specs always run)",
            show_default=False,
        ),
    ] = None,
    handlers_spec: Annotated[
        str | None,
        typer.Option(
            "--handlers",
            help="your effect handlers: 'module:handlers' (the built-in http and llm.chat "
            "always run, cli with --cli-allow)",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path, typer.Option(help="where NATS and PostgreSQL keep their data")
    ] = Path(".mainspring"),
    nats_port: Annotated[int, typer.Option(help="NATS port (a free one if taken)")] = 4222,
    cli_allow: Annotated[str | None, CLI_ALLOW] = None,
) -> None:
    """Run everything locally: embedded NATS and PostgreSQL, a worker, handlers, the projector.

    Data persists in --data-dir between runs. Other mainspring commands started in
    this folder find it without any configuration. Ctrl-C stops everything.
    """
    from actors import Registry
    from flows import flow_registry
    from handlers import Handlers
    from mainspring._config import load_app
    from mainspring._dev import run_dev
    from mainspring._logging import configure_logging

    registry = flow_registry(load_app(app_spec, Registry) if app_spec else None)
    extra = load_app(handlers_spec, Handlers) if handlers_spec else None
    configure_logging("warning")
    try:
        anyio.run(
            lambda: run_dev(data_dir, registry, extra, nats_port=nats_port, cli_allow=cli_allow),
            backend_options={"use_uvloop": has_uvloop()},
        )
    except KeyboardInterrupt:
        pass
    except MainspringError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(20) from None


@app.command()
@connecting(json=False, effects=True)
def handlers(
    app_spec: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="handlers to serve: 'module:handlers' (or a function returning them, "
            "e.g. 'handlers:builtin_handlers')",
            show_default=False,
        ),
    ] = None,
    cli_allow: Annotated[str | None, CLI_ALLOW] = None,
    *,
    conn: Connection,
) -> None:
    """Serve effect handlers of a registry until interrupted.

    With --effect-keys (or --keys) a request runs only if a worker of the deployment
    wrote it; without, anyone who can publish on NATS can have one run (see
    docs/security.md). The built-in cli handler runs only with --cli-allow: it runs a
    plain command (no shell syntax) of a program on that list, directly, without a shell."""
    from handlers import Handlers, HandlerService, builtin_handlers
    from mainspring._config import load_app

    if app_spec is None and cli_allow is None:
        raise ConfigError("name the handlers to serve: --app module:handlers, --cli-allow, or both")
    registry = load_app(app_spec, Handlers) if app_spec else Handlers()
    if cli_allow is not None:
        if "cli" in registry.kinds():
            raise ConfigError(f"--app {app_spec} serves a cli handler of its own: drop --cli-allow")
        registry.include(builtin_handlers(cli_allow=cli_allow).only(["cli"]))

    async def body(env: Env) -> int:
        keys = env.effect_keys(registry.kinds())
        await HandlerService(env.nc, registry, subjects=env.subjects, keys=keys).run()
        return EXIT_OK

    conn.run(body, service=True)


# The other commands live in their own modules; --help lists them in this order.
_cli_runs.register(app)
_cli_ops.register(app)
app.command("dead-letters")(dead_letters)
app.add_typer(config_app, name="config")


def main() -> None:
    try:
        app(standalone_mode=False)
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.TyperException as e:  # usage errors: invalid input
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(10) from None
    except MainspringError as e:
        from mainspring._cli_runner import exit_code_for

        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(exit_code_for(e)) from None
