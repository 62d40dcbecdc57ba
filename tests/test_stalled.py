"""`mainspring runs --stalled`: an operator finds stuck runs, and why, without reading
journals; healthy runs are not listed."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from mainspring._stalled import stalled_runs
from schemas import RunStarted, StepCompleted
from streams import GENESIS, Journal, Subjects, api_request
from tests.apps import registry
from tests.harness import keys_for, running, types, wait_status, wait_until
from tests.procs import acli, conn_args

pytestmark = pytest.mark.anyio


async def test_runs_stalled_lists_stuck_runs_with_the_reason(
    nc: NATS, nats_server: NatsServer, subjects: Subjects
) -> None:
    """A run whose timer firing was lost (its schedule purged) and a run that waits on
    nothing are listed with their reasons; waiting and finished runs are not."""
    async with running(nc, subjects, registry) as h:
        done = await h.client.start("chain", 1, run_id="done")
        assert await h.client.result(done) == 1
        healthy = await h.client.start("waiter", 600, run_id="healthy")
        await wait_status(h.client, healthy, "waiting")
        lost = await h.client.start("sleeper", 1.0, run_id="lost-timer")

        async def timer_started() -> bool:
            return "timer.started" in types(await h.client.history(lost))

        await wait_until(timer_started)
        await api_request(  # an operator mistake (or a bug) loses the timer
            nc,
            f"$JS.API.STREAM.PURGE.{subjects.inbox_stream}",
            {"filter": subjects.schedule(lost, 1)},
        )
    # a run whose journal shows progress but nothing that could ever wake it
    journal = Journal(nc, subjects, keys=keys_for(subjects))
    started = RunStarted(
        run_id="orphaned", n=1, at=datetime.now(UTC), workflow="chain", version="1"
    )
    first = await journal.append(started, expected_seq=0, prev=GENESIS)
    step = StepCompleted(
        run_id="orphaned", n=2, at=datetime.now(UTC), seq=1, name="inc", result=msgspec.Raw(b"1")
    )
    await journal.append(step, expected_seq=first.seq, prev=first.hash)

    async def both_listed() -> bool:
        found = await stalled_runs(nc, subjects, grace_s=0)
        return {s.view.run_id for s in found} == {"lost-timer", "orphaned"}

    await wait_until(both_listed, timeout=10)  # once the lost timer is due
    args = ("runs", "--stalled", "--grace", "0", *conn_args(nats_server, subjects))
    out = await acli(*args, "--json")
    assert out.returncode == 0, out.stderr
    reasons = {d["run_id"]: d["reason"] for d in msgspec.json.decode(out.stdout)["details"]}
    assert set(reasons) == {"lost-timer", "orphaned"}
    assert "has not fired" in reasons["lost-timer"]
    assert "waits on nothing" in reasons["orphaned"]
    text = await acli(*args)
    assert "lost-timer" in text.stdout
    assert "healthy" not in text.stdout
