"""``mainspring dev``: everything on one machine, in one foreground process.

Starts an embedded nats-server and PostgreSQL (data in ``.mainspring/``, kept
between runs), a worker, the built-in handlers (plus yours), and the projector;
shows one status line. While it runs, other ``mainspring`` commands find it through
``.mainspring/dev.json`` (and ``~/.mainspring-dev.json``) with no configuration.

Ctrl-C or SIGTERM stops everything within seconds, busy or not; a second signal (or
a stop that overruns its grace period) kills the servers and exits at once. The
servers also die with this process if it is killed outright (a parent-death signal
on Linux), so no nats-server or PostgreSQL is ever left behind.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import anyio
import asyncpg
import structlog
from nats.aio.client import Client as NATS

from actors import Registry, Worker
from handlers import Handlers, HandlerService, builtin_handlers
from mainspring._config import DEV_POINTER
from mainspring._shutdown import until_signalled
from projections import Projector, Signer
from servers import NatsServer, PostgresServer
from streams import (
    EffectMarkers,
    Journal,
    Keyring,
    Leases,
    NatsAuth,
    Subjects,
    connect,
    ensure_topology,
    write_roles,
)

KEYS_FILE = "deployment.keys"

log = structlog.get_logger()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _signer(keys: Path) -> Signer:
    private = keys / "signing.pem"
    if not private.exists():
        keys.mkdir(parents=True, exist_ok=True)
        Signer.generate().save(private, keys / "signing.pub.pem")
    return Signer.load(private)


async def _keyring(path: Path, journal: Journal) -> Keyring:
    """The dev deployment's keys, made on its first start. A data dir from before dev
    had keys keeps its journals readable: what they hold so far is legacy."""
    if path.exists():  # noqa: ASYNC240 - a small local file, once at start
        return Keyring.load(path)
    keys = Keyring.generate(legacy_until=await journal.last_seqs())
    keys.save(path)
    return keys


def _cli_note(handlers: Handlers) -> str:
    if "cli" in handlers.kinds():
        return ""
    return " (cli is off: `mainspring dev --cli-allow PROGRAM,...` turns it on)"


async def run_dev(
    data_dir: Path,
    registry: Registry,
    handlers: Handlers | None,
    *,
    prefix: str = "ms",
    partitions: int = 16,
    nats_port: int = 4222,
    status_every: float = 2.0,
    grace_s: float = 10.0,
    cli_allow: str | None = None,
) -> None:
    """Run until SIGINT or SIGTERM (or cancelled); ``data_dir`` must exist. The ``cli``
    handler runs only with ``cli_allow`` (its allow-list)."""
    all_handlers = builtin_handlers(cli_allow=cli_allow)
    if handlers is not None:
        all_handlers.include(handlers)
    # NATS runs with the roles (docs/security.md): each part of dev connects as its own
    # role; other commands in this folder get the operator's seed through dev.json
    roles = data_dir / "roles"
    write_roles(roles, Subjects(prefix, partitions), all_handlers.kinds())
    nats_server = NatsServer(
        data_dir / "nats",
        port=nats_port if _port_free(nats_port) else None,
        extra_config=(roles / "nats-auth.conf").read_text(),
    )
    pg = PostgresServer(data_dir / "postgres")

    def kill_servers() -> None:  # the clean stop is stuck: do not leave servers behind
        pg.kill()
        nats_server.kill()

    serve = _Dev(
        data_dir, registry, all_handlers, nats_server, roles, pg, prefix, partitions, status_every
    )
    await until_signalled(serve.run, grace_s=grace_s, on_force=kill_servers)


class _Dev:
    def __init__(
        self,
        data_dir: Path,
        registry: Registry,
        handlers: Handlers,
        nats_server: NatsServer,
        roles: Path,
        pg: PostgresServer,
        prefix: str,
        partitions: int,
        status_every: float,
    ) -> None:
        self.data_dir = data_dir
        self.registry = registry
        self.handlers = handlers
        self.nats_server = nats_server
        self.roles = roles
        """each role's nkey seed (dev.json lends the operator's to other commands)"""
        self.pg = pg
        self.prefix = prefix
        self.partitions = partitions
        self.status_every = status_every
        self.info_files = [data_dir / "dev.json", DEV_POINTER]

    async def run(self) -> None:
        try:
            await self.nats_server.start_async()
            await self.pg.start_async()
            self._write_info()
            await self._serve()
        finally:
            with anyio.CancelScope(shield=True):
                self._remove_info()
                await anyio.to_thread.run_sync(self._stop_servers)
            print("\nmainspring dev stopped; data kept in", self.data_dir, flush=True)

    def _write_info(self) -> None:
        info = {
            "pid": os.getpid(),
            "nats_url": self.nats_server.url,
            "nats_nkey": str((self.roles / "operator.nk").resolve()),
            "postgres_dsn": self.pg.dsn,
            "prefix": self.prefix,
            "partitions": self.partitions,
            "data_dir": str(self.data_dir),
            "verify_key": str(self.data_dir / "keys" / "signing.pub.pem"),
            "keys": str(self.data_dir / "keys" / KEYS_FILE),
            "nats_pid": self.nats_server.pid,
            "postgres_pid": self.pg.pid,
            "postgres_data_dir": str(self.pg.data_dir),
        }
        for path in self.info_files:  # where the seeds are: readable by this user only
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(json.dumps(info, indent=2))

    def _remove_info(self) -> None:
        for path in self.info_files:
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass

    def _stop_servers(self) -> None:
        self.pg.stop(timeout=5)
        self.nats_server.stop(timeout=3)

    async def _serve(self) -> None:
        nats_server, pg, registry = self.nats_server, self.pg, self.registry
        signer = _signer(self.data_dir / "keys")
        conns: list[NATS] = []

        async def connect_as(user: str) -> NATS:
            auth = NatsAuth(nkey=str(self.roles / f"{user}.nk"))
            conns.append(await connect(nats_server.url, auth=auth, reconnect_forever=True))
            return conns[-1]

        pool = None
        try:
            pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=6)
            subjects = Subjects(self.prefix, self.partitions)
            all_handlers = self.handlers
            operator = await connect_as("operator")  # the one role that creates streams
            await ensure_topology(operator, subjects)
            await EffectMarkers(operator, subjects).open()
            await Leases(operator, subjects, "dev").open()
            keys = await _keyring(self.data_dir / "keys" / KEYS_FILE, Journal(operator, subjects))
            worker = Worker(await connect_as("worker"), registry, subjects=subjects, keys=keys)
            projector = Projector(
                await connect_as("projector"), pool, subjects, signer=signer, keys=keys
            )
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                for kind in all_handlers.kinds():  # each kind as its own handler user
                    service = HandlerService(
                        await connect_as(f"handler-{kind.replace('.', '_')}"),
                        all_handlers.only([kind]),
                        subjects=subjects,
                        keys=keys.effect_keys([kind]),
                    )
                    await tg.start(service.run)
                await tg.start(projector.run)
                print(
                    f"mainspring dev is up: NATS {nats_server.url}, PostgreSQL {pg.dsn}\n"
                    f"  data in {self.data_dir} (kept between runs)\n"
                    f"  workflows: {', '.join(registry.names()) or 'none'}; "
                    f"handlers: {', '.join(all_handlers.kinds())}"
                    f"{_cli_note(all_handlers)}\n"
                    "  other mainspring commands in this folder find it automatically; "
                    "Ctrl-C stops everything\n"
                    f"  NATS runs with least-privilege roles: each role's nkey seed is in "
                    f"{self.roles} (operator.nk may do everything; client.nk starts and "
                    "reads runs; event-sender.nk sends resume events)",
                    flush=True,
                )
                tg.start_soon(_status_line, worker, projector, pool, self.status_every)
        finally:
            with anyio.CancelScope(shield=True):
                await _close(pool, conns)


async def _close(pool: asyncpg.Pool | None, conns: list[NATS]) -> None:
    """Close connections, bounded: a stop must not wait on a busy or vanished server."""
    if pool is not None:
        with anyio.move_on_after(3) as waited:
            await pool.close()
        if waited.cancelled_caught:
            pool.terminate()
    with anyio.move_on_after(3):
        for nc in conns:
            await nc.close()


async def _status_line(
    worker: Worker, projector: Projector, pool: asyncpg.Pool, every: float
) -> None:
    tty = sys.stdout.isatty()
    last = ""
    while True:
        await anyio.sleep(every)
        try:
            rows = await pool.fetch("SELECT status, count(*) AS n FROM runs GROUP BY status")
            counts = ", ".join(f"{r['n']} {r['status']}" for r in sorted(rows, key=lambda r: r[0]))
        except (OSError, asyncpg.PostgresError):
            counts = "projections unavailable"
        line = (
            f"worker: {len(worker.partitions)}/{worker.subjects.partitions} partitions, "
            f"{len(worker.actors)} runs in memory | runs: {counts or 'none yet'} | "
            f"projector at {projector.stats.position}, lag "
            f"{projector.stats.last_commit_lag_s:.2f}s"
        )
        if tty:
            print("\r" + line.ljust(120)[:160], end="", flush=True)
        elif line != last:
            print(line, flush=True)
        last = line
