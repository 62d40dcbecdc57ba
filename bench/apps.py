"""Workflows the benchmarks run (imported by the worker subprocess as ``bench.apps:registry``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec

import mainspring as ms

registry = ms.Registry()


def _inc(v: int) -> int:
    return v + 1


@registry.workflow
async def chain10(ctx: ms.Context, n: int) -> int:
    """``n`` journaled local steps, each adding one (W1, W2)."""
    x = 0
    for _ in range(n):
        x = await ctx.step(_inc, x)
    return x


@registry.workflow
async def wait_go(ctx: ms.Context, _: None) -> Any:
    """Wait for the ``go`` event and return its payload (W3)."""
    return await ctx.wait_event("go", dict)


class SideEffects(msgspec.Struct):
    file: str
    steps: int = 10
    delay: float = 0.05


@registry.workflow
async def side_effects(ctx: ms.Context, inp: SideEffects) -> int:
    """Steps that sleep, then append ``run,step`` to a file: the side effect W4 counts."""
    path = Path(inp.file)

    async def side_effect(i: int) -> int:
        await anyio.sleep(inp.delay)
        with path.open("a") as f:
            f.write(f"{ctx.run_id},{i}\n")
        return i

    for i in range(inp.steps):
        await ctx.step(side_effect, i, name="side_effect")
    return inp.steps
