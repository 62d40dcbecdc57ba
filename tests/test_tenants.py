"""Tenants on one nats-server and one PostgreSQL: each its own NATS account (from
`mainspring tenants add`), isolated by the server; each its own projections schema;
a tenant past its storage limit gets a clear error while the other carries on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from projections import Projector
from schemas import QuotaExceeded
from servers import NatsServer
from streams import Journal, NatsAuth, Subjects, connect
from tests.apps import registry
from tests.harness import keys_for
from tests.procs import cli

pytestmark = pytest.mark.anyio
S = Subjects("ms", 4)  # the same prefix in both tenants: accounts keep them apart


@dataclass
class Tenants:
    server: NatsServer
    root: Path

    def auth(self, tenant: str, user: str) -> NatsAuth:
        return NatsAuth(nkey=str(self.root / tenant / f"{user}.nk"))


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenants]:
    root = tmp_path_factory.mktemp("tenants") / "tenants"
    for args in (("acme", "--max-storage", "4M"), ("beta",)):
        made = cli("tenants", "add", *args, "--dir", str(root))
        assert made.returncode == 0, made.stderr
    listed = cli("tenants", "list", "--dir", str(root))
    assert "acme  ACME  4194304" in listed.stdout
    assert "beta  BETA  -" in listed.stdout
    server = NatsServer(root.parent / "nats", extra_config=(root / "accounts.conf").read_text())
    server.start()
    conn = ("--nats-url", server.url, "--prefix", "ms", "--partitions", "4")
    for tenant in ("acme", "beta"):
        seed = str(root / tenant / "operator.nk")
        done = cli("setup", *conn, "--nats-nkey", seed)
        assert done.returncode == 0, done.stdout + done.stderr
    yield Tenants(server, root)
    server.stop()


@pytest.fixture
async def conns(two: Tenants) -> AsyncIterator[dict[str, NATS]]:
    made = {
        f"{t}-{u}": await connect(two.server.url, auth=two.auth(t, u))
        for t in ("acme", "beta")
        for u in ("worker", "client", "operator", "projector")
    }
    yield made
    for nc in made.values():
        await nc.close()


async def test_a_tenant_sees_nothing_of_another(
    two: Tenants, conns: dict[str, NATS], pg_dsn: str
) -> None:
    """acme runs a workflow; beta, on the same server with the same prefix, has no
    trace of it in its journal, its subjects or its projections schema."""
    keys = keys_for(S)
    seen_by_beta: list[str] = []

    async def note(msg: object) -> None:
        seen_by_beta.append(str(getattr(msg, "subject", "")))

    await conns["beta-operator"].subscribe("ms.>", cb=note)
    worker = ms.Worker(conns["acme-worker"], registry, subjects=S, keys=keys)
    client = ms.Client(conns["acme-client"], S, keys=keys)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        rid = await client.start("chain", 3, run_id="acme-run")
        assert await client.result(rid, timeout=20) == 3
        tg.cancel_scope.cancel()
    await conns["beta-operator"].flush()
    assert seen_by_beta == []
    assert await Journal(conns["beta-operator"], S).run_ids() == []
    assert await Journal(conns["acme-operator"], S).run_ids() == [rid]
    with pytest.raises(ms.RunNotFound):
        await ms.Client(conns["beta-client"], S).status(rid)
    for tenant in ("acme", "beta"):  # each projector into its own schema
        dsn = f"{pg_dsn}?search_path=tenant_{tenant}"
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            await Projector(conns[f"{tenant}-projector"], pool, S, keys=keys).catch_up()
        finally:
            await pool.close()
    db = await asyncpg.connect(pg_dsn)
    try:
        assert await db.fetchval("SELECT count(*) FROM tenant_acme.runs") == 1
        assert await db.fetchval("SELECT count(*) FROM tenant_beta.runs") == 0
    finally:
        await db.close()


async def test_a_tenant_past_its_storage_gets_a_clear_error_the_other_carries_on(
    two: Tenants, conns: dict[str, NATS]
) -> None:
    keys = keys_for(S)
    big = msgspec.Raw(b'"' + b"x" * 200_000 + b'"')  # goes to the object store
    acme = ms.Client(conns["acme-client"], S, keys=keys)
    with pytest.raises(QuotaExceeded, match="the account's JetStream limits are reached"):
        await _fill(acme, big)
    beta = ms.Client(conns["beta-client"], S, keys=keys)
    worker = ms.Worker(conns["beta-worker"], registry, subjects=S, keys=keys)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        assert await beta.result(await beta.start("chain", 2), timeout=20) == 2
        tg.cancel_scope.cancel()


async def _fill(client: ms.Client, value: msgspec.Raw) -> None:
    for i in range(40):  # 8 MB against a 4 MB limit
        await client.start("chain", value, run_id=f"fill-{i}")


async def test_a_start_over_the_cap_of_runs_not_yet_ended_ends_at_once(
    two: Tenants, conns: dict[str, NATS]
) -> None:
    """beta allows 2 runs not yet ended: a third start ends at once with
    limit.active_runs and a message saying what to do; once one has ended, a new start
    runs. The cap is the server's, for every worker at once."""
    conn = ("--nats-url", two.server.url, "--prefix", "ms", "--partitions", "4")
    seed = str(two.root / "beta" / "operator.nk")
    capped = cli("setup", *conn, "--max-active-runs", "2", "--nats-nkey", seed)
    assert capped.returncode == 0, capped.stderr
    keys = keys_for(S)
    client = ms.Client(conns["beta-client"], S, keys=keys)
    worker = ms.Worker(conns["beta-worker"], registry, subjects=S, keys=keys)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        first = await client.start("waiter", 60, run_id="cap-1")
        await client.start("waiter", 60, run_id="cap-2")
        await client.wait_for("cap-2", "waiting", timeout=20)
        over = await client.start("waiter", 60, run_id="cap-3")
        with pytest.raises(ms.RunFailedError) as refused:
            await client.result(over, timeout=20)
        assert refused.value.error.type == "limit.active_runs"
        assert "cap of 2 runs not yet ended" in refused.value.error.message
        await client.send_event(first, "go", {"approved": True})
        assert await client.result(first, timeout=20) == {"approved": True, "by": ""}
        again = await client.start("waiter", 60, run_id="cap-4")
        await client.wait_for(again, "waiting", timeout=20)
        tg.cancel_scope.cancel()
