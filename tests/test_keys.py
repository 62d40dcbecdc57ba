"""Authorship: nothing a publisher forges is executed or accepted, whatever NATS allows.

These run with no NATS authorization at all: anyone may publish anywhere. The runtime's
own check is the deployment keys (streams/_keys.py): a chain-valid effect request, an
early effect result under the effect's id and a chain-valid journal append are each
refused or reported as forged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import anyio
import msgspec
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

import mainspring as ms
from mainspring._stalled import stalled_runs
from schemas import (
    EffectRequested,
    EffectResult,
    JournalForged,
    RunCompleted,
    encode_event,
    encode_inbox,
)
from streams import (
    GENESIS,
    HDR_FX_MAC,
    HDR_HASH,
    HDR_MAC,
    HDR_N,
    HDR_PREV,
    DeadLetter,
    EffectKeys,
    Journal,
    Key,
    Keyring,
    Subjects,
    api_request,
    chain,
    dead_letters,
    ensure_topology,
    new_key,
)
from tests.harness import hand_made_request, keys_for, running, wait_status, wait_until
from tests.procs import acli, conn_args

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------- the keys alone
def test_a_tag_binds_subject_link_and_key() -> None:
    ring = Keyring.generate()
    link = chain(GENESIS, b'{"type":"run.started"}')
    mac = ring.tag_entry("ms.j.r1.e", link)
    assert ring.check_entry("ms.j.r1.e", link, mac, 7).ok
    assert "does not match" in ring.check_entry("ms.j.r2.e", link, mac, 7).problem
    assert "does not match" in ring.check_entry("ms.j.r1.e", chain(link, b"x"), mac, 7).problem
    assert "unknown here" in Keyring.generate().check_entry("ms.j.r1.e", link, mac, 7).problem
    assert "no valid Ms-Mac" in ring.check_entry("ms.j.r1.e", link, None, 7).problem


def test_rotation_accepts_old_and_new_and_revocation_cuts_at_a_stream_sequence() -> None:
    old = Keyring.generate()
    link = chain(GENESIS, b"e")
    by_old = old.tag_entry("s", link)
    # step 1: every host gets the new key for verifying; step 2: it signs
    added = old.added(new_key("verify"))
    assert added.signing.id == old.signing.id
    assert added.check_entry("s", link, by_old, 1).ok
    new_id = next(k for k in added.keys if k != old.signing.id)
    rotated = added.signing_with(new_id)
    by_new = rotated.tag_entry("s", link)
    assert rotated.signing.id == new_id
    assert rotated.check_entry("s", link, by_old, 1).ok  # history stays valid
    assert added.check_entry("s", link, by_new, 2).ok  # a host not yet switched reads it
    # the old key leaked: what it tagged up to sequence 10 stands, later is forged
    revoked = rotated.revoked(old.signing.id, valid_to_seq=10)
    assert revoked.check_entry("s", link, by_old, 10).ok
    verdict = revoked.check_entry("s", link, by_old, 11)
    assert not verdict.ok
    assert "revoked after stream sequence 10" in verdict.problem
    # a live input tagged with a revoked key is refused outright
    assert "revoked" in str(revoked.check_input("s", b"x", old.tag_input("s", b"x")))
    with pytest.raises(ms.ConfigError, match="sign key"):
        rotated.revoked(new_id, 5)


def test_entries_from_before_the_keys_are_legacy_not_forged() -> None:
    ring = Keyring([new_key()], legacy_until=100)
    assert ring.check_entry("s", b"l", None, 100).legacy
    assert not ring.check_entry("s", b"l", None, 101).ok
    assert not ring.check_entry("s", b"l", "", 50).ok  # an empty tag is no tag's absence


def test_an_effect_key_serves_its_kind_only(tmp_path: os.PathLike[str]) -> None:
    ring = Keyring.generate()
    path = f"{tmp_path}/llm.keys"
    ring.effect_keys(["llm"]).save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    llm = EffectKeys.load(path)
    link = chain(GENESIS, b"req")
    subject = "ms.j.r1.fx.cli"
    assert llm.check_request("cli", subject, link, ring.tag_request(subject, link, "cli"), 9)
    llm_subject = "ms.j.r1.fx.llm"
    assert (
        llm.check_request("llm", llm_subject, link, ring.tag_request(llm_subject, link, "llm"), 9)
        is None
    )
    # its results are accepted for llm effects, not for cli ones
    result_tag = llm.tag_result("llm", "ms.in.1.r1.effect.result", b"{}")
    assert ring.check_result("ms.in.1.r1.effect.result", b"{}", result_tag, "llm") is None
    assert "not one a 'cli' handler" in str(
        ring.check_result("ms.in.1.r1.effect.result", b"{}", result_tag, "cli")
    )
    with pytest.raises(ms.ConfigError, match="effect keys"):
        Keyring.load(path)


# ---------------------------------------------------------------------- against NATS
def _stored_request(run_id: str, kind: str, subjects: Subjects) -> tuple[bytes, dict[str, str]]:
    """A request exactly as a worker stores it, chain headers included (anyone who can
    read a journal can compute them), but tagged by nobody's key."""
    data = hand_made_request(run_id, kind, subjects.inbox(run_id, "effect.result"))
    prev = chain(GENESIS, b"run.started as stored")
    headers = {HDR_N: "2", HDR_PREV: prev.hex(), HDR_HASH: chain(prev, data).hex()}
    return data, headers


