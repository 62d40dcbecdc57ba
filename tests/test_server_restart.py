"""The broker goes away and comes back: workers reconnect and runs carry on."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

import mainspring as ms
from mainspring import NatsServer
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import assert_journal_sound, running, wait_status

pytestmark = pytest.mark.anyio


async def test_nats_restart_mid_run(tmp_path: Path) -> None:
    """nats-server restarts while a run waits and another runs: both complete, nothing lost."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        subjects = Subjects("restart", 4)
        opts = ms.WorkerOptions(lease_ttl_s=3)
        async with running(nc, subjects, registry, handlers, options=opts) as h:
            waiting = await h.client.start("agent", "restarts", run_id="rs-wait")
            await wait_status(h.client, waiting, "waiting")
            server.stop()
            server.start()  # same port, same store directory
            busy = await h.client.start("fanout", 20, run_id="rs-busy")
            await h.client.send_event(waiting, "approval", {"approved": True, "by": "ops"})
            assert await h.client.result(busy, timeout=30) == sum(2 * i for i in range(20))
            out = await h.client.result(waiting, timeout=30)
            assert out["by"] == "ops"
            for rid in (waiting, busy):
                assert_journal_sound(rid, await h.client.history(rid))
        await nc.close()
    finally:
        server.stop()
