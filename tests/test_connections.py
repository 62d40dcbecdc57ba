"""Every process connects to a NATS server that asks who it is: a token, a user and
password, an nkey, TLS with client certificates. The secrets given never show up in
any output, log or journal, and a refused login says so in one line."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import anyio
import nkeys  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import mainspring as ms
from mainspring import NatsServer
from servers._postgres import PostgresServer
from streams import NatsAuth, Subjects, connect
from tests.procs import Proc, acli, cli, spawn

pytestmark = pytest.mark.anyio
SUBJECTS = Subjects("sec", 4)


@pytest.fixture
def canary() -> str:
    """A secret no output may contain."""
    return f"canary{secrets.token_hex(8)}"


@contextlib.contextmanager
def _server(tmp_path: Path, config: str) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", extra_config=config).start()
    try:
        yield server
    finally:
        server.stop()


def _flags(server: NatsServer, *more: str) -> tuple[str, ...]:
    return ("--nats-url", server.url, "--prefix", SUBJECTS.prefix, "--partitions", "4", *more)


def _assert_nowhere(canary: str, *texts: str) -> None:
    for text in texts:
        assert canary not in text, text[-2000:]


async def _run_through(
    tmp_path: Path, server: NatsServer, auth: NatsAuth, env: dict[str, str]
) -> tuple[str, list[Proc]]:
    """A worker and a handler service (configured by ``env`` alone) and a client
    (``auth``) run a workflow of effects to its end; returns the run id and processes."""
    procs = [
        spawn(kind, app, server.url, SUBJECTS, tmp_path / f"{kind}.log", env=env)
        for kind, app in (("worker", "tests.apps:registry"), ("handlers", "tests.apps:handlers"))
    ]
    client = await ms.Client.connect(
        server.url, prefix=SUBJECTS.prefix, partitions=SUBJECTS.partitions, auth=auth
    )
    async with client:
        rid = await client.start("fanout", 3)
        assert await client.result(rid, timeout=60) == 6  # 0 + 2 + 4, by the handler
    for proc in procs:
        proc.stop()
    return rid, procs


async def test_token(tmp_path: Path, canary: str) -> None:
    """A token server: worker, handlers and client get in with MAINSPRING_NATS_TOKEN or
    --nats-token; without it a command says the server refused it. The token appears in
    no output, log or journal byte, not even in the URL form `nats://<token>@host`."""
    with _server(tmp_path, f'authorization {{ token: "{canary}" }}\n') as server:
        rid, procs = await _run_through(
            tmp_path, server, NatsAuth(token=canary), {"MAINSPRING_NATS_TOKEN": canary}
        )
        ok = await acli("status", rid, "--json", *_flags(server, "--nats-token", canary, "-v"))
        assert ok.returncode == 0, ok.stderr
        assert '"completed"' in ok.stdout
        in_url = server.url.replace("nats://", f"nats://{canary}@")
        via_url = await acli("status", rid, "--nats-url", in_url, "--prefix", "sec", "-v")
        assert via_url.returncode == 0, via_url.stderr
        refused = await acli("status", rid, "--json", *_flags(server))
        assert refused.returncode != 0
        assert "refused this connection" in refused.stdout + refused.stderr
        wrong = await acli("status", rid, *_flags(server, "--nats-token", canary + "x"))
        assert wrong.returncode != 0
        logs = [p.log.read_text() for p in procs]
        shown = [ok.stdout, ok.stderr, via_url.stdout, via_url.stderr]
        _assert_nowhere(canary, *logs, *shown, refused.stdout, refused.stderr, wrong.stderr)
        nc = await connect(server.url, auth=NatsAuth(token=canary))
        try:  # journal bytes, read back raw
            client = ms.Client(nc, SUBJECTS)
            _assert_nowhere(canary, *(e.data.decode() for e in await client.history(rid)))
        finally:
            await nc.close()


async def test_user_and_password(tmp_path: Path, canary: str) -> None:
    """--nats-user and --nats-password (or the same in the environment) log in; a wrong
    password is refused in one line that shows neither password."""
    config = f'authorization {{ users = [ {{ user: "ms", password: "{canary}" }} ] }}\n'
    with _server(tmp_path, config) as server:
        env = {"MAINSPRING_NATS_USER": "ms", "MAINSPRING_NATS_PASSWORD": canary}
        rid, procs = await _run_through(tmp_path, server, NatsAuth(user="ms", password=canary), env)
        flags = _flags(server, "--nats-user", "ms", "--nats-password")
        ok = await acli("status", rid, "--json", *flags, canary)
        assert ok.returncode == 0, ok.stderr
        shown = await acli("config", "show", "--nats-user", "ms", "--nats-password", canary)
        assert "nats_password = ***" in shown.stdout
        wrong = await acli("status", rid, *flags, f"{canary}-wrong")
        assert wrong.returncode != 0
        assert "refused this connection" in wrong.stdout + wrong.stderr
        logs = [p.log.read_text() for p in procs]
        _assert_nowhere(canary, *logs, ok.stdout, ok.stderr, shown.stdout, wrong.stderr)


async def test_nkey(tmp_path: Path) -> None:
    """An nkey user: the seed file is given (--nats-nkey / MAINSPRING_NATS_NKEY); its
    seed never shows. A seed file that is not there is a clear configuration error."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    with _server(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n') as server:
        env = {"MAINSPRING_NATS_NKEY": str(seed_file)}
        rid, procs = await _run_through(tmp_path, server, NatsAuth(nkey=str(seed_file)), env)
        ok = await acli("status", rid, *_flags(server, "--nats-nkey", str(seed_file)))
        assert ok.returncode == 0, ok.stderr
        missing = await acli("status", rid, *_flags(server, "--nats-nkey", "/nonexistent.nk"))
        assert missing.returncode != 0
        assert "nkey seed file /nonexistent.nk does not exist" in missing.stderr
        logs = [p.log.read_text() for p in procs]
        _assert_nowhere(seed.decode(), *logs, ok.stdout, ok.stderr, missing.stderr)


