"""The options every command that connects shares, declared once.

A command takes ``conn: Connection`` and is decorated with ``@connecting(...)``: the
decorator puts the shared options into the signature typer reads (so ``--help`` lists
them, in a "Connection" panel, and they are given after the subcommand like its own:
``mainspring status RUN --nats-url ...``) and calls the command with one ``Connection``
holding their values. ``conn.run(body)`` connects, runs the body and exits with its code;
an error becomes one line on stderr, or an envelope under ``--json``.

Where the shared options are declared:

- connection settings (``--nats-url``, ``--postgres-dsn``, the checkpoint keys):
  ``_config.SETTINGS``. Each goes to every command of its scope; a new entry there (NATS
  credentials, TLS) reaches each of them with its help, its variable, its place in
  ``mainspring config show`` and in ``--verbose``;
- ``--prefix``, ``--partitions``, ``--shards``, ``--verbose``: the fields of
  ``Connection`` annotated with a ``typer.Option``;
- ``--json``: here, on every command that prints envelopes (``json=``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, get_type_hints

import typer
from typer.core import HAS_RICH
from typer.models import OptionInfo

from mainspring._cli_runner import Env, report_errors, run_command
from mainspring._config import SETTINGS, Scope, SettingSpec

PANEL = "Connection"
"""The ``--help`` panel that lists where a command connects."""

Command = Callable[..., None]


@dataclass(frozen=True)
class Connection:
    """The shared options of one command, as given (``run`` resolves the settings)."""

    prefix: Annotated[
        str,
        typer.Option("--prefix", help="subject prefix of the deployment", rich_help_panel=PANEL),
    ] = "ms"
    partitions: Annotated[
        int,
        typer.Option(
            "--partitions", help="inbox partitions (fixed per deployment)", rich_help_panel=PANEL
        ),
    ] = 16
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            help="journal and inbox shards: fixed when the deployment is created (by "
            "`setup` or its first worker), read from the deployment when it exists "
            "[default: the deployment's, 1 for a new one]",
            show_default=False,
            rich_help_panel=PANEL,
        ),
    ] = None
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="say where each setting came from (on stderr), log more"
        ),
    ] = False
    json: bool = False
    """--json: print one envelope (errors too)"""
    flags: Mapping[str, str | None] = field(default_factory=dict)
    """the settings' flags as given, by setting name (``_config.resolve`` takes them)"""
    command: str = ""
    """the command as typed after ``mainspring`` (``audit verify``), for envelopes"""

    def run(
        self,
        body: Callable[[Env], Awaitable[int]],
        *,
        postgres: Literal["needs", "wants"] | None = None,
        service: bool = False,
    ) -> None:
        """Connect, run ``body``, exit with its code (see ``run_command``)."""
        run_command(
            body,
            flags=self.flags,
            prefix=self.prefix,
            partitions=self.partitions,
            shards=self.shards,
            postgres=postgres,
            verbose=self.verbose,
            on_error=report_errors(self.command, self.json),
            service=service,
        )


def _shared_fields() -> list[tuple[str, Any, Any]]:
    """``Connection``'s fields that are options: name, annotation (with its Option), default."""
    hints = get_type_hints(Connection, include_extras=True)
    return [
        (f.name, hints[f.name], f.default)
        for f in dataclasses.fields(Connection)
        if any(isinstance(m, OptionInfo) for m in getattr(hints[f.name], "__metadata__", ()))
    ]


def _help(text: str) -> str:
    """Help text shown as written (rich markup would swallow ``[env: ...]``)."""
    return text.replace("[", r"\[") if HAS_RICH else text


def _setting_option(spec: SettingSpec) -> Any:
    return Annotated[
        str | None,
        typer.Option(
            spec.flag, help=_help(spec.help_text), show_default=False, rich_help_panel=PANEL
        ),
    ]


_CONTEXT = "mainspring_context"


def _command_path(ctx: typer.Context) -> str:
    """``audit verify`` for ``mainspring audit verify ...``."""
    return ctx.command_path.removeprefix(ctx.find_root().command_path).strip()


def _with_options(
    scopes: set[Scope], json: bool | str, shared: bool
) -> Callable[[Command], Command]:
    specs = [spec for spec in SETTINGS if spec.scope in scopes]
    fields = _shared_fields() if shared else []
    added: list[inspect.Parameter] = []

    def option(name: str, annotation: Any, default: Any) -> None:
        kind = inspect.Parameter.KEYWORD_ONLY
        added.append(inspect.Parameter(name, kind, annotation=annotation, default=default))

    if json:
        text = "print one JSON envelope" if json is True else json
        option("json", Annotated[bool, typer.Option("--json", help=text)], False)
    for spec in specs:
        option(spec.name, _setting_option(spec), None)
    for name, annotation, default in fields:
        option(name, annotation, default)
    option(_CONTEXT, typer.Context, inspect.Parameter.empty)

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        found = [p.name for p in signature.parameters.values() if p.annotation is Connection]
        if len(found) != 1:
            raise TypeError(f"{command.__name__} takes no `conn: Connection` parameter")
        conn = found[0]
        own = [p for p in signature.parameters.values() if p.name != conn]
        clash = {p.name for p in own} & {p.name for p in added}
        if clash:
            raise TypeError(f"{command.__name__}: parameters {sorted(clash)} are shared options")

        @functools.wraps(command)
        def with_connection(**kwargs: Any) -> None:
            ctx = kwargs.pop(_CONTEXT)
            given = Connection(
                **{name: kwargs.pop(name) for name, _, _ in fields},
                json=bool(kwargs.pop("json")) if json else False,
                flags={spec.name: kwargs.pop(spec.name) for spec in specs},
                command=_command_path(ctx),
            )
            command(**kwargs, **{conn: given})

        # What typer reads: the signature, and the annotations of what it lists.
        parameters = [*own, *added]
        shown: Any = with_connection
        shown.__signature__ = signature.replace(parameters=parameters)
        shown.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_connection

    return decorate


def connecting(
    *,
    postgres: bool = False,
    signing: bool = False,
    verifying: bool = False,
    effects: bool = False,
    json: bool | str = True,
) -> Callable[[Command], Command]:
    """The shared options for a command that connects: NATS always (and ``--prefix``,
    ``--partitions``, ``--verbose``), ``--postgres-dsn`` when it reads PostgreSQL, the
    signing or verify key when it signs or verifies checkpoints, the effect keys when it
    serves effects; ``--json`` unless
    ``json=False`` (a string is its help)."""
    scopes: set[Scope] = {"nats"}
    if postgres:
        scopes.add("postgres")
    if signing:
        scopes.add("signing")
    if verifying:
        scopes.add("verifying")
    if effects:
        scopes.add("effects")
    return _with_options(scopes, json, shared=True)


def every_setting(*, json: bool | str = True) -> Callable[[Command], Command]:
    """Every setting's flag and ``--json``, no connection (``mainspring config show``)."""
    return _with_options({spec.scope for spec in SETTINGS}, json, shared=False)
