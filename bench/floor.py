"""Floor: what the broker hops alone cost on this machine, with no Mainspring code.

Two probes against the same embedded nats-server, in this one process:

- acknowledged JetStream publishes per second with ``--in-flight`` (200) outstanding,
  through nats-py's ``request`` and through Mainspring's publish path
  (``streams.publish``): the most a Python process gets out of the broker here, which
  bounds W9 (every run needs 18 of them);
- a W3 resume done by hand: an event published (acked) into a work-queue stream, pulled
  by a consumer, two journal appends with the concurrency headers and a headers-only
  republish, the end heard by a subscriber, the last event read back by a direct get.
  W3 cannot be faster than this on the same machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import anyio
import nats
from nats.aio.client import Client as NATS

from bench._env import Environment, common_fields, log, percentile
from streams import publish


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--publishes", type=int, default=20_000, help="acked publishes per path")
    p.add_argument("--in-flight", type=int, default=200, help="publishes outstanding at once")
    p.add_argument("--resumes", type=int, default=1000, help="hand-made W3 resumes")


async def _api(nc: NATS, subject: str, body: dict[str, Any]) -> None:
    answer = json.loads((await nc.request(subject, json.dumps(body).encode(), timeout=5)).data)
    if "error" in answer:
        raise RuntimeError(f"{subject}: {answer['error']}")


async def _publish_rate(nc: NATS, total: int, in_flight: int, lean: bool) -> tuple[float, float]:
    """Acked publishes/s and CPU µs per publish (this process)."""
    todo = iter(range(total))

    async def one_at_a_time() -> None:
        for i in todo:
            headers = {"Nats-Msg-Id": f"{lean}-{i}", "Ms-Type": "probe"}
            if lean:
                await publish(nc, f"floor.p.{i % 100}", b"x" * 150, headers)
            else:
                await nc.request(f"floor.p.{i % 100}", b"x" * 150, headers=headers, timeout=5)

    began, cpu = time.perf_counter(), time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(in_flight):
            tg.start_soon(one_at_a_time)
    elapsed, used = time.perf_counter() - began, time.process_time() - cpu
    return total / elapsed, used / total * 1e6


async def _resumes(url: str, n: int) -> list[float]:
    client, worker = await nats.connect(url), await nats.connect(url)
    try:
        await _api(
            client,
            "$JS.API.STREAM.CREATE.FLOORJ",
            {
                "name": "FLOORJ",
                "subjects": ["fj.>"],
                "allow_direct": True,
                "republish": {"src": "fj.>", "dest": "fjn.>", "headers_only": True},
            },
        )
        await _api(
            client,
            "$JS.API.STREAM.CREATE.FLOORI",
            {"name": "FLOORI", "subjects": ["fi.>"], "retention": "workqueue"},
        )
        consumer = {"durable_name": "w", "ack_policy": "explicit", "filter_subject": "fi.>"}
        body = {"stream_name": "FLOORI", "config": consumer}
        await _api(worker, "$JS.API.CONSUMER.CREATE.FLOORI.w", body)
        inbox = worker.new_inbox()
        pulls = await worker.subscribe(inbox)
        last: dict[str, int] = {}

        async def act() -> None:  # the worker's part: take the event, append twice, ack
            while True:
                pull = json.dumps({"batch": 1, "expires": 5_000_000_000}).encode()
                await worker.publish("$JS.API.CONSUMER.MSG.NEXT.FLOORI.w", pull, reply=inbox)
                msg = await pulls.next_msg(timeout=10)
                if msg.headers and msg.headers.get("Status"):
                    continue
                run = msg.subject.split(".")[1]
                for kind in ("e", "end"):
                    headers = {
                        "Nats-Msg-Id": f"{run}:{kind}",
                        "Nats-Expected-Last-Subject-Sequence": str(last.get(run, 0)),
                        "Nats-Expected-Last-Subject-Sequence-Subject": f"fj.{run}.>",
                        "Ms-Type": kind,
                    }
                    ack = await worker.request(f"fj.{run}.{kind}", b'{"n":1}', headers=headers)
                    last[run] = json.loads(ack.data)["seq"]
                await msg.ack()

        took: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(act)
            for i in range(n):
                run = f"r{i}"
                began = time.perf_counter()
                ended = await client.subscribe(f"fjn.{run}.end")
                await client.request(f"fi.{run}.go", b"{}", headers={"Nats-Msg-Id": run})
                await ended.next_msg(timeout=5)
                get = json.dumps({"last_by_subj": f"fj.{run}.>"}).encode()
                await client.request("$JS.API.DIRECT.GET.FLOORJ", get, timeout=5)
                took.append((time.perf_counter() - began) * 1000)
                await ended.unsubscribe()
            tg.cancel_scope.cancel()
        return took
    finally:
        await client.close()
        await worker.close()


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    nc = await nats.connect(env.url)
    try:
        stream = {"name": "FLOORP", "subjects": ["floor.p.>"], "duplicate_window": 120 * 10**9}
        await _api(nc, "$JS.API.STREAM.CREATE.FLOORP", stream)
        rates: dict[str, list[tuple[float, float]]] = {"nats_py": [], "mainspring": []}
        for lean in itertools.islice(itertools.cycle((False, True)), 4):  # alternating
            rate, cpu = await _publish_rate(nc, args.publishes, args.in_flight, lean)
            rates["mainspring" if lean else "nats_py"].append((rate, cpu))
            log(
                f"{'mainspring' if lean else 'nats-py'}: {rate:,.0f} acked publishes/s, "
                f"{cpu:.1f} us CPU each"
            )
    finally:
        await nc.close()
    took = await _resumes(env.url, args.resumes)
    p50, p99 = percentile(took, 50), percentile(took, 99)
    log(f"hand-made W3 resume: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
    best = {k: max(v) for k, v in rates.items()}
    return {
        **common_fields("floor", env),
        "in_flight": args.in_flight,
        "acked_publishes_per_s_nats_py": round(best["nats_py"][0]),
        "acked_publishes_per_s": round(best["mainspring"][0]),
        "publish_cpu_us": round(best["mainspring"][1], 1),
        "publish_cpu_us_nats_py": round(best["nats_py"][1], 1),
        "bare_resume_p50_ms": round(p50, 3),
        "bare_resume_p99_ms": round(p99, 3),
    }
