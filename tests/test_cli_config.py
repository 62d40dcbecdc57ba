"""One configuration, the one asked for: flags and environment win over a running
`mainspring dev`, whose settings are used only as a whole and only when they match."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import anyio
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from mainspring._config import DevInstance, resolve
from projections import Projector, Signer
from servers import free_port
from streams import Subjects
from tests.apps import registry
from tests.harness import projected, running
from tests.procs import ROOT, cli

pytestmark = pytest.mark.anyio
DEV_NATS = "nats://127.0.0.1:4999"
DEV_DSN = "postgresql://dev:secret@127.0.0.1:5999/dev"


def _dev(tmp_path: Path, **info: object) -> DevInstance:
    data = tmp_path / ".mainspring"
    (data / "keys").mkdir(parents=True, exist_ok=True)
    Signer.generate().save(data / "keys" / "signing.pem", data / "keys" / "signing.pub.pem")
    fields = {
        "pid": os.getpid(),
        "nats_url": DEV_NATS,
        "postgres_dsn": DEV_DSN,
        "data_dir": str(data),
        "verify_key": str(data / "keys" / "signing.pub.pem"),
        **info,
    }
    (data / "dev.json").write_text(json.dumps(fields))
    return DevInstance(data / "dev.json", fields)


def test_flags_and_environment_win_over_a_dev_instance(tmp_path: Path) -> None:
    """Flag > environment > dev instance > default, each setting saying where it came from."""
    dev = _dev(tmp_path)
    found = resolve(environ={}, devs=[dev])
    assert (found.nats_url.value, found.nats_url.source) == (DEV_NATS, "dev")
    assert found.postgres_dsn.value == DEV_DSN
    assert found.verify_key.value == str(tmp_path / ".mainspring/keys/signing.pub.pem")
    assert found.signing_key.value == str(tmp_path / ".mainspring/keys/signing.pem")
    assert "dev instance at" in found.postgres_dsn.describe()
    assert "secret" not in found.postgres_dsn.describe()
    env = resolve(
        environ={"MAINSPRING_NATS_URL": DEV_NATS, "MAINSPRING_VERIFY_KEY": "k.pem"}, devs=[dev]
    )
    assert (env.nats_url.source, env.verify_key.value) == ("environment", "k.pem")
    flag = resolve(
        nats_url="nats://10.0.0.1:4222", environ={"MAINSPRING_NATS_URL": DEV_NATS}, devs=[]
    )
    assert (flag.nats_url.value, flag.nats_url.origin) == ("nats://10.0.0.1:4222", "--nats-url")
    none = resolve(environ={}, devs=[])
    assert (none.nats_url.source, none.postgres_dsn.value) == ("default", None)


def test_an_explicit_other_deployment_takes_nothing_from_the_dev(tmp_path: Path) -> None:
    """--nats-url (or MAINSPRING_NATS_URL) naming another server: no dev DSN, no dev keys."""
    dev = _dev(tmp_path)
    other = resolve(nats_url="nats://10.0.0.1:4222", environ={}, devs=[dev])
    assert other.dev is None
    assert other.postgres_dsn.value is None
    assert other.verify_key.value is None
    assert any("not used" in note for note in other.notes)
    via_env = resolve(environ={"MAINSPRING_NATS_URL": "nats://10.0.0.1:4222"}, devs=[dev])
    assert via_env.postgres_dsn.value is None
    other_db = resolve(postgres_dsn="postgresql://u@db/prod", environ={}, devs=[dev])
    assert other_db.nats_url.source == "default"
    same = resolve(nats_url="nats://localhost:4999/", environ={}, devs=[dev])
    assert (same.postgres_dsn.value, same.postgres_dsn.source) == (DEV_DSN, "dev")
    no_db = resolve(environ={"MAINSPRING_POSTGRES_DSN": ""}, devs=[dev])
    assert (no_db.nats_url.value, no_db.postgres_dsn.value) == (DEV_NATS, None)


def _env(home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAINSPRING_")}
    return {**clean, "HOME": str(home), "PYTHONPATH": str(ROOT)}


async def acli(
    *args: str, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """`cli` in a folder, off the event loop (in-process workers keep running)."""
    return await anyio.to_thread.run_sync(lambda: cli(*args, env=env, cwd=cwd))


def test_config_show_names_each_source(tmp_path: Path) -> None:
    """`config show` (and --json) says which setting came from a flag, the dev, a default."""
    _dev(tmp_path)
    env = _env(tmp_path)
    shown = cli("config", "show", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"nats_url = {DEV_NATS}  (dev instance at .mainspring/dev.json)" in shown.stdout
    assert "secret" not in shown.stdout
    out = cli(
        "config", "show", "--json", "--nats-url", "nats://10.0.0.1:4222", cwd=tmp_path, env=env
    )
    settings = json.loads(out.stdout)["details"]["settings"]
    assert settings["nats_url"] == {
        "value": "nats://10.0.0.1:4222",
        "source": "flag",
        "origin": "--nats-url",
    }
    assert settings["postgres_dsn"] == {"value": None, "source": "unset", "origin": None}
    assert json.loads(out.stdout)["details"]["dev_instance"] is None


async def test_audit_with_explicit_nats_ignores_the_dev_database(
    nc: NATS, nats_server: NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """A dev instance elsewhere: `audit verify --nats-url X` checks X's stream and never
    takes the dev's (here unreachable) database; --verbose says so."""
    async with running(nc, subjects, registry) as h:
        await h.client.result(await h.client.start("chain", 2, run_id="cfg1"), timeout=10)
    _dev(tmp_path, postgres_dsn=f"postgresql://dev:secret@127.0.0.1:{free_port()}/dev")
    args = ("--prefix", subjects.prefix, "--partitions", str(subjects.partitions))
    out = await acli(
        "audit",
        "verify",
        "cfg1",
        "--verbose",
        "--nats-url",
        nats_server.url,
        *args,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no Postgres DSN: only the stream was verified" in out.stdout
    assert "config: nats_url = " + nats_server.url + "  (flag --nats-url)" in out.stderr
    assert "not used" in out.stderr
    assert "secret" not in out.stdout + out.stderr


async def test_dev_keys_sign_and_verify(
    nc: NATS,
    nats_server: NatsServer,
    subjects: Subjects,
    pool: asyncpg.Pool,
    pg_dsn: str,
    tmp_path: Path,
) -> None:
    """Commands next to a dev instance check signatures with its verify key and re-sign
    with its signing key on rebuild; without a key, rebuild warns loudly."""
    other = Signer.generate()
    projector = Projector(nc, pool, subjects, signer=other)
    async with running(nc, subjects, registry, projector=projector) as h:
        await h.client.result(await h.client.start("chain", 2, run_id="key1"), timeout=10)
        await projected(projector, nc, subjects)
    _dev(tmp_path, nats_url=nats_server.url, postgres_dsn=pg_dsn)
    env = _env(tmp_path)
    args = ("--prefix", subjects.prefix, "--partitions", str(subjects.partitions))
    foreign = await acli("audit", "verify", "key1", *args, env=env, cwd=tmp_path)
    assert foreign.returncode == 30, foreign.stdout + foreign.stderr
    assert "bad-signature" in foreign.stdout
    rebuilt = await acli("projections", "rebuild", "--yes", *args, env=env, cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "re-signed 1 checkpoint(s)" in rebuilt.stdout
    intact = await acli("audit", "verify", "key1", *args, env=env, cwd=tmp_path)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "not verified" not in intact.stdout
    unsigned = await acli(
        "projections",
        "rebuild",
        "--yes",
        "--nats-url",
        nats_server.url,
        "--postgres-dsn",
        pg_dsn,
        *args,
        env={**env, "HOME": str(tmp_path / "elsewhere")},
    )
    assert unsigned.returncode == 0, unsigned.stderr
    assert "1 checkpoint(s) were signed" in unsigned.stderr
    assert "UNSIGNED" in unsigned.stderr


def test_a_dev_started_with_a_relative_data_dir_lends_its_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mainspring dev` records paths relative to the folder it ran in; found through that
    folder's .mainspring/dev.json, its keys resolve (through another file, they are not
    guessed)."""
    _dev(tmp_path, data_dir=".mainspring", verify_key=".mainspring/keys/signing.pub.pem")
    monkeypatch.chdir(tmp_path)
    here = resolve(environ={}, devs=[DevInstance(Path(".mainspring/dev.json"), _info())])
    assert here.verify_key.value is not None
    assert Path(here.verify_key.value).resolve() == tmp_path / ".mainspring/keys/signing.pub.pem"
    assert here.signing_key.value is not None
    pointer = DevInstance(tmp_path / "home" / ".mainspring-dev.json", _info())
    elsewhere = resolve(environ={}, devs=[pointer])
    assert elsewhere.nats_url.value == DEV_NATS
    assert elsewhere.verify_key.value is None


def _info() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "nats_url": DEV_NATS,
        "postgres_dsn": DEV_DSN,
        "data_dir": ".mainspring",
        "verify_key": ".mainspring/keys/signing.pub.pem",
    }