@pytest.mark.parametrize("tagged_by", ["nobody", "another kind's key"])
async def test_a_chain_valid_request_no_worker_wrote_is_not_executed(
    nc: NATS, subjects: Subjects, tagged_by: str
) -> None:
    served, ran = ms.Handlers(), []

    @served.handler("math.double")
    async def double(x: int) -> int:
        ran.append(x)
        return x * 2

    data, headers = _stored_request("victim", "math.double", subjects)
    subject = subjects.journal_effect("victim", "math.double")
    if tagged_by != "nobody":  # e.g. a compromised llm handler making up a request
        llm = keys_for(subjects).effect_keys(["llm"])
        key = next(iter(llm.by_kind["llm"].values()))
        link = bytes.fromhex(headers[HDR_HASH])
        headers[HDR_FX_MAC] = f"{key.id}.{tag_with(key.secret, subject, link)}"
    results = await nc.subscribe(subjects.inbox("victim", "effect.result"))
    async with running(nc, subjects, handlers=served):
        await nc.publish(subject, data, headers=headers)
        letters = await wait_until(lambda: _letters_if(nc, subjects, "fx"), timeout=20)
    assert len(letters) == 1
    assert "not written by a worker of this deployment" in letters[0].reason
    assert ran == []
    assert results.pending_msgs == 0


def tag_with(secret: bytes, subject: str, link: bytes) -> str:
    from streams._keys import tag

    return tag(secret, b"fx", subject, link)


async def _letters_if(nc: NATS, subjects: Subjects, source: str) -> list[DeadLetter] | None:
    found = await dead_letters(nc, subjects, source=source)
    return found or None


async def test_an_early_forged_result_is_refused_and_the_real_one_wins(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A result published under the effect's id before the handler answers (so the
    stream would drop the real one as its duplicate) is dead-lettered as forged; the
    handler's own result completes the run."""
    reg, served = ms.Registry(), ms.Handlers()
    release = anyio.Event()

    @reg.workflow
    async def asks(ctx: ms.Context, x: int) -> int:
        return int(await ctx.effect("slow.double", x))

    @served.handler("slow.double")
    async def slow_double(x: int) -> int:
        await release.wait()
        return x * 2

    async with running(nc, subjects, reg, served, forced_replay=forced_replay) as h:
        rid = await h.client.start("asks", 21, run_id="asker")

        async def requested_effect() -> EffectRequested | None:
            events = [e.event for e in await h.client.history(rid)]
            return next((e for e in events if isinstance(e, EffectRequested)), None)

        requested = await wait_until(requested_effect, timeout=20)
        forged = EffectResult(
            run_id=rid, seq=1, effect_id=requested.effect_id, ok=True, result=msgspec.Raw(b"666")
        )
        await nc.publish(
            subjects.inbox(rid, "effect.result"),
            encode_inbox(forged),
            headers={"Nats-Msg-Id": requested.effect_id, HDR_MAC: "made.up"},
        )
        letters = await wait_until(lambda: _letters_if(nc, subjects, "forged"), timeout=20)
        release.set()
        assert await h.client.result(rid, timeout=20) == 42
    assert "EffectResult refused" in letters[0].reason
    assert "tagged with key 'made'" in letters[0].reason


