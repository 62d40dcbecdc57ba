"""``mainspring dev``: everything on one machine, in one foreground process.

Starts an embedded nats-server and PostgreSQL (data in ``.mainspring/``, kept
between runs), a worker, the built-in handlers (plus yours), and the projector;
shows one status line; Ctrl-C stops everything cleanly. While it runs, other
``mainspring`` commands find it through ``.mainspring/dev.json`` (and
``~/.mainspring-dev.json``) with no configuration.
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

from actors import Handlers, HandlerService, Registry, Worker
from actors._builtins import builtin_handlers
from mainspring._config import DEV_POINTER
from mainspring._natsserver import NatsServer
from mainspring._pgserver import PostgresServer
from projections import Projector, Signer
from streams import Subjects, connect

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


async def run_dev(
    data_dir: Path,
    registry: Registry,
    handlers: Handlers | None,
    *,
    prefix: str = "ms",
    partitions: int = 16,
    nats_port: int = 4222,
    status_every: float = 2.0,
) -> None:
    """Run until cancelled; ``data_dir`` must exist (absolute path)."""
    nats_server = NatsServer(data_dir / "nats", port=nats_port if _port_free(nats_port) else None)
    pg = PostgresServer(data_dir / "postgres")
    info_files = [data_dir / "dev.json", DEV_POINTER]
    try:
        await anyio.to_thread.run_sync(nats_server.start)
        await anyio.to_thread.run_sync(pg.start)
        info = {
            "pid": os.getpid(),
            "nats_url": nats_server.url,
            "postgres_dsn": pg.dsn,
            "prefix": prefix,
            "partitions": partitions,
            "data_dir": str(data_dir),
            "verify_key": str(data_dir / "keys" / "signing.pub.pem"),
        }
        for path in info_files:
            path.write_text(json.dumps(info, indent=2))
        signer = _signer(data_dir / "keys")
        nc = await connect(nats_server.url, reconnect_forever=True)
        pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=6)
        subjects = Subjects(prefix, partitions)
        all_handlers = builtin_handlers()
        if handlers is not None:
            all_handlers.include(handlers)
        worker = Worker(nc, registry, subjects=subjects)
        projector = Projector(nc, pool, subjects, signer=signer)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run)
                await tg.start(HandlerService(nc, all_handlers, subjects=subjects).run)
                await tg.start(projector.run)
                print(
                    f"mainspring dev is up: NATS {nats_server.url}, PostgreSQL {pg.dsn}\n"
                    f"  data in {data_dir} (kept between runs)\n"
                    f"  workflows: {', '.join(registry.names()) or 'none'}; "
                    f"handlers: {', '.join(all_handlers.kinds())}\n"
                    "  other mainspring commands in this folder find it automatically; "
                    "Ctrl-C stops everything",
                    flush=True,
                )
                tg.start_soon(_status_line, worker, projector, pool, status_every)
        finally:
            with anyio.CancelScope(shield=True):
                await pool.close()
                await nc.close()
    finally:
        for path in info_files:
            try:
                if json.loads(path.read_text()).get("pid") == os.getpid():
                    path.unlink()
            except (OSError, ValueError):
                pass
        pg.stop()
        nats_server.stop()
        print("\nmainspring dev stopped; data kept in", data_dir, flush=True)


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