def _pki(where: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = dt.datetime.now(dt.UTC)

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, object]
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer[0])
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )

    def write(name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (where / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (where / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ca")])
    ca = (
        issue("test ca", ca_key, (ca_name, None))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for name, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, "127.0.0.1"),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = issue(name, key, (ca_name, None)).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(san))]),
                critical=False,
            )
        write(name, key, builder.sign(ca_key, hashes.SHA256()))
    return {n: where / n for n in ("ca", "server", "client")}


async def test_tls_with_client_certificates(tmp_path: Path) -> None:
    """A server that requires TLS and verifies clients: processes connect with
    --nats-tls-ca/-cert/-key (or the environment); without a client certificate, or
    trusting another CA, they are refused with an error that says so."""
    pki = _pki(tmp_path)
    config = (
        f'tls {{\n  cert_file: "{pki["server"]}.pem"\n  key_file: "{pki["server"]}.key"\n'
        f'  ca_file: "{pki["ca"]}.pem"\n  verify: true\n}}\n'
    )
    with _server(tmp_path, config) as server:
        files = {"tls_ca": f"{pki['ca']}.pem", "tls_cert": f"{pki['client']}.pem"}
        files["tls_key"] = f"{pki['client']}.key"
        env = {f"MAINSPRING_NATS_{k.upper()}": v for k, v in files.items()}
        rid, _ = await _run_through(tmp_path, server, NatsAuth(**files), env)
        client_cert = ("--nats-tls-cert", files["tls_cert"], "--nats-tls-key", files["tls_key"])
        flags = _flags(server, "--nats-tls-ca", files["tls_ca"])
        ok = await acli("status", rid, *flags, *client_cert)
        assert ok.returncode == 0, ok.stderr
        no_cert = await acli("status", rid, *flags)
        assert no_cert.returncode != 0
        assert "NATS" in no_cert.stderr
        (tmp_path / "other").mkdir()
        other_ca = _pki(tmp_path / "other")
        untrusted = await acli(
            "status", rid, *_flags(server, "--nats-tls-ca", f"{other_ca['ca']}.pem"), *client_cert
        )
        assert untrusted.returncode != 0
        assert "certificate" in untrusted.stderr.lower()


