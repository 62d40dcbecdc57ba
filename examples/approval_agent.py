"""An agent-like workflow: call an effect, wait for a human approval, then finish.

Run it with `./scripts/example` (or `python examples/approval_agent.py`). It starts
an embedded nats-server, a worker and an effect handler in this process, starts a
run, shows how anyone would resume it, approves it, and prints the journal.

Against your own server: `MAINSPRING_NATS_URL=nats://host:4222 python examples/approval_agent.py`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import msgspec
import nats

import mainspring as ms
from mainspring._logging import configure_logging
from mainspring._shutdown import until_signalled

registry = ms.Registry()
handlers = ms.Handlers()


class Approval(msgspec.Struct):
    approved: bool
    by: str = ""
    note: str = ""


class Report(msgspec.Struct):
    topic: str
    draft: str
    published: bool
    reviewer: str


@registry.workflow(name="write_report", version="1")
async def write_report(ctx: ms.Context, topic: str) -> Report:
    # An effect: done by a handler service (any process, any language), journaled.
    draft: str = await ctx.effect("llm.draft", {"topic": topic}, timeout=30)
    # A durable wait: survives restarts; resumed by anyone publishing JSON.
    try:
        decision = await ctx.wait_event("approval", Approval, timeout=timedelta(days=3))
    except ms.WaitTimeoutError:
        return Report(topic=topic, draft=draft, published=False, reviewer="nobody (timed out)")
    if decision.approved:
        await ctx.effect("blog.publish", {"topic": topic, "text": draft})
    return Report(topic=topic, draft=draft, published=decision.approved, reviewer=decision.by)


@handlers.handler("llm.draft")
async def draft(payload: dict[str, str], fx: ms.EffectContext) -> str:
    # A real handler would call an LLM here, passing fx.effect_id as idempotency key.
    return f"Five surprising facts about {payload['topic']} (draft {fx.effect_id})"


@handlers.handler("blog.publish")
async def publish(payload: dict[str, str]) -> str:
    return f"published '{payload['topic']}'"


def say(text: str) -> None:
    print(text, flush=True)


async def main() -> int:
    configure_logging("warning")
    url = os.environ.get("MAINSPRING_NATS_URL")
    if url is not None:
        return await stoppable(run_example, url)
    # The embedded server's data lives as long as the example: the directory goes on
    # success, on failure and on Ctrl-C or SIGTERM (the server is stopped first).
    with tempfile.TemporaryDirectory(prefix="mainspring-example-") as store:
        server = ms.NatsServer(store)

        def force() -> None:  # a second Ctrl-C: no time for a clean stop
            server.kill()
            shutil.rmtree(store, ignore_errors=True)

        try:
            server.start()
            say(f"started an embedded nats-server at {server.url} (data in {store})")
            return await stoppable(run_example, server.url, on_force=force)
        finally:
            server.stop()


async def stoppable(
    body: Callable[[str], Awaitable[bool]], url: str, on_force: Callable[[], None] | None = None
) -> int:
    """Run ``body(url)``; SIGINT or SIGTERM cancels it cleanly (exit code 130)."""
    finished = await until_signalled(lambda: body(url), on_force=on_force)
    return 130 if finished is None else 0


async def run_example(url: str) -> bool:
    nc = await nats.connect(url)
    client = ms.Client(nc)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(ms.Worker(nc, registry).run)
            await tg.start(ms.HandlerService(nc, handlers).run)

            run_id = await client.start("write_report", "sea otters")
            say(f"started run {run_id}")
            status = await client.wait_for(run_id, "waiting", timeout=30)
            say(f"run {run_id} is {status.status} for {status.waiting_for}")
            subject = client.subjects.event(run_id, "approval")
            say("anyone can resume it, e.g. with the nats CLI:")
            say(f'    nats pub {subject} \'{{"approved": true, "by": "ada"}}\'')
            say("approving it now from this process...")
            await client.send_event(run_id, "approval", {"approved": True, "by": "ada"})
            report = await client.result(run_id, timeout=30, output_type=Report)
            say(f"completed: published={report.published} reviewer={report.reviewer}")
            say(f"draft: {report.draft}")
            say("journal (the source of truth, hash-chained):")
            for stored in await client.history(run_id):
                tag = type(stored.event).__struct_config__.tag
                say(f"  {stored.n:>2}  {tag:<18} h={stored.hash.hex()[:16]}…")
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await nc.close()
    return True


if __name__ == "__main__":
    try:
        sys.exit(anyio.run(main))
    except ms.MainspringError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(20)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        sys.exit(130)
