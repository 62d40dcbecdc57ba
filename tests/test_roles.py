"""Least-privilege roles against a real nats-server running the generated config.

The deployment's processes each connect with their own role's nkey: every role does
its job (the first test, whose server log must show no permission violation), and
the deny matrix below — written by hand from the roles' descriptions in
docs/security.md, not from the generator — proves each role can do nothing else.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import nats
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from projections import Projector, audit
from schemas import RunCompleted, encode_event
from servers import NatsServer
from streams import (
    HDR_HASH,
    HDR_N,
    HDR_PREV,
    NatsAuth,
    Subjects,
    chain,
    connect,
    dead_letters,
    nkey_public,
    publish_checked,
    reply_prefix,
)
from tests.apps import handlers, registry
from tests.harness import hand_made_request, keys_for, wait_status, wait_until
from tests.procs import cli

pytestmark = pytest.mark.anyio
S = Subjects("ms", 4, shards=2)
"""two shards: every role does its job on the streams of both"""
KINDS = ["math.double", "llm.mock"]


@dataclass
class Deployment:
    server: NatsServer
    roles: Path

    def auth(self, user: str) -> NatsAuth:
        return NatsAuth(nkey=str(self.roles / f"{user}.nk"))

    @property
    def log(self) -> str:
        return (self.server.store_dir / "nats-server.log").read_text(errors="replace")

    def violations(self, since: int = 0) -> list[str]:
        """Permission violations the server logged after position ``since``."""
        return re.findall(r'\w+ Violation - Subject "[^"]+"', self.log[since:])


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A server running what `mainspring roles write` wrote, set up by the operator
    with `mainspring setup` (no other role may create streams)."""
    base = tmp_path_factory.mktemp("roles")
    kinds = [a for k in KINDS for a in ("--kind", k)]
    shape = ("--partitions", "4", "--shards", "2")
    wrote = cli("roles", "write", "-o", str(base / "roles"), *shape, *kinds)
    assert wrote.returncode == 0, wrote.stderr
    assert (base / "roles" / "worker.nk").stat().st_mode & 0o777 == 0o600
    config = (base / "roles" / "nats-auth.conf").read_text()
    server = NatsServer(base / "nats", extra_config=config).start()
    conn = ("--nats-url", server.url, "--prefix", "ms", *shape)
    refused = cli("setup", *conn, "--nats-nkey", str(base / "roles" / "worker.nk"))
    assert refused.returncode != 0
    assert "NATS refused $JS.API.STREAM.CREATE.MS_JOURNAL to these credentials" in refused.stderr
    done = cli("setup", *conn, "--nats-nkey", str(base / "roles" / "operator.nk"))
    assert done.returncode == 0, done.stderr
    yield Deployment(server, base / "roles")
    server.stop()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_each_role_does_its_job_with_its_own_credentials(
    deployment: Deployment, pg_dsn: str
) -> None:
    url, keys = deployment.server.url, keys_for(S)
    since = len(deployment.log)
    wnc = await connect(url, auth=deployment.auth("worker"))
    w2nc = await connect(url, auth=deployment.auth("worker"))
    hnc = await connect(url, auth=deployment.auth("handler-math_double"))
    cnc = await connect(url, auth=deployment.auth("client"))
    enc = await connect(url, auth=deployment.auth("event-sender"))
    pnc = await connect(url, auth=deployment.auth("projector"))
    anc = await connect(url, auth=deployment.auth("auditor"))
    served = ms.Handlers()
    served.handler("math.double")(handlers.get("math.double").fn)
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        options = ms.WorkerOptions(lease_ttl_s=3)
        worker = ms.Worker(wnc, registry, subjects=S, keys=keys, options=options)
        second = ms.Worker(w2nc, registry, subjects=S, keys=keys, options=options)
        service = ms.HandlerService(hnc, served, subjects=S, keys=keys.effect_keys(["math.double"]))
        client = ms.Client(cnc, S, keys=keys)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await tg.start(second.run)
            await tg.start(service.run)
            # a worker asks another if it is alive before taking its partitions
            assert (await wnc.request(S.worker_ping(second.worker_id), b"", timeout=5)).data
            per_shard = {S.shard_of(f"r{n}"): f"r{n}" for n in range(50)}
            assert sorted(per_shard) == [0, 1]
            for rid in per_shard.values():  # effects served from each shard's journal
                assert await client.result(await client.start("fanout", 3, run_id=rid)) == 6
            rid = await client.start("waiter", 60)
            await wait_status(client, rid, "waiting")
            event = b'{"approved": true, "by": "webhook"}'
            await publish_checked(enc, S.event(rid, "go"), event, {"Nats-Msg-Id": "e-1"})
            assert await client.result(rid, timeout=20) == {"approved": True, "by": "webhook"}
            assert await client.result(await client.start("sleeper", 0.2), timeout=20) == "woke"
            tg.cancel_scope.cancel()
        projector = Projector(pnc, pool, S, keys=keys)
        await projector.catch_up()
        assert projector.stats.events > 0
        assert projector.stats.forged == 0
        report = await audit(anc, S, None, keys=keys)
        assert report.ok, report.problems
        await dead_letters(anc, S)
    finally:
        await pool.close()
        for c in (wnc, w2nc, hnc, cnc, enc, pnc, anc):
            await c.close()
    assert deployment.violations(since) == []


