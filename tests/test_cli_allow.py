"""The built-in cli handler is off unless given an allow-list, and then runs only plain
commands of the programs on it: nothing interpolated into a command line can turn it
into another command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from flows import flow_registry, load_spec, validate_spec
from handlers import builtin_handlers
from handlers._cli_allow import shell_syntax
from streams import Subjects
from tests.harness import running, wait_status
from tests.procs import cli

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent

registry = ms.Registry()


@registry.workflow(version="1")
async def run_cli(ctx: ms.Context, request: dict[str, Any]) -> Any:
    return await ctx.effect("cli", request, timeout=30)


@pytest.mark.parametrize(
    ("line", "syntax"),
    [
        ("echo hi", None),
        ("python3 -c \"import json,sys; print(json.dumps({'a': [1]}))\" v1", None),
        ("echo 'a;b|c$(d)`e`*'", None),
        (r"echo a\;b", None),
        ("echo hi; rm -rf x", "';'"),
        ("echo hi && rm x", "'&'"),
        ("echo $(rm x)", "'$'"),
        ('echo "$(rm x)"', "'$' inside double quotes"),
        ("echo `rm x`", "'`'"),
        ("cat < /etc/shadow", "'<'"),
        ("ls *", "'*'"),
        ("echo hi\nrm x", "'\\n'"),
        ("echo 'open", "an unclosed ' quote"),
        ("FOO=1 echo hi", "'FOO=1' at the start"),
        ("if true", "'if' at the start"),
        ("", "an empty command"),
    ],
)
def test_shell_syntax_is_recognised(line: str, syntax: str | None) -> None:
    """A line is a plain command only when a shell would take all of it as words."""
    assert shell_syntax(line) == syntax


async def _fails(nc: NATS, subjects: Subjects, allow: str, request: dict[str, Any]) -> str:
    async with running(nc, subjects, registry, builtin_handlers(cli_allow=allow)) as h:
        rid = await h.client.start("run_cli", request)
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(rid, timeout=20)
    assert err.value.error.type == "cli.refused", err.value
    return err.value.error.message


async def test_builtin_handlers_serve_cli_only_with_an_allow_list() -> None:
    """Off by default: `builtin_handlers()` has no cli kind; with a list it has."""
    assert "cli" not in builtin_handlers().kinds()
    assert "cli" in builtin_handlers(cli_allow="echo").kinds()
    with pytest.raises(ms.ConfigError, match="no program of that name"):
        builtin_handlers(cli_allow="echo,no-such-program-xyz")


async def test_allowed_plain_command_runs_without_a_shell(nc: NATS, subjects: Subjects) -> None:
    """An allowed program runs with its arguments as a shell would split them; a list of
    lines runs as `&&` would, stopping at the first that fails."""
    async with running(nc, subjects, registry, builtin_handlers(cli_allow="echo,false")) as h:
        ok = await h.client.start("run_cli", {"command": "echo 'a; b' \"c d\""})
        assert (await h.client.result(ok, timeout=20))["stdout"] == "a; b c d\n"
        chain = await h.client.start(
            "run_cli", {"command": ["echo one", "false", "echo never"], "exit_codes": [1]}
        )
        out = await h.client.result(chain, timeout=20)
    assert (out["exit_code"], out["stdout"]) == (1, "one\n")


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({"command": "touch {marker}"}, "program 'touch' is not on this cli handler's allow-list"),
        ({"command": "echo hi; touch {marker}"}, "uses shell syntax (';')"),
        ({"command": "echo $(touch {marker})"}, "uses shell syntax ('$')"),
        ({"command": ["echo hi", "touch {marker}"]}, "program 'touch'"),
        ({"command": "echo hi", "env": {"LD_PRELOAD": "{marker}"}}, "sets LD_PRELOAD"),
        ({"command": "echo hi", "env": {"PATH": "{marker}"}}, "sets PATH"),
        ({"command": "echo hi", "shell": "pwsh"}, "cli.shell"),
    ],
)
async def test_anything_else_is_refused_terminally(
    nc: NATS, subjects: Subjects, tmp_path: Path, request_: dict[str, Any], says: str
) -> None:
    """A program off the list, shell syntax, or a loader variable in the environment: the
    run fails with cli.refused (never retried) saying what was refused, and nothing ran."""
    marker = tmp_path / "pwned"
    request = {
        k: (
            [x.format(marker=marker) for x in v]
            if isinstance(v, list)
            else {n: x.format(marker=marker) for n, x in v.items()}
            if isinstance(v, dict)
            else v.format(marker=marker)
        )
        for k, v in request_.items()
    }
    if says == "cli.shell":  # an unknown or missing shell keeps its own error
        async with running(nc, subjects, registry, builtin_handlers(cli_allow="echo")) as h:
            rid = await h.client.start("run_cli", request)
            with pytest.raises(ms.RunFailedError) as err:
                await h.client.result(rid, timeout=20)
        assert err.value.error.type == "cli.shell"
        return
    message = await _fails(nc, subjects, "echo", request)
    assert says in message, message
    assert not marker.exists()


async def test_an_allowed_shell_allows_shell_syntax(
    nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """Allowing the shell itself is the explicit way to run shell syntax."""
    async with running(nc, subjects, registry, builtin_handlers(cli_allow="bash")) as h:
        rid = await h.client.start("run_cli", {"command": f"echo hi > {tmp_path}/out; echo ok"})
        assert (await h.client.result(rid, timeout=20))["stdout"] == "ok\n"
    assert (tmp_path / "out").read_text() == "hi\n"


async def test_interpolated_input_cannot_inject_a_command(
    nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """The example's `${inputs.tag}` lands in a command line: a tag with shell syntax in it
    ends the run with cli.refused under the README's allow-list; a plain tag runs."""
    spec = validate_spec(load_spec(ROOT / "examples" / "flows" / "tag_release.yaml")).document
    marker = tmp_path / "pwned"
    handlers = builtin_handlers(cli_allow="python3,echo")
    async with running(nc, subjects, flow_registry(), handlers) as h:
        plain = await h.client.start("flow", {"spec": spec, "inputs": {"repo": "r", "tag": "v1"}})
        evil = await h.client.start(
            "flow", {"spec": spec, "inputs": {"repo": "r", "tag": f"v1; touch {marker}"}}
        )
        await wait_status(h.client, plain, "waiting")
        with pytest.raises(ms.RunFailedError) as err:
            await h.client.result(evil, timeout=20)
    assert err.value.error.type == "cli.refused"
    assert not marker.exists()


def test_handlers_command_needs_something_to_serve() -> None:
    """`mainspring handlers` with neither --app nor --cli-allow says what to name; a
    program not on the handler's PATH is refused at start, not at the first request."""
    bare = cli("handlers", "--nats-url", "nats://127.0.0.1:1")
    assert bare.returncode == 10, bare.stderr
    assert "--app module:handlers, --cli-allow, or both" in bare.stderr
    missing = cli("handlers", "--cli-allow", "no-such-program-xyz", "--nats-url", "nats://x:1")
    assert missing.returncode == 10, missing.stderr
    assert "--cli-allow no-such-program-xyz: no program of that name" in missing.stderr
