"""Workflows and handlers shared by tests (importable by worker subprocesses)."""

from __future__ import annotations

import os
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
    """n journaled local steps, each adding one."""
    x = 0
    for _ in range(n):
        x = await ctx.step(lambda v: v + 1, x, name="inc")
    return x


@registry.workflow
async def slow_chain(ctx: ms.Context, inp: dict[str, object]) -> int:
    """Steps that sleep and append `run,step` to a file: the side effect W4 counts."""
    path = Path(str(inp["file"]))
    steps = int(inp.get("steps", 10))  # type: ignore[call-overload]
    delay = float(inp.get("delay", 0.05))  # type: ignore[arg-type]

    async def side_effect(i: int) -> int:
        await anyio.sleep(delay)
        with path.open("a") as f:
            f.write(f"{ctx.run_id},{i}\n")
        return i

    for i in range(steps):
        await ctx.step(side_effect, i, name="side_effect")
    return steps


@registry.workflow
async def agent(ctx: ms.Context, topic: str) -> dict[str, object]:
    """Effect, then wait for approval, then finish."""
    draft = await ctx.effect("llm.mock", {"prompt": f"write about {topic}"})
    approval = await ctx.wait_event("approval", Approval, timeout=timedelta(minutes=5))
    return {"draft": draft, "approved": approval.approved, "by": approval.by}


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
    return await ctx.effect("file.append", {"path": path, "line": ctx.run_id},
                            at_most_once=bool(os.environ.get("MS_AT_MOST_ONCE")))


@handlers.handler("llm.mock")
async def llm_mock(payload: dict[str, str]) -> str:
    return "DRAFT: " + payload["prompt"]


@handlers.handler("math.double")
async def double(x: int) -> int:
    return x * 2


@handlers.handler("file.append", ack_wait_s=float(os.environ.get("MS_ACK_WAIT", "30")))
async def file_append(payload: dict[str, str], ctx: ms.EffectContext) -> int:
    """Append a line, then linger (so a test can kill us mid-effect)."""
    with Path(payload["path"]).open("a") as f:
        f.write(f"{payload['line']},{ctx.delivery}\n")
    await anyio.sleep(float(os.environ.get("MS_LINGER", "0")))
    return ctx.delivery
