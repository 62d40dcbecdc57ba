"""A deliberately incompatible version of tests.apps' `agent` workflow (for replay tests)."""

from __future__ import annotations

import mainspring as ms

registry = ms.Registry()


@registry.workflow
async def agent(ctx: ms.Context, topic: str) -> str:
    """Now asks for approval *before* drafting: incompatible with recorded runs."""
    await ctx.wait_event("approval")
    draft: str = await ctx.effect("llm.mock", {"prompt": topic})
    return draft