async def test_a_chain_valid_journal_append_is_refused_by_readers(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A ``run.completed`` with a made-up output appended to a waiting run, its chain
    headers computed from what anyone can read: the worker holds the run instead of
    writing on, and a reader with the keys reports the entry as forged."""
    from tests.apps import registry

    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("waiter", 60, run_id="target")
        await wait_status(h.client, rid, "waiting")
        last = (await h.client.history(rid))[-1]
        fake = RunCompleted(
            run_id=rid, n=last.n + 1, at=datetime.now(UTC), output=msgspec.Raw(b'"pwned"')
        )
        data = encode_event(fake)
        await nc.request(  # acked: stored before anyone reads
            subjects.journal_end(rid),
            data,
            headers={
                HDR_N: str(fake.n),
                HDR_PREV: last.hash.hex(),
                HDR_HASH: chain(last.hash, data).hex(),
                "Nats-Msg-Id": f"{rid}:{fake.n}",
            },
        )
        keyed = Journal(nc, subjects, keys=h.keys)
        with pytest.raises(JournalForged, match=f"at event {fake.n}: it carries no valid Ms-Mac"):
            await keyed.load(rid)
        with pytest.raises(JournalForged):
            await keyed.last(rid)
        with pytest.raises(JournalForged):  # the client reads with the keys too
            await h.client.result(rid, timeout=5)
        (stalled,) = await stalled_runs(nc, subjects, keyed, grace_s=0)  # and the operator
        assert stalled.view.run_id == rid
        assert "forged entry" in stalled.reason
        # the worker reads the forged entry when the run's next input comes, and stops
        with capture_logs() as logs:
            await h.client.send_event(rid, "go", {"approved": True})

            async def held() -> bool:
                return any("forged entry at event" in str(x.get("error")) for x in logs)

            await wait_until(held, timeout=20)
        events = await Journal(nc, subjects).load(rid)  # unkeyed: sees the forged end
        assert [e.n for e in events] == list(range(1, fake.n + 1))  # nothing written after it


def test_the_golden_sample_follows_the_documented_rule() -> None:
    """tests/golden/auth_v1.json, recomputed with nothing but hashlib and hmac as a
    handler in another language would (docs/handlers.md), and accepted by ours."""
    doc = json.loads((Path(__file__).parent / "golden" / "auth_v1.json").read_text())
    secret = base64.b64decode(doc["deployment_key_b64"])
    kid = str(doc["key_id"])
    assert kid == hashlib.sha256(b"ms1:key-id:" + secret).hexdigest()[:8]
    fx_key = hmac.digest(secret, b"ms1:effect-key:llm.chat", "sha256")
    assert fx_key.hex() == doc["effect_key_hex"]["llm.chat"]
    req = doc["request"]
    data = req["data"].encode()
    link = hashlib.sha256(bytes.fromhex(req["Ms-Prev"]) + data).digest()
    assert link.hex() == req["Ms-Hash"]

    def mac(key: bytes, domain: str, subject: str, body: bytes) -> str:
        tagged = f"ms1:{domain}:{subject}:".encode() + body
        return kid + "." + hmac.digest(key, tagged, "sha256")[:16].hex()

    assert req["Ms-Fx-Mac"] == mac(fx_key, "fx", req["subject"], link)
    assert req["Ms-Mac"] == mac(secret, "j", req["subject"], link)
    res = doc["result"]
    assert res["Ms-Mac"] == mac(fx_key, "res", res["subject"], res["data"].encode())
    assert res["Nats-Msg-Id"] == "r-1.fx.3." + res["Ms-Mac"][-16:]
    # and ours agree
    ring = Keyring([Key(kid, secret, "sign")])
    handler = ring.effect_keys(["llm.chat"])
    assert handler.check_request("llm.chat", req["subject"], link, req["Ms-Fx-Mac"], 99) is None
    assert ring.check_entry(req["subject"], link, req["Ms-Mac"], 99).ok
    assert (
        ring.check_result(res["subject"], res["data"].encode(), res["Ms-Mac"], "llm.chat") is None
    )


@pytest.mark.live_only("the CLI's key commands and audit; the runs are incidental")
async def test_keys_from_the_cli_legacy_history_rotation_and_a_forged_entry_in_audit(
    nats_server: ms.NatsServer, nc: NATS, subjects: Subjects, tmp_path: Path
) -> None:
    """An existing deployment gets keys: its old entries are legacy, new ones tagged;
    after a rotation and the old key's revocation the history still verifies, and a
    chain-valid entry appended by hand is reported as forged at its position."""
    from tests.apps import registry

    conn = conn_args(nats_server, subjects)[:-2]  # without the harness's --keys
    keys = tmp_path / "prod.keys"
    async with running(nc, subjects, registry, unkeyed=True) as h:  # before keys
        assert await h.client.result(await h.client.start("chain", 3, run_id="old")) == 3
    made = await acli("keys", "new", "--keys", str(keys), *conn)
    assert made.returncode == 0, made.stderr
    ring = Keyring.load(keys)
    assert ring.legacy_until > 0  # what the journal held when the keys were made
    async with running(nc, subjects, registry, keys=ring) as h:
        assert await h.client.result(await h.client.start("chain", 3, run_id="new")) == 3
        rid = await h.client.start("waiter", 60, run_id="victim")
        await wait_status(h.client, rid, "waiting")
    for step in (("add",), ("show",)):
        done = await acli("keys", *step, "--keys", str(keys))  # offline
        assert done.returncode == 0, done.stderr
    new_id = next(k for k in Keyring.load(keys).keys if k != ring.signing.id)
    assert f"{new_id}  verify" in done.stdout
    assert (await acli("keys", "use", new_id, "--keys", str(keys))).returncode == 0
    revoked = await acli("keys", "revoke", ring.signing.id, "--keys", str(keys), *conn)
    assert revoked.returncode == 0, revoked.stderr
    journal = Journal(nc, subjects)
    last = (await journal.load("victim"))[-1]
    fake = RunCompleted(run_id="victim", n=last.n + 1, at=datetime.now(UTC))
    data = encode_event(fake)
    forged_tag = ring.tag_entry(subjects.journal_end("victim"), chain(last.hash, data))
    await nc.request(  # tagged with the revoked key, after its revocation: forged too
        subjects.journal_end("victim"),
        data,
        headers={
            HDR_N: str(fake.n),
            HDR_PREV: last.hash.hex(),
            HDR_HASH: chain(last.hash, data).hex(),
            HDR_MAC: forged_tag,
        },
    )
    audit = await acli("audit", "verify", "--all", "--keys", str(keys), *conn)
    assert audit.returncode == 30, audit.stdout + audit.stderr
    assert f"run victim: stream, event {fake.n}: forged:" in audit.stdout
    assert "revoked after stream sequence" in audit.stdout
    assert "entries are unauthenticated-legacy" in audit.stdout
    assert audit.stdout.count("ALTERED") == 1  # the old and new runs verify
    secrets = [base64.b64encode(k.secret).decode() for k in Keyring.load(keys).keys.values()]
    for out in (made, done, revoked, audit):  # no command shows a key's secret
        assert not any(s in out.stdout + out.stderr for s in secrets)


async def test_a_run_whose_history_vanished_is_not_written_on(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """The journal stream deleted and made again under a live worker: the next input
    of a run it knew finds a shorter history, nothing is appended (a new history would
    pass for the old), and after a few deliveries the input is kept as a dead letter
    saying what happened."""
    from tests.apps import registry

    options = ms.WorkerOptions(lease_ttl_s=3.0, poison_deliveries=2)
    async with running(nc, subjects, registry, forced_replay=forced_replay, options=options) as h:
        rid = await h.client.start("waiter", 60, run_id="vanishing")
        await wait_status(h.client, rid, "waiting")
        await api_request(nc, f"$JS.API.STREAM.DELETE.{subjects.journal_stream}")
        await ensure_topology(nc, subjects)
        await h.client.send_event(rid, "go", {"approved": True})
        (letter,) = await wait_until(lambda: _letters_if(nc, subjects, "corrupt"), timeout=30)
    assert "history vanished: the journal holds 0 events where this worker saw" in letter.reason
    assert await Journal(nc, subjects).load(rid) == []  # nothing written on


async def test_audit_all_notices_a_run_whose_whole_journal_vanished(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """Without PostgreSQL, `audit verify --all` still reports a run whose journal is
    gone entirely: the run index (tagged by the worker at the run's start) knows it."""
    from projections import audit
    from tests.apps import registry

    async with running(nc, subjects, registry, forced_replay=forced_replay) as h:
        rid = await h.client.start("chain", 2, run_id="gone-later")
        assert await h.client.result(rid, timeout=20) == 2
    assert (await audit(nc, subjects, None, keys=h.keys)).ok
    await api_request(nc, f"$JS.API.STREAM.DELETE.{subjects.journal_stream}")
    await ensure_topology(nc, subjects)
    report = await audit(nc, subjects, None, keys=h.keys)
    (problem,) = report.problems
    assert (problem.run_id, problem.source, problem.kind) == (rid, "index", "vanished")
