"""Passwords never appear in output: redaction of URLs and DSNs, and what the CLI prints."""

from __future__ import annotations

import pytest

from schemas import redact
from servers import free_port
from tests.procs import cli


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nats://u:hunter2@h:4222", "nats://u:***@h:4222"),
        (
            "nats://a:hunter2@h1:4222,nats://b:hunter2@h2:4222",
            "nats://a:***@h1:4222,nats://b:***@h2:4222",
        ),
        ("postgresql://ms:hunter2@db:5432/ms", "postgresql://ms:***@db:5432/ms"),
        ("host=db user=ms password=hunter2 dbname=ms", "host=db user=ms password=*** dbname=ms"),
        ("host=db password='hunter 2' dbname=ms", "host=db password=*** dbname=ms"),
        ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),  # NATS: a user part alone is a token
        (
            "postgresql://db/ms?sslmode=require&password=hunter2",
            "postgresql://db/ms?sslmode=require&password=***",
        ),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ],
)
def test_redact_hides_every_password(text: str, shown: str) -> None:
    """URL passwords (each server of a cluster list), NATS URL tokens and libpq
    password= values become ***."""
    assert redact(text) == shown


def test_registered_secrets_are_redacted_everywhere() -> None:
    """A token or password given on its own (--nats-token, --nats-password) is masked
    wherever it appears once it is registered, as the CLI does when it reads it."""
    from schemas import add_secret

    add_secret("canary-7f3a9c")
    assert redact("login with canary-7f3a9c refused") == "login with *** refused"


@pytest.mark.parametrize(
    "command", [["status", "r1", "--json"], ["status", "r1"], ["config", "show"], ["runs"]]
)
def test_cli_output_never_shows_a_password(command: list[str]) -> None:
    """Commands given credentials in their URLs (servers unreachable, so errors are
    printed too) never print the password, with -v or without, and say what is wrong
    in a line, not in the NATS client's tracebacks."""
    port = free_port()  # nothing listens there
    out = cli(
        *command,
        "--nats-url",
        f"nats://u:hunter2@127.0.0.1:{port}",
        "--postgres-dsn",
        f"postgresql://u:hunter2@127.0.0.1:{port}/db",
        "-v",
    )
    assert "hunter2" not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert out.returncode != 0 or command[0] == "config"