# Each role's forbidden moves, by hand: (user, action, subject). "pub" publishes (a
# JetStream API call is a publish to its subject), "sub" subscribes.
DENIED = [
    # a client starts, cancels, wakes and reads; it writes no fact and runs no effect
    ("client", "pub", "ms.j.r1.e"),
    ("client", "pub", "ms.j.r1.end"),
    ("client", "pub", "ms.j.r1.fx.cli"),
    ("client", "pub", "ms.in.0.r1.effect.result"),
    ("client", "pub", "ms.in.0.r1.timer.fire"),
    ("client", "pub", "ms.in.0.r1.child.done"),
    ("client", "pub", "ms.sched.r1.1"),
    ("client", "pub", "$JS.API.STREAM.DELETE.MS_JOURNAL"),
    ("client", "pub", "$JS.API.STREAM.PURGE.MS_JOURNAL"),
    ("client", "pub", "$JS.API.STREAM.MSG.DELETE.MS_JOURNAL"),
    ("client", "pub", "$JS.API.CONSUMER.CREATE.MS_JOURNAL.mine.ms.j.>"),
    ("client", "pub", "$KV.ms_leases.p0"),
    ("client", "sub", "ms.worker.w1.ping"),
    # an event sender sends resume events, nothing else, and reads nothing
    ("event-sender", "pub", "ms.in.0.r1.start"),
    ("event-sender", "pub", "ms.in.0.r1.effect.result"),
    ("event-sender", "pub", "ms.j.r1.e"),
    ("event-sender", "pub", "$JS.API.DIRECT.GET.MS_JOURNAL"),
    ("event-sender", "pub", "$JS.API.STREAM.INFO.MS_JOURNAL"),
    ("event-sender", "sub", "ms.jn.>"),
    # a handler of one kind takes that kind's requests and answers them
    ("handler-math_double", "pub", "ms.j.r1.e"),
    ("handler-math_double", "pub", "ms.j.r1.fx.math.double"),
    ("handler-math_double", "pub", "ms.in.0.r1.start"),
    ("handler-math_double", "pub", "ms.in.0.r1.timer.fire"),
    ("handler-math_double", "pub", "$JS.API.DIRECT.GET.MS_JOURNAL"),
    ("handler-math_double", "pub", "$JS.API.CONSUMER.MSG.NEXT.MS_JOURNAL.fx-llm_mock"),
    (
        "handler-math_double",
        "pub",
        "$JS.API.CONSUMER.CREATE.MS_JOURNAL.fx-llm_mock.ms.j.*.fx.llm.mock",
    ),
    ("handler-math_double", "pub", "$JS.API.CONSUMER.CREATE.MS_JOURNAL.fx-math_double.ms.j.>"),
    ("handler-math_double", "pub", "$JS.API.STREAM.PURGE.MS_JOURNAL"),
    ("handler-math_double", "pub", "$KV.ms_leases.p0"),
    # the auditor reads; it writes, purges and deletes nothing
    ("auditor", "pub", "ms.j.r1.e"),
    ("auditor", "pub", "ms.in.0.r1.start"),
    ("auditor", "pub", "ms.event.r1.go"),
    ("auditor", "pub", "ms.dlq.fx.r1"),
    ("auditor", "pub", "$JS.API.STREAM.PURGE.MS_JOURNAL"),
    ("auditor", "pub", "$JS.API.STREAM.DELETE.MS_JOURNAL"),
    ("auditor", "pub", "$JS.API.STREAM.MSG.DELETE.MS_JOURNAL"),
    ("auditor", "pub", "$JS.API.STREAM.MSG.DELETE.MS_DEADLETTERS"),
    ("auditor", "pub", "$KV.ms_fx_started.x"),
    ("auditor", "pub", "$O.ms_objects.C.x"),
    # the projector reads the journal and writes its own dead letters only
    ("projector", "pub", "ms.j.r1.e"),
    ("projector", "pub", "ms.in.0.r1.start"),
    ("projector", "pub", "ms.dlq.fx.r1"),
    ("projector", "pub", "$JS.API.STREAM.PURGE.MS_JOURNAL"),
    ("projector", "pub", "$JS.API.CONSUMER.CREATE.MS_INBOX.x.ms.in.>"),
    # a worker runs workflows; it deletes no stream and takes no effect request
    ("worker", "pub", "$JS.API.STREAM.DELETE.MS_JOURNAL"),
    ("worker", "pub", "$JS.API.STREAM.PURGE.MS_JOURNAL"),
    ("worker", "pub", "$JS.API.STREAM.MSG.DELETE.MS_JOURNAL"),
    ("worker", "pub", "$JS.API.STREAM.DELETE.MS_INBOX"),
    ("worker", "pub", "$JS.API.CONSUMER.CREATE.MS_JOURNAL.fx-cli.ms.j.*.fx.cli"),
    ("worker", "pub", "$JS.API.CONSUMER.MSG.NEXT.MS_JOURNAL.fx-cli"),
]
# ... and a few moves each may make, so the matrix can tell a grant from a denial
ALLOWED = [
    ("client", "sub", "ms.jn.>"),
    ("client", "pub", "ms.event.r-nobody.go"),
    ("event-sender", "pub", "ms.event.r-nobody.go"),
    ("worker", "sub", "ms.worker.w1.ping"),
    ("auditor", "pub", "$JS.API.STREAM.INFO.MS_JOURNAL"),
]


