"""Payloads of any size (DESIGN.md §10): large values go to the object store by reference,
values over the cap end in a terminal payload_too_large, audits check the objects.

Each case that runs a workflow runs live and under forced replay, or says why not."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

import mainspring as ms
from actors import Registry, Worker, WorkerOptions
from client import Client
from flows import flow_registry
from handlers import HandlerService, builtin_handlers
from projections import audit, export_run, verify_export
from schemas import (
    EffectFailed,
    EffectRequested,
    EffectResult,
    RunCompleted,
    StepFailed,
    decode_event,
    decode_inbox,
    encode_inbox,
    is_ref,
    parse_ref,
    ref_json,
    ref_of,
    stored_refs,
)
from streams import Journal, Objects, PayloadLimits, StoredEvent, Subjects
from tests.harness import (
    assert_journal_sound,
    events_of,
    running,
    sharded,  # noqa: F401  (the shards fixture: 1 and 4)
    wait_status,
)
from tests.procs import acli, cli, conn_args

pytestmark = [pytest.mark.anyio, pytest.mark.replayed]
MB = 1024 * 1024
SMALL = PayloadLimits(threshold=16 * 1024, cap=256 * 1024)
GOLDEN = Path(__file__).parent / "golden" / "refs-v1.jsonl"
AUDIT_ONLY = (
    "audit of a finished journal: the run only writes it (the same run replays in "
    "test_user_value_that_reads_as_a_reference_round_trips)"
)

registry = Registry()
handlers = ms.Handlers()
calls: list[str] = []


@registry.workflow
async def big(ctx: ms.Context, inp: dict[str, Any]) -> dict[str, Any]:
    """Every kind of payload, large: input, effect payload and result, step, event, output."""
    made = await ctx.effect("blob.make", {"data": inp["data"], "n": inp["result_size"]})
    step = await ctx.step(lambda: "s" * inp["step_size"], name="big_step")
    event = await ctx.wait_event("blob")
    return {"input": inp["data"], "effect": made, "step": step, "event": event}


@registry.workflow
async def too_large_result(ctx: ms.Context, at_most_once: bool) -> str:
    """Reports how an effect whose result is over the cap ended."""
    try:
        await ctx.effect("blob.make", {"data": "x", "n": 300 * 1024}, at_most_once=at_most_once)
    except ms.EffectFailedError as e:
        return e.error.type
    return "completed"


@registry.workflow
async def too_large_step(ctx: ms.Context, size: int) -> str:
    """Reports how a step whose result is over the cap ended."""
    try:
        await ctx.step(lambda: "s" * size, name="huge")
    except ms.StepFailedError as e:
        return str(e.error.type)
    return "completed"


@registry.workflow
async def too_large_output(ctx: ms.Context, size: int) -> str:
    """Returns an output of ``size`` characters."""
    return "o" * size


@registry.workflow
async def lookalike(ctx: ms.Context, value: dict[str, Any]) -> dict[str, Any]:
    """Returns, through a step, a user value that reads like a reference."""
    echoed: dict[str, Any] = await ctx.step(lambda: value, name="echo")
    return echoed


@registry.workflow
async def parent(ctx: ms.Context, blob: str) -> dict[str, Any]:
    """Hands a large input to a child run and returns the child's (large) output."""
    out: dict[str, Any] = await ctx.child("lookalike", {"blob": blob})
    return out


@handlers.handler("blob.make")
async def make(payload: dict[str, Any]) -> str:
    data: str = payload["data"]
    size: int = payload["n"]
    calls.append(data[:8])
    return ("r" + data)[:size].ljust(size, "r")


@asynccontextmanager
async def serving(
    nc: NATS,
    subjects: Subjects,
    *,
    payloads: PayloadLimits | None = None,
    forced_replay: bool = False,
) -> AsyncIterator[Client]:
    limits = payloads or PayloadLimits()
    opts = WorkerOptions(forced_replay=forced_replay, lease_ttl_s=3.0, payloads=limits)
    async with anyio.create_task_group() as tg:
        await tg.start(Worker(nc, registry, subjects=subjects, options=opts).run)
        await tg.start(HandlerService(nc, handlers, subjects=subjects, payloads=limits).run)
        try:
            yield Client(nc, subjects, payloads=limits)
        finally:
            tg.cancel_scope.cancel()


def _stored(events: list[StoredEvent], tag: str) -> StoredEvent:
    return next(e for e in events if type(e.event).__struct_config__.tag == tag)


