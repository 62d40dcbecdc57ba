"""Broker faults: a 3-node NATS cluster with R3 streams loses no acknowledged event when a
node dies, and runs carry on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import mainspring as ms
from mainspring import NatsServer
from streams import Subjects, TopologyConfig, connect, ensure_topology, spread_leaders
from tests.apps import handlers, registry
from tests.harness import assert_journal_sound, running, wait_status, wait_until
from tests.procs import acli

pytestmark = pytest.mark.anyio


async def test_losing_the_stream_leader_loses_nothing(tmp_path: Path) -> None:
    """Kill the journal's leader node: journals stay whole, waiting runs resume, new runs run."""
    nodes = NatsServer.local_cluster(tmp_path)
    try:
        nc = await connect(",".join(n.url for n in nodes), reconnect_forever=True)
        subjects = Subjects("cluster", 4)
        await ensure_topology(nc, subjects, TopologyConfig(replicas=3))
        # the production lease TTL (10 s) outlasts a leader election on this small box
        opts = ms.WorkerOptions(lease_ttl_s=10)
        async with running(nc, subjects, registry, handlers, options=opts) as h:
            done = await h.client.start("chain", 5, run_id="before")
            assert await h.client.result(done, timeout=30) == 5
            waiting = await h.client.start("agent", "quorum", run_id="waiting")
            await wait_status(h.client, waiting, "waiting", timeout=30)
            before = await h.client.history("before")
            info = await nc.jetstream().stream_info(subjects.journal_stream)
            assert info.config.num_replicas == 3  # and no default-configured client changed it
            assert info.cluster is not None
            leader = next(n for n in nodes if n.server_name == info.cluster.leader)
            leader.kill()
            await h.client.send_event(waiting, "approval", {"approved": True, "by": "quorum"})
            assert (await h.client.result(waiting, timeout=120))["by"] == "quorum"
            after = await h.client.start("chain", 3, run_id="after")
            assert await h.client.result(after, timeout=120) == 3
            assert [e.hash for e in await h.client.history("before")] == [e.hash for e in before]
            for rid in ("before", "waiting", "after"):
                assert_journal_sound(rid, await h.client.history(rid))
        await nc.close()
    finally:
        for node in nodes:
            node.stop()


async def test_setup_spreads_the_shards_leaders_over_the_nodes(tmp_path: Path) -> None:
    """`mainspring setup --shards 3 --replicas 3` on a 3-node cluster: every shard's
    journal and inbox stream is R3, and no node leads more than its share of them."""
    nodes = NatsServer.local_cluster(tmp_path)
    try:
        url = ",".join(n.url for n in nodes)
        subjects = Subjects("spread", 6, shards=3)
        args = ("--nats-url", url, "--prefix", "spread", "--partitions", "6")
        out = await acli("setup", "--shards", "3", "--replicas", "3", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "(3 shards)" in out.stdout
        nc = await connect(url)
        try:

            async def spread() -> dict[str, str] | None:
                leaders = await spread_leaders(nc, subjects)  # as setup does, once elected
                return leaders if len(leaders) == 6 else None

            leaders = await wait_until(spread, timeout=30, interval=0.2)
            assert max(Counter(leaders.values()).values()) <= 2, leaders
            info = await nc.jetstream().stream_info(subjects.journal_stream_of(2))
            assert info.config.num_replicas == 3
        finally:
            await nc.close()
    finally:
        for node in nodes:
            node.stop()