CANARY = "canary.no-role-may-publish-here"


class Probe:
    """A connection as ``user`` that records the server's permission errors."""

    def __init__(self) -> None:
        self.nc: NATS | None = None
        self.errors: list[str] = []
        self.news = anyio.Event()
        self.tries = 0

    async def on_error(self, e: Exception) -> None:
        self.errors.append(str(e).lower())
        self.news.set()

    async def denied(self, action: str, subject: str) -> bool:
        """Try; then publish to a subject nobody may: the server reports violations
        in the order it meets them, so the canary's report ends the wait."""
        assert self.nc is not None
        before = len(self.errors)
        if action == "pub":
            await self.nc.publish(subject, b"{}")
        else:
            await self.nc.subscribe(subject)
        self.tries += 1
        canary = f"{CANARY}.{self.tries}"  # new each time: the server caches verdicts
        await self.nc.publish(canary, b"")
        with anyio.fail_after(10):
            while True:
                seen = self.errors[before:]
                if any(f'"{subject.lower()}"' in e for e in seen):
                    return True
                if any(f'"{canary}"' in e for e in seen):
                    return False
                self.news = anyio.Event()
                await self.news.wait()


@pytest.fixture(scope="module")
async def probes(deployment: Deployment) -> AsyncIterator[dict[str, Probe]]:
    users = {user for user, _, _ in DENIED + ALLOWED}
    found: dict[str, Probe] = {}
    for user in sorted(users):
        probe = found[user] = Probe()
        seed = str(deployment.roles / f"{user}.nk")
        probe.nc = await nats.connect(
            deployment.server.url, nkeys_seed=seed, error_cb=probe.on_error
        )
    yield found
    for probe in found.values():
        assert probe.nc is not None
        await probe.nc.close()