async def _finish_big(client: Client, run_id: str, event: str) -> dict[str, Any]:
    await wait_status(client, run_id, "waiting", timeout=60)
    await client.send_event(run_id, "blob", event)
    out: dict[str, Any] = await client.result(run_id, timeout=60)
    return out


async def test_large_values_round_trip_by_reference(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A 5 MB input, 2 MB effect result, 1 MB step result and 2 MB event round-trip
    unchanged through a real worker and handler; the journal holds references only."""
    data = "d" * (5 * MB)
    event = "e" * (2 * MB)
    async with serving(nc, subjects, forced_replay=forced_replay) as client:
        rid = await client.start(
            "big", {"data": data, "result_size": 2 * MB, "step_size": MB}, run_id="r-big"
        )
        out = await _finish_big(client, rid, event)
    effect = ("r" + data)[: 2 * MB]
    assert out == {"input": data, "effect": effect, "step": "s" * MB, "event": event}
    journal = Journal(nc, subjects)
    stored = await journal.load(rid, resolve=False)
    assert_journal_sound(rid, stored)
    for tag in (
        "run.started",
        "effect.requested",
        "effect.completed",
        "step.completed",
        "event.received",
        "run.completed",
    ):
        found = _stored(stored, tag)
        assert len(found.data) < 4096, f"{tag} is stored inline ({len(found.data)} bytes)"
        assert stored_refs(found.data), f"{tag} holds no reference"
    resolved = await journal.load(rid)
    completed = resolved[-1].event
    assert isinstance(completed, RunCompleted)
    assert msgspec.json.decode(completed.output) == out


async def test_child_input_and_output_go_by_reference(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A large child input and output round-trip; the parent's journal and the messages
    between the runs hold references."""
    blob = "c" * (2 * MB)
    async with serving(nc, subjects, forced_replay=forced_replay) as client:
        rid = await client.start("parent", blob, run_id="r-parent")
        assert await client.result(rid, timeout=60) == {"blob": blob}
    stored = await Journal(nc, subjects).load(rid, resolve=False)
    for tag in ("child.started", "child.completed"):
        assert stored_refs(_stored(stored, tag).data), f"{tag} holds no reference"


@pytest.mark.live_only("no run: the object store alone")
async def test_same_value_is_stored_once(nc: NATS, subjects: Subjects) -> None:
    """Objects are content-addressed: the same bytes stored twice are one object."""
    await ms.Client(nc, subjects)._ensure()
    objects = Objects(nc, subjects)
    value = b'"' + b"v" * 300_000 + b'"'
    first = await objects.put(value)
    info = await nc.jetstream().stream_info(subjects.object_stream)
    again = await objects.put(value)
    assert again == first
    assert first.ref == "sha256:" + hashlib.sha256(value).hexdigest()
    assert (await nc.jetstream().stream_info(subjects.object_stream)).state.messages == (
        info.state.messages
    )
    assert await objects.get(first) == value


@pytest.mark.parametrize("at_most_once", [False, True], ids=["retried", "at-most-once"])
async def test_result_over_cap_fails_effect_once(
    nc: NATS, subjects: Subjects, at_most_once: bool, forced_replay: bool
) -> None:
    """A result over the cap fails the effect with payload_too_large: the handler runs once,
    nothing is retried or redelivered, and at-most-once does not say interrupted."""
    calls.clear()
    async with serving(nc, subjects, payloads=SMALL, forced_replay=forced_replay) as client:
        rid = await client.start("too_large_result", at_most_once)
        assert await client.result(rid, timeout=30) == "payload_too_large"
        info = await nc.jetstream().consumer_info(
            subjects.run_journal_stream(rid), subjects.effect_consumer("blob.make")
        )
    assert calls == ["x"]
    assert info.num_redelivered == 0
    assert info.num_ack_pending == 0
    failed = events_of(await Journal(nc, subjects).load(rid), EffectFailed)
    assert [(f.error.type, f.attempts) for f in failed] == [("payload_too_large", 1)]
    assert "307,202 bytes" in failed[0].error.message
    assert "262,144 bytes" in failed[0].error.message
    assert failed[0].error.details == {"size": 307_202, "cap": 262_144}


async def test_step_result_and_output_over_cap_fail(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A step result over the cap fails the step (payload_too_large, catchable); an output
    over the cap fails the run with it. Values between threshold and cap are fine."""
    async with serving(nc, subjects, payloads=SMALL, forced_replay=forced_replay) as client:
        step = await client.start("too_large_step", 300 * 1024)
        assert await client.result(step, timeout=30) == "payload_too_large"
        ok = await client.start("too_large_step", 200 * 1024)
        assert await client.result(ok, timeout=30) == "completed"
        out = await client.start("too_large_output", 300 * 1024)
        with pytest.raises(ms.RunFailedError) as failed:
            await client.result(out, timeout=30)
    assert failed.value.error.type == "payload_too_large"
    assert "over the payload cap of 262,144 bytes" in failed.value.error.message
    step_failed = events_of(await Journal(nc, subjects).load(step), StepFailed)
    assert [s.error.type for s in step_failed] == ["payload_too_large"]


@pytest.mark.live_only("no run: the client refuses the input before it sends anything")
async def test_client_refuses_input_over_cap(nc: NATS, subjects: Subjects) -> None:
    """The client checks an input against the cap before publishing anything."""
    client = Client(nc, subjects, payloads=SMALL)
    with pytest.raises(ms.PayloadTooLarge, match=r"the input of run r-x is 300,002 bytes"):
        await client.start("big", "x" * 300_000, run_id="r-x")
    with pytest.raises(ms.PayloadTooLarge, match="over the payload cap of 262,144 bytes"):
        await client.send_event("r-x", "blob", "x" * 300_000)
    with pytest.raises(nats.js.errors.NotFoundError):  # nothing was sent, not even set up
        await nc.jetstream().stream_info(subjects.inbox_stream)


async def test_user_value_that_reads_as_a_reference_round_trips(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """A user value shaped like a reference is never mistaken for one: it is stored by
    reference itself and comes back as it was."""
    value = {"$ms_ref": "sha256:" + "0" * 64, "size": 3}
    async with serving(nc, subjects, forced_replay=forced_replay) as client:
        rid = await client.start("lookalike", value)
        assert await client.result(rid, timeout=30) == value


async def test_objects_interoperate_with_nats_object_store(
    nc: NATS, subjects: Subjects, forced_replay: bool
) -> None:
    """The bucket is a standard NATS object store: what Mainspring stores any client reads
    by digest, and a result a foreign handler stored and referenced reaches the workflow."""
    async with serving(nc, subjects, forced_replay=forced_replay) as client:
        rid = await client.start(
            "big", {"data": "f" * MB, "result_size": 10, "step_size": 1}, run_id="r-foreign"
        )
        await wait_status(client, rid, "waiting", timeout=30)
        obs = await nc.jetstream().object_store(subjects.object_bucket)
        started = (await Journal(nc, subjects).load(rid, resolve=False))[0]
        ref = ref_of(started.event)
        assert ref is not None
        got = await obs.get(ref.digest)
        assert got.data is not None
        assert hashlib.sha256(got.data).hexdigest() == ref.digest
        # a raw publisher (another language) sends a large event by reference
        value = json.dumps({"from": "go", "blob": "g" * 400_000}).encode()
        digest = hashlib.sha256(value).hexdigest()
        await obs.put(digest, value)
        await nc.publish(subjects.event(rid, "blob"), ref_json(digest, len(value)))
        out = await client.result(rid, timeout=30)
    assert out["event"] == json.loads(value)


@pytest.mark.live_only(AUDIT_ONLY)
async def test_audit_detects_replaced_and_missing_objects(nc: NATS, subjects: Subjects) -> None:
    """audit verify checks each referenced object against its digest: a replaced or deleted
    object is reported at the event that references it, naming the digest."""
    async with serving(nc, subjects) as client:
        rid = await client.start("lookalike", {"blob": "a" * 400_000}, run_id="r-audit")
        await client.result(rid, timeout=30)
    clean = await audit(nc, subjects, None, rid)
    assert clean.ok, clean.problems
    stored = await Journal(nc, subjects).load(rid, resolve=False)
    step = _stored(stored, "step.completed")
    ref = stored_refs(step.data)[0]
    obs = await nc.jetstream().object_store(subjects.object_bucket)
    await obs.put(ref.digest, b'{"blob":"forged"}')
    report = await audit(nc, subjects, None, rid)
    kinds = {(p.run_id, p.n, p.kind) for p in report.problems}
    assert (rid, step.n, "object-altered") in kinds
    assert any(ref.digest in p.detail for p in report.problems)
    await obs.delete(ref.digest)
    report = await audit(nc, subjects, None, rid)
    assert (rid, step.n, "object-missing") in {(p.run_id, p.n, p.kind) for p in report.problems}


@pytest.mark.live_only(AUDIT_ONLY)
async def test_export_carries_objects_and_verifies_offline(nc: NATS, subjects: Subjects) -> None:
    """audit export writes the referenced objects beside the events; the file verifies
    offline, and an altered or dropped object line is reported at its event."""
    async with serving(nc, subjects) as client:
        rid = await client.start("lookalike", {"blob": "b" * 400_000}, run_id="r-export")
        await client.result(rid, timeout=30)
    out = io.BytesIO()
    await export_run(nc, subjects, None, rid, out)
    lines = out.getvalue().splitlines()
    objects = [json.loads(line) for line in lines if json.loads(line)["kind"] == "object"]
    assert len(objects) == 1  # the input, step result and output are one value
    assert verify_export(lines, None).ok
    tampered = [
        line.replace(b"bbbb", b"bbbc", 1) if b'"kind":"object"' in line else line for line in lines
    ]
    report = verify_export(tampered, None)
    assert {p.kind for p in report.problems} == {"object-altered"}
    assert objects[0]["ref"] in report.problems[0].detail
    dropped = [line for line in lines if b'"kind":"object"' not in line]
    assert {p.kind for p in verify_export(dropped, None).problems} == {"object-missing"}


@pytest.mark.parametrize("line", GOLDEN.read_bytes().splitlines())
def test_golden_references_decode(line: bytes) -> None:
    """The reference form documented for other languages (docs/handlers.md) decodes, names
    a valid digest, and re-encodes byte for byte."""
    sample = json.loads(line)
    if sample["type"] in {"effect.result", "start", "child.done"}:
        message = decode_inbox(line)
        assert encode_inbox(message) == line
        ref = ref_of(message)
        assert isinstance(message, EffectResult) == (sample["type"] == "effect.result")
    else:
        event = decode_event(line)
        assert isinstance(event, EffectRequested | RunCompleted)
        ref = ref_of(event)
    assert ref is not None
    assert len(ref.digest) == 64
    assert ref.size > 0
    assert parse_ref(ref_json(ref.digest, ref.size)) == ref
    assert is_ref(b' { "$ms_ref" : "sha256:' + b"0" * 64 + b'", "size": 1}')
    assert not is_ref(b'{"size":1,"$ms_ref":"x"}')


ECHO_SPEC = """\
schema_version: mainspring/v1
workflow:
  id: echo_blob
  inputs:
    type: object
    required: [blob]
    properties: { blob: { type: string } }
  steps:
    - id: end
      kind: end
      result: { blob: "${inputs.blob}" }
"""


@pytest.mark.live_only(
    "the CLI's handling of a large input; the kernel's, under forced replay, is "
    "test_large_values_round_trip_by_reference"
)
async def test_cli_run_with_a_5mb_input_completes(
    nc: NATS, nats_server: ms.NatsServer, subjects: Subjects, tmp_path: Path
) -> None:
    """`mainspring run --input @5mb.json` completes and returns the value unchanged."""
    spec = tmp_path / "echo.yaml"
    spec.write_text(ECHO_SPEC)
    blob = "q" * (5 * MB)
    (tmp_path / "5mb.json").write_text(json.dumps({"blob": blob}))
    async with running(nc, subjects, flow_registry(), builtin_handlers(cli_allow="*")):
        out = await acli(
            "run",
            str(spec),
            "--input",
            f"@{tmp_path / '5mb.json'}",
            "--wait",
            "--json",
            *conn_args(nats_server, subjects),
        )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["result"] == {"blob": blob}


def test_cli_run_input_over_cap_exits_10(nats_server: ms.NatsServer, tmp_path: Path) -> None:
    """An input over the cap (64 MiB by default) is refused before anything is sent: exit
    10, one line naming the size and the cap, no traceback."""
    spec = tmp_path / "echo.yaml"
    spec.write_text(ECHO_SPEC)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "z" * (65 * MB)}))
    out = cli("run", str(spec), "--input", f"@{big}", "--nats-url", nats_server.url)
    assert out.returncode == 10, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert "over the payload cap of 67,108,864 bytes (64.0 MiB)" in out.stderr
    assert "is 68," in out.stderr  # the size: 65 MiB of blob plus the spec around it
