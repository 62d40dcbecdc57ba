"""Workflows and handlers shared by tests and benchmarks (importable by worker subprocesses
as ``tests.apps:registry`` and ``tests.apps:handlers``).

The one set: bench/ serves these too, so a workload and the test that proves its
behaviour run the same code. tests/changed_apps.py is not a copy but a deliberately
incompatible new version of `agent`, for replay tests."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import anyio
import msgspec

import mainspring as ms

registry = ms.Registry()
handlers = ms.Handlers()


class Approval(msgspec.Struct):
    approved: bool
    by: str = ""


@registry.workflow
async def chain(ctx: ms.Context, n: int) -> int:
    """n journaled local steps, each adding one (also benchmarks W1, W2, W6)."""
    x = 0
    for _ in range(n):
        x = await ctx.step(lambda v: v + 1, x, name="inc")
    return x


class SlowChain(msgspec.Struct):
    file: str
    steps: int = 10
    delay: float = 0.05


@registry.workflow
async def slow_chain(ctx: ms.Context, inp: SlowChain) -> int:
    """Steps that sleep and append `run,step` to a file: the side effect W4 counts."""
    path = Path(inp.file)

    async def side_effect(i: int) -> int:
        await anyio.sleep(inp.delay)  # the step's work: slow enough for a kill to land mid-run
        with path.open("a") as f:
            f.write(f"{ctx.run_id},{i}\n")
        return i

    for i in range(inp.steps):
        await ctx.step(side_effect, i, name="side_effect")
    return inp.steps


@registry.workflow
async def agent(ctx: ms.Context, topic: str) -> dict[str, object]:
    """Effect, then wait for approval, then finish."""
    draft = await ctx.effect("llm.mock", {"prompt": f"write about {topic}"})
    approval = await ctx.wait_event("approval", Approval, timeout=timedelta(minutes=5))
    return {"draft": draft, "approved": approval.approved, "by": approval.by}


@registry.workflow
async def wait_go(ctx: ms.Context, _: None) -> object:
    """Wait for `go` (any JSON, no deadline) and return its payload (benchmarks W3, late)."""
    return await ctx.wait_event("go", dict)


@registry.workflow
async def fanout(ctx: ms.Context, n: int) -> int:
    results = await ctx.gather(*(ctx.effect("math.double", i) for i in range(n)))
    return sum(results)


@registry.workflow
async def sleeper(ctx: ms.Context, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "woke"


@registry.workflow
async def once(ctx: ms.Context, path: str) -> object:
    """One effect that appends a line to a file (the side effect crash tests count)."""
    return await ctx.effect("file.append", {"path": path, "line": ctx.run_id})


@handlers.handler("llm.mock")
async def llm_mock(payload: dict[str, str]) -> str:
    return "DRAFT: " + payload["prompt"]


@handlers.handler("math.double", ack_wait_s=float(os.environ.get("MS_ACK_WAIT", "30")))
async def double(x: int) -> int:
    return x * 2


@handlers.handler("file.append", ack_wait_s=float(os.environ.get("MS_ACK_WAIT", "30")))
async def file_append(payload: dict[str, str], ctx: ms.EffectContext) -> int:
    """Append a line, then linger (so a test can kill us mid-effect)."""
    with Path(payload["path"]).open("a") as f:
        f.write(f"{payload['line']},{ctx.delivery}\n")
    await anyio.sleep(float(os.environ.get("MS_LINGER", "0")))
    return ctx.delivery


@registry.workflow
async def waiter(ctx: ms.Context, timeout: float) -> object:
    """Wait for `go` (typed); report a timeout instead of failing."""
    try:
        ev = await ctx.wait_event("go", Approval, timeout=timeout)
    except ms.WaitTimeoutError:
        return "timed out"
    return {"approved": ev.approved, "by": ev.by}


@registry.workflow
async def two_waits(ctx: ms.Context, _: None) -> list[object]:
    """Two waits for the same event name: each consumes one event, in order."""
    first = await ctx.wait_event("tick", int)
    await ctx.sleep(0.05)  # a durable timer: the second tick may come while no wait is open
    second = await ctx.wait_event("tick", int)
    return [first, second]


@registry.workflow
async def parent(ctx: ms.Context, n: int) -> list[int]:
    kids = [ctx.child("chain", i) for i in range(1, n + 1)]
    return await ctx.gather(*kids)


@registry.workflow
async def recurse(ctx: ms.Context, depth: int) -> int:
    """Starts a child of itself until depth 0 (bounded by max_depth)."""
    if depth == 0:
        return 0
    below: int = await ctx.child("recurse", depth - 1)
    return 1 + below


@registry.workflow
async def deterministic_values(ctx: ms.Context, _: None) -> dict[str, object]:
    """random/uuid/now as computed now, as a step journaled them when it first ran (the
    same unless replay changes them), and random once more after the step."""
    now = [ctx.random(), str(ctx.uuid()), ctx.now().isoformat()]
    journaled = await ctx.step(lambda: now, name="record")
    return {"now": now, "journaled": journaled, "after": ctx.random()}


@registry.workflow
async def step_fails(ctx: ms.Context, _: None) -> str:
    def boom() -> None:
        raise ValueError("no good")

    try:
        await ctx.step(boom)
    except ms.StepFailedError as e:
        return f"caught {e.error.type}: {e.error.message}"
    return "unreachable"


@registry.workflow
async def flaky_effect(ctx: ms.Context, inp: dict[str, object]) -> object:
    return await ctx.effect(
        "flaky",
        inp,
        retry=ms.RetryPolicy(max_attempts=4, initial_backoff_s=0.01),
        timeout=float(inp.get("timeout", 5)),  # type: ignore[arg-type]
    )


@registry.workflow
async def nested_gather(ctx: ms.Context, _: None) -> list[object]:
    async def branch(tag: str) -> str:
        a = await ctx.effect("math.double", 1)
        b = await ctx.step(lambda: tag, name="tag")
        return f"{b}{a}"

    return await ctx.gather(branch("x"), branch("y"), ctx.effect("math.double", 21))


_flaky_calls: dict[str, int] = {}


@handlers.handler("flaky")
async def flaky(payload: dict[str, object], ctx: ms.EffectContext) -> dict[str, int]:
    """Fails `fail_times` attempts; `terminal` fails for good; `sleep` overruns timeouts."""
    _flaky_calls[ctx.effect_id] = _flaky_calls.get(ctx.effect_id, 0) + 1
    if payload.get("terminal"):
        raise ms.TerminalError("refused for good", type="flaky.refused")
    if payload.get("sleep"):
        await anyio.sleep(float(payload["sleep"]))  # type: ignore[arg-type]
    if ctx.attempt <= int(payload.get("fail_times", 0)):  # type: ignore[call-overload]
        raise RuntimeError(f"transient failure {ctx.attempt}")
    return {"attempt": ctx.attempt}


@registry.workflow
async def once_amo(ctx: ms.Context, path: str) -> object:
    """Like `once`, but the effect must never run twice."""
    return await ctx.effect("file.append", {"path": path, "line": ctx.run_id}, at_most_once=True)


class Mixed(msgspec.Struct):
    file: str
    rounds: int = 3


@registry.workflow
async def mixed(ctx: ms.Context, inp: Mixed) -> int:
    """Steps, effects and timers interleaved (the soak test's workload)."""
    total = 0
    for i in range(inp.rounds):

        def record(i: int = i) -> int:
            with Path(inp.file).open("a") as f:
                f.write(f"{ctx.run_id},{i}\n")
            return i

        total += await ctx.step(record, name="record")
        total += await ctx.effect("math.double", i)
        await ctx.sleep(0.05)
    return total


@registry.workflow
async def ask(ctx: ms.Context, question: str) -> str:
    """One LLM call through the built-in llm.chat handler, with a fallback chain."""
    answer = await ctx.effect(
        "llm.chat",
        {
            "messages": [{"role": "user", "content": question}],
            "models": ["big-model", "small-model"],
        },
    )
    return str(answer["content"])


class Gated(msgspec.Struct):
    entered: str
    gate: str
    first: float = 1.0
    second: float = 3.0


@registry.workflow
async def gated_timers(ctx: ms.Context, inp: Gated) -> str:
    """A step that holds its actor busy until the test opens a gate, then two timers."""

    async def hold() -> None:
        await anyio.Path(inp.entered).touch()
        gate = anyio.Path(inp.gate)
        with anyio.fail_after(60):
            while not await gate.exists():  # noqa: ASYNC110 - the gate is a file another process makes
                await anyio.sleep(0.02)

    await ctx.step(hold, name="hold")
    await ctx.sleep(inp.first)
    await ctx.sleep(inp.second)
    return "done"


class ChaosJob(msgspec.Struct):
    """One run of the chaos test's workload (tests/chaos.py)."""

    file: str
    """side file: every step and effect execution appends a line (duplicates are counted)"""
    rounds: int = 2
    delay: float = 0.1
    """seconds each step holds its actor busy (so partition moves hit busy actors)"""
    nap: float = 0.1
    at_most_once: bool = False
    child: bool = False
    wait: bool = True
    hold: bool = False
    """wait for an event nobody sends: the run only ends when it is cancelled"""


class ChaosFx(msgspec.Struct):
    file: str
    key: str
    value: int


async def _busy_step(file: str, run_id: str, i: int, delay: float) -> int:
    await anyio.sleep(delay)  # holds the actor busy, so partition moves hit busy actors
    with Path(file).open("a") as f:
        f.write(f"step,{run_id},{i}\n")
    return i + 1


@registry.workflow
async def chaos(ctx: ms.Context, job: ChaosJob) -> int:
    """Rounds of (busy step, then an effect and a timer together), maybe a child run
    (this workflow again, one round), then a resume event: the chaos test's workload."""
    total = 0
    for i in range(job.rounds):
        total += await ctx.step(_busy_step, job.file, ctx.run_id, i, job.delay, name="busy")
        key = f"{'amo' if job.at_most_once else 'alo'},{ctx.run_id},{i}"
        payload = ChaosFx(job.file, key, i + 1)
        doubled, _ = await ctx.gather(
            ctx.effect("chaos.fx", payload, at_most_once=job.at_most_once), ctx.sleep(job.nap)
        )
        total += doubled
    if job.child:
        kid = msgspec.structs.replace(job, rounds=1, child=False, wait=job.hold)
        total += await ctx.child("chaos", kid, run_id=f"{ctx.run_id}-kid")
    if job.wait:
        total += await ctx.wait_event("never" if job.hold else "go", int)
    return total


@handlers.handler("chaos.fx")
async def chaos_fx(payload: ChaosFx, ctx: ms.EffectContext) -> int:
    """Append `fx,<key>,<delivery>` (each execution counts), return the value doubled."""
    with Path(payload.file).open("a") as f:
        f.write(f"fx,{payload.key},{ctx.delivery}\n")
    return 2 * payload.value


BROKEN: set[str] = set()
"""Names whose `Fragile` input makes the worker itself fail (a bug a message triggers)."""


class Fragile(msgspec.Struct):
    name: str

    def __post_init__(self) -> None:
        if self.name in BROKEN:
            raise RuntimeError(f"bug triggered by {self.name}")


@registry.workflow
async def fragile(ctx: ms.Context, inp: Fragile) -> str:
    return inp.name


@handlers.handler("crash.hard", ack_wait_s=1.0, max_deliveries=2)
async def crash_hard(payload: dict[str, object]) -> str:
    """Kills its own process, every time (a handler bug that no retry fixes)."""
    os._exit(17)


@registry.workflow
async def crash_effect(ctx: ms.Context, _: None) -> str:
    """One effect whose handler always crashes; reports how the effect ended."""
    try:
        await ctx.effect("crash.hard", {})
    except ms.EffectFailedError as e:
        return e.error.type
    return "completed"


# --- benchmarks W8 (effects through a handler process) and W9 (agent-shaped runs) ------

BENCH_HANDLER_CONCURRENCY = int(os.environ.get("MS_BENCH_HANDLER_CONCURRENCY", "64"))
"""Max in-flight requests per handler process of the bench.* kinds (bench/_env.py sets
it to at least the effects a workload has in flight, so no request queues for a slot)."""
LLM_S = 0.05
"""what the LLM-like handler of W9 sleeps"""
TOOL_S = 0.005
"""what each tool handler of W9 sleeps"""


@registry.workflow
async def echo_chain(ctx: ms.Context, n: int) -> int:
    """n sequential effects to `bench.echo`; returns how many came back unchanged (W8)."""
    intact = 0
    for i in range(n):
        intact += await ctx.effect("bench.echo", i) == i
    return intact


@handlers.handler("bench.echo", concurrency=BENCH_HANDLER_CONCURRENCY)
async def bench_echo(payload: object) -> object:
    """The trivial handler: its payload back (W8 times the effect path, not the work)."""
    return payload


class Worked(msgspec.Struct):
    """A W9 handler's result: the seconds its work took, measured inside the handler."""

    seconds: float


async def _work(seconds: float) -> Worked:
    t0 = time.perf_counter()
    await anyio.sleep(seconds)
    return Worked(time.perf_counter() - t0)


@handlers.handler("bench.llm", concurrency=BENCH_HANDLER_CONCURRENCY)
async def bench_llm(_: None) -> Worked:
    """LLM-like work: 50 ms of waiting on someone else (W9)."""
    return await _work(LLM_S)


@handlers.handler("bench.tool", concurrency=BENCH_HANDLER_CONCURRENCY)
async def bench_tool(_: None) -> Worked:
    """A quick tool call: 5 ms (W9)."""
    return await _work(TOOL_S)


@registry.workflow
async def agent_turn(ctx: ms.Context, _: None) -> float:
    """W9's agent-shaped run, one step after the other: an LLM-like effect, two tool
    effects, a wait for `approval`, one more LLM-like effect. Returns the seconds of work
    the handlers measured inside themselves, summed (what the run cannot be faster than)."""
    worked: list[Worked] = []
    for kind in ("bench.llm", "bench.tool", "bench.tool"):
        worked.append(await ctx.effect(kind, result_type=Worked))
    await ctx.wait_event("approval", Approval)
    worked.append(await ctx.effect("bench.llm", result_type=Worked))
    return sum(w.seconds for w in worked)


@registry.workflow
async def across_hosts(ctx: ms.Context, n: int) -> int:
    """An effect, a timer, a resume event, another effect (the multi-host tests' run)."""
    doubled: int = await ctx.effect("math.double", n)
    await ctx.sleep(0.3)
    await ctx.wait_event("go", dict)
    again: int = await ctx.effect("math.double", doubled)
    return again