@pytest.mark.parametrize(("user", "action", "subject"), DENIED)
async def test_a_role_is_denied_what_it_has_no_business_with(
    probes: dict[str, Probe], user: str, action: str, subject: str
) -> None:
    assert await probes[user].denied(action, subject)


@pytest.mark.parametrize(("user", "action", "subject"), ALLOWED)
async def test_the_matrix_tells_a_grant_from_a_denial(
    probes: dict[str, Probe], user: str, action: str, subject: str
) -> None:
    assert not await probes[user].denied(action, subject)


async def test_not_even_the_operator_can_purge_or_delete_journal_history(
    deployment: Deployment,
) -> None:
    """Permissions allow the operator everything; the journal stream itself refuses."""
    from streams import ApiError, api_request

    nc = await connect(deployment.server.url, auth=deployment.auth("operator"))
    try:
        with pytest.raises(ApiError, match="purge"):
            await api_request(nc, "$JS.API.STREAM.PURGE.MS_JOURNAL", {})
        with pytest.raises(ApiError, match="delete"):
            await api_request(nc, "$JS.API.STREAM.MSG.DELETE.MS_JOURNAL", {"seq": 1})
    finally:
        await nc.close()


async def test_each_user_hears_only_its_own_replies(
    probes: dict[str, Probe], deployment: Deployment
) -> None:
    """Replies (journal reads among them) come under the user's own prefix: the event
    sender cannot read the worker's direct gets by listening on every reply subject."""
    mine = reply_prefix(nkey_public(deployment.roles / "client.nk"))
    theirs = reply_prefix(nkey_public(deployment.roles / "worker.nk"))
    assert not await probes["client"].denied("sub", f"{mine}.abc.*")
    assert await probes["client"].denied("sub", f"{theirs}.abc.*")
    assert await probes["event-sender"].denied("sub", "_INBOX.>")


async def test_a_role_with_too_many_rights_still_gets_no_forgery_accepted(
    deployment: Deployment,
) -> None:
    """Permissions misconfigured: the operator may publish anywhere, like a role given
    too much. A chain-valid request it makes up is not executed, and a chain-valid end
    it appends to a waiting run is refused by the readers: the keys hold on their own."""
    url, keys = deployment.server.url, keys_for(S)
    nc = {u: await connect(url, auth=deployment.auth(u)) for u in ("worker", "client", "operator")}
    nc["handler"] = await connect(url, auth=deployment.auth("handler-math_double"))
    served, ran = ms.Handlers(), []

    @served.handler("math.double")
    async def double(x: int) -> int:
        ran.append(x)
        return x * 2

    try:
        worker = ms.Worker(nc["worker"], registry, subjects=S, keys=keys)
        service = ms.HandlerService(
            nc["handler"], served, subjects=S, keys=keys.effect_keys(["math.double"])
        )
        client = ms.Client(nc["client"], S, keys=keys)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await tg.start(service.run)
            rid = await client.start("waiter", 60, run_id="overpowered-victim")
            await wait_status(client, rid, "waiting")
            # a request made up by hand, its chain headers computed as anyone could
            other = "made-up-run"
            data = hand_made_request(other, "math.double", S.inbox(other, "effect.result"))
            prev = bytes(32)
            fx = {HDR_N: "2", HDR_PREV: prev.hex(), HDR_HASH: chain(prev, data).hex()}
            await nc["operator"].request(S.journal_effect(other, "math.double"), data, headers=fx)

            async def refused() -> bool:
                found = await dead_letters(nc["operator"], S, source="fx")
                return any("not written by a worker" in d.reason for d in found)

            await wait_until(refused, timeout=20)
            assert ran == []
            tg.cancel_scope.cancel()
        # an end appended by hand (chain-valid) to the waiting run
        last = (await client.history(rid))[-1]
        end = encode_event(RunCompleted(run_id=rid, n=last.n + 1, at=datetime.now(UTC)))
        await nc["operator"].request(
            S.journal_end(rid),
            end,
            headers={
                HDR_N: str(last.n + 1),
                HDR_PREV: last.hash.hex(),
                HDR_HASH: chain(last.hash, end).hex(),
            },
        )
        with pytest.raises(ms.JournalForged):
            await client.result(rid, timeout=5)
    finally:
        for c in nc.values():
            await c.close()
