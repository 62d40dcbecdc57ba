"""Property: any workflow program replays to the same decisions and output.

An in-memory driver (in addition to the real-server tests) runs random programs
of steps, effects, nested gathers and deterministic values, delivering effect
results in random orders, then replays the journal it produced through ``Replayer``,
as a worker does after a crash and as ``mainspring replay`` does in CI.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Context, Registry, Replayer
from actors._commands import EffectCmd, MarkerCmd, StepCmd
from schemas import (
    EffectCompleted,
    EffectRequested,
    JournalEvent,
    MarkerRecorded,
    RunCompleted,
    RunStarted,
    StepCompleted,
)

Op = Any
ops = st.recursive(
    st.one_of(
        st.tuples(st.just("step"), st.integers(0, 9)),
        st.tuples(st.just("effect"), st.integers(0, 9)),
        st.tuples(st.just("random")),
        st.tuples(st.just("now")),
        st.tuples(st.just("patched"), st.sampled_from(["a", "b"])),
    ),
    lambda inner: st.tuples(st.just("gather"), st.lists(st.lists(inner, max_size=3), max_size=3)),
    max_leaves=12,
)
programs = st.lists(ops, max_size=8)


async def interpret(ctx: Context, program: list[Op]) -> list[Any]:
    out: list[Any] = []
    for op in program:
        kind = op[0]
        if kind == "step":
            out.append(await ctx.step(lambda v: v * 10, op[1], name=f"s{op[1]}"))
        elif kind == "effect":
            out.append(await ctx.effect("calc.echo", op[1]))
        elif kind == "random":
            out.append(round(ctx.random(), 6))
        elif kind == "now":
            out.append(ctx.now().isoformat())
        elif kind == "patched":
            out.append(ctx.patched(op[1]))
        else:
            out.append(await ctx.gather(*(interpret(ctx, sub) for sub in op[1])))
    return out


def _registry(program: list[Op]) -> Registry:
    reg = Registry()

    @reg.workflow(name="p")
    async def p(ctx: Context, _: None) -> list[Any]:
        return await interpret(ctx, program)

    return reg


def _started() -> RunStarted:
    return RunStarted(
        run_id="prop", n=1, at=datetime(2026, 1, 1, tzinfo=UTC), workflow="p", version="1"
    )


def run_live(program: list[Op], rng: random.Random) -> tuple[list[JournalEvent], Any]:
    """Drive a machine like the actor does; deliver effect results in a random order.

    The machine starts as the actor starts a new run (``Replayer.resume`` with nothing
    to replay); the journaling loop is the actor's job, not the Replayer's, so it is
    written out here (a real actor needs a server: tests/test_replay.py)."""
    started = _started()
    journal: list[JournalEvent] = [started]
    m = Replayer(_registry(program)).resume([started])
    outstanding: list[EffectRequested] = []
    clock = started.at

    def append(ev: JournalEvent) -> None:
        nonlocal clock
        clock += timedelta(milliseconds=1)
        ev = msgspec.structs.replace(ev, n=len(journal) + 1, at=clock)
        journal.append(ev)
        m.feed(ev)

    while True:
        while m.pending:
            cmd = m.pending[0]
            if isinstance(cmd, StepCmd):
                result = msgspec.json.encode(cmd.fn(*cmd.args))
                append(
                    StepCompleted(
                        run_id="prop",
                        n=0,
                        at=clock,
                        seq=cmd.seq,
                        name=cmd.name,
                        result=msgspec.Raw(result),
                    )
                )
            elif isinstance(cmd, EffectCmd):
                req = EffectRequested(
                    run_id="prop",
                    n=0,
                    at=clock,
                    seq=cmd.seq,
                    effect_id=f"prop.fx.{cmd.seq}",
                    kind=cmd.kind,
                    payload=msgspec.Raw(cmd.payload),
                )
                append(req)
                outstanding.append(req)
            else:
                assert isinstance(cmd, MarkerCmd)
                append(MarkerRecorded(run_id="prop", n=0, at=clock, seq=cmd.seq, patch=cmd.patch))
        if not outstanding:
            break
        req = outstanding.pop(rng.randrange(len(outstanding)))
        value = msgspec.json.decode(req.payload) + 1000
        append(
            EffectCompleted(
                run_id="prop",
                n=0,
                at=clock,
                seq=req.seq,
                effect_id=req.effect_id,
                result=msgspec.Raw(str(value).encode()),
            )
        )
    assert m.nondeterminism is None
    assert m.main is not None
    assert m.main.done()
    output = m.main.result()
    m.close()  # the actor journals the run's end without feeding it back
    raw = msgspec.Raw(msgspec.json.encode(output))
    journal.append(RunCompleted(run_id="prop", n=len(journal) + 1, at=clock, output=raw))
    return journal, output


def replay(program: list[Op], journal: list[JournalEvent]) -> Any:
    """The output of the code replayed through the journal, as a worker rebuilds it."""
    m = Replayer(_registry(program)).resume(journal)
    try:
        assert m.nondeterminism is None, m.nondeterminism
        assert not m.pending, "replay wanted to do new work"
        assert m.main is not None
        assert m.main.done()
        return m.main.result()
    finally:
        m.close()


@settings(max_examples=150, deadline=None)
@given(program=programs, seed=st.integers(0, 2**32 - 1))
def test_any_program_replays_identically(program: list[Op], seed: int) -> None:
    """Replaying the journal of a run yields the same decisions and the same output."""
    journal, live_output = run_live(program, random.Random(seed))
    verdict = Replayer(_registry(program)).check(journal)
    assert verdict.ok, verdict.problem
    assert replay(program, journal) == live_output


@settings(max_examples=60, deadline=None)
@given(program=programs, seed=st.integers(0, 2**32 - 1), cut=st.floats(0, 1))
def test_any_prefix_replays_then_continues(program: list[Op], seed: int, cut: float) -> None:
    """A crash after any append leaves a prefix that replays without divergence."""
    journal, _ = run_live(program, random.Random(seed))
    prefix = journal[: max(1, int(len(journal) * cut))]
    verdict = Replayer(_registry(program)).check(prefix)
    assert verdict.ok, verdict.problem