async def test_library_client_refused_login_is_one_clear_error(tmp_path: Path) -> None:
    """Client.connect without the token the server wants: ConnectionFailed naming the
    refusal and the flags that give credentials, not a driver traceback."""
    config = 'authorization { token: "s3cr3t-t0ken" }\n'
    with (
        _server(tmp_path, config) as server,
        anyio.fail_after(30),
        pytest.raises(ms.ConnectionFailed, match="refused"),
    ):
        await ms.Client.connect(server.url)


def test_every_command_offers_the_ways_to_log_in() -> None:
    """The --help of a command lists every NATS credential and TLS flag."""
    out = cli("status", "--help", env={"COLUMNS": "200"}).stdout
    for flag in (
        "--nats-creds",
        "--nats-nkey",
        "--nats-token",
        "--nats-user",
        "--nats-password",
        "--nats-tls-ca",
        "--nats-tls-cert",
        "--nats-tls-key",
        "--nats-tls-server-name",
    ):
        assert flag in out, flag


SYSTEM_PG = Path("/usr/lib/postgresql/15/bin")


async def test_postgres_over_verified_tls(tmp_path: Path, nats_server: NatsServer) -> None:
    """A PostgreSQL that speaks TLS: a DSN with sslmode=verify-full and the CA reaches
    it over TLS (the server logs each connection's SSL); trusting another CA, the
    command ends with one line about the certificate, not a traceback."""
    if not (SYSTEM_PG / "postgres").exists():
        pytest.skip(f"needs a PostgreSQL built with SSL in {SYSTEM_PG} (Debian's postgresql)")
    pki = _pki(tmp_path)
    pg = PostgresServer(tmp_path / "pg", bin_dir=SYSTEM_PG)  # the embedded one has no SSL
    pg.init()
    for suffix in ("pem", "key"):  # postgres reads its key only if it alone may
        shutil.copy(f"{pki['server']}.{suffix}", pg.data_dir / f"server.{suffix}")
        pg.own(pg.data_dir / f"server.{suffix}")
    pg.settings = {
        "ssl": "on",
        "ssl_cert_file": str(pg.data_dir / "server.pem"),
        "ssl_key_file": str(pg.data_dir / "server.key"),
        "log_connections": "on",
    }
    pg.start()
    try:
        base = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres?sslmode=verify-full"
        conn = ("--nats-url", nats_server.url, "--prefix", "pgtls", "--partitions", "2")
        ok = await acli(
            "projections", "rebuild", "--yes", *conn,
            "--postgres-dsn", f"{base}&sslrootcert={pki['ca']}.pem",
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        log = (pg.data_dir / "server.log").read_text(errors="replace")
        assert "SSL enabled" in log
        (tmp_path / "other").mkdir()
        other = _pki(tmp_path / "other")
        refused = await acli(
            "projections", "rebuild", "--yes", *conn,
            "--postgres-dsn", f"{base}&sslrootcert={other['ca']}.pem",
        )  # fmt: skip
        assert refused.returncode == 20, refused.stdout + refused.stderr
        assert "certificate" in refused.stderr.lower()
        assert "Traceback" not in refused.stderr
    finally:
        pg.destroy()


async def test_a_server_that_stops_answering_is_left_within_seconds(tmp_path: Path) -> None:
    """A frozen server (SIGSTOP: its TCP connections stay open, as over a cut link) is
    noticed by the connection's pings within seconds, not nats-py's default minutes,
    so a client moves to another cluster node; the time is printed."""
    import signal
    import time

    server = NatsServer(tmp_path / "frozen")
    await server.start_async()
    left = anyio.Event()

    async def disconnected() -> None:
        left.set()

    nc = await connect(server.url, disconnected_cb=disconnected)
    pid = server.pid
    assert pid is not None
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        with anyio.fail_after(30):
            await left.wait()
        print(f"frozen server left after {time.monotonic() - t0:.1f} s")
    finally:
        os.kill(pid, signal.SIGCONT)
        with anyio.move_on_after(5):
            await nc.close()
        server.stop()
