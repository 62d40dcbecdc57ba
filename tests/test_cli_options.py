"""The shared options of connecting commands, declared once (mainspring/_cli_options.py):
every command that connects takes each of them after its subcommand, and their values
reach its connection. A new setting in `_config.SETTINGS` is checked here on every
command of its scope without touching this file."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from mainspring._cli import app
from mainspring._cli_options import Connection
from mainspring._config import SETTINGS, Scope, resolve

# Each command that connects: the arguments it needs besides the shared options, and
# the scopes of settings it takes beyond NATS.
CONNECTING: dict[str, tuple[list[str], set[Scope]]] = {
    "worker": (["--app", "tests.apps:registry"], set()),
    "handlers": (["--app", "handlers:builtin_handlers"], {"effects"}),
    "projector": ([], {"postgres", "signing"}),
    "runs": ([], {"postgres"}),
    "status": (["r-1"], {"postgres"}),
    "inspect": (["r-1"], {"postgres"}),
    "logs": (["r-1"], {"postgres"}),
    "replay": (["r-1"], set()),
    "start": (["agent"], set()),
    "run": (["examples/flows/tag_release.yaml"], set()),
    "resume": (["r-1", "approval"], set()),
    "cancel": (["r-1"], set()),
    "dead-letters": ([], set()),
    "audit verify": (["--all"], {"postgres", "verifying"}),
    "audit export": (["r-1"], {"postgres"}),
    "projections status": ([], {"postgres"}),
    "projections rebuild": (["--yes"], {"postgres", "signing"}),
    "keys new": ([], set()),
    "keys revoke": (["k1"], set()),
    "setup": ([], set()),
    "erase": (["r-1", "--reason", "test", "--yes"], {"postgres"}),
    "backup": (["/nonexistent/backup"], set()),
    "restore": (["/nonexistent/backup"], set()),
}
OFFLINE = {
    "dev",
    "validate",
    "audit keygen",
    "config show",
    "keys show",
    "keys add",
    "keys use",
    "keys handler",
    "roles write",
    "tenants add",
    "tenants list",
}


def _commands(group: Any, path: str = "") -> dict[str, Any]:
    """Every leaf command of the CLI by its path (`audit verify`)."""
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        full = f"{path} {name}".strip()
        if hasattr(command, "commands"):
            found |= _commands(command, full)
        else:
            found[full] = command
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_command_is_known_as_connecting_or_not() -> None:
    """A new command must say here whether it connects (and so takes the shared options)."""
    assert set(COMMANDS) == set(CONNECTING) | OFFLINE


@pytest.mark.parametrize("path", sorted(CONNECTING))
def test_shared_options_after_the_subcommand_reach_the_connection(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mainspring <command> ... --nats-url U --prefix P ...`: every shared option of the
    command's scopes is accepted after it and ends up in its Connection and settings."""
    args, scopes = CONNECTING[path]
    specs = [spec for spec in SETTINGS if spec.scope in {"nats", *scopes}]
    values = {spec.name: f"{spec.name}-given" for spec in specs}
    values["nats_url"] = "nats://10.1.2.3:4222"
    takes_json = any("--json" in p.opts for p in COMMANDS[path].params)
    shared = [
        *(arg for spec in specs for arg in (spec.flag, values[spec.name])),
        *("--prefix", "px", "--partitions", "3", "--verbose"),
        *(["--json"] if takes_json else []),
    ]
    seen: list[Connection] = []

    def run(self: Connection, body: object, **how: object) -> None:
        seen.append(self)

    monkeypatch.setattr(Connection, "run", run)
    result = CliRunner().invoke(app, [*path.split(), *args, *shared])
    assert result.exit_code == 0, (result.output, result.exception)
    (conn,) = seen
    assert (conn.command, conn.prefix, conn.partitions, conn.verbose, conn.json) == (
        path,
        "px",
        3,
        True,
        takes_json,
    )
    assert set(conn.flags) == set(values)
    settings = resolve(conn.flags, environ={}, devs=[])
    for spec in specs:
        setting = settings[spec.name]
        assert (setting.value, setting.source, setting.origin) == (
            values[spec.name],
            "flag",
            spec.flag,
        )


@pytest.mark.parametrize("path", sorted(CONNECTING))
def test_help_lists_each_shared_option_with_its_variable(path: str) -> None:
    """`--help` of each connecting command names every shared option of its scopes, and
    each setting's environment variable."""
    _, scopes = CONNECTING[path]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0, result.output
    for spec in SETTINGS:
        assert (spec.flag in result.output) == (spec.scope in {"nats", *scopes}), spec.flag
        if spec.scope in {"nats", *scopes}:
            assert f"[env: {spec.var}]" in result.output
    for flag in ("--prefix", "--partitions", "--verbose"):
        assert flag in result.output


def test_config_show_takes_every_setting() -> None:
    """`config show` takes each setting's flag, so it can show what any command would use."""
    options = {opt for p in COMMANDS["config show"].params for opt in p.opts}
    assert {spec.flag for spec in SETTINGS} <= options
