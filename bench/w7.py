"""W7, shards: W1's burst of chains on deployments of S = 1, 2, 4 shards; steps/s by shards.

Each S is its own deployment (its own prefix) on the same server (or 3-node cluster,
``--cluster``, streams R3), with as many worker processes as shards unless
``--workers`` says otherwise. The deployments are measured in turn, ``--rounds`` times
over in alternating order (1 2 4, then 4 2 1, ...) so a drift of the machine does not
favour one; the median of each S is reported. ``ratio_4_to_1`` is what shows whether
sharding works: each stream syncs on its own, so with ``--fsync-always`` (disk waits
dominate) more shards give more steps/s even on one node.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections import Counter
from datetime import datetime

import anyio
import nats
from nats.aio.client import Client as NATS

import mainspring as ms
from bench._env import APP, Environment, balanced, common_fields, log, warm_up
from bench.w1 import burst
from mainspring import NatsServer
from streams import Subjects, TopologyConfig, ensure_topology, spread_leaders
from tests.harness import keys_for, wait_until
from tests.procs import Proc, spawn


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", default="1,2,4", help="shard counts to measure (default 1,2,4)")
    p.add_argument("--runs", type=int, default=200, help="runs started at once (default 200)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--concurrency", type=int, default=1000, help="worker --concurrency")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker processes per deployment (default: one per shard)",
    )
    p.add_argument("--rounds", type=int, default=2, help="passes over the shard counts")
    p.add_argument(
        "--cluster", action="store_true", help="a 3-node cluster, streams R3 (default: one node)"
    )
    p.add_argument(
        "--bare",
        type=int,
        default=20_000,
        help="messages of the bare baseline: W7's append pattern (chains of acked, "
        "OCC-checked publishes) from four nats-py connections into 1, 2 and 4 streams, no "
        "Mainspring code (0: skip it)",
    )


async def _connect(url: str) -> NATS:
    """A connection to ``url``: one server, or a cluster's nodes separated by commas."""
    return await nats.connect(servers=url.split(","))


async def _spread(nc: NATS, subjects: Subjects) -> dict[str, str]:
    """Once every shard stream has a leader, spread the leaders over the nodes (what
    `mainspring setup` does); stream -> leader."""
    want = 2 * subjects.shards  # a journal and an inbox stream per shard

    async def spread() -> dict[str, str] | None:
        found = await spread_leaders(nc, subjects)
        return found if len(found) == want else None

    leaders = await wait_until(spread, timeout=30, interval=0.1)
    log(f"leaders of {subjects.prefix}: {sorted(Counter(leaders.values()).items())}")
    return leaders


class _Deployment:
    """One deployment of ``shards`` shards and its worker processes."""

    def __init__(self, env: Environment, url: str, shards: int, cluster: bool) -> None:
        self.env, self.url, self.cluster = env, url, cluster
        self.subjects = Subjects(f"w7s{shards}", env.subjects.partitions, shards=shards)
        self.workers: list[Proc] = []
        self.leaders: dict[str, str] = {}
        """stream -> the node leading it (on a cluster)"""

    async def start(self, workers: int, concurrency: int) -> None:
        """Create the streams (so workers find the shards), then start the workers."""
        nc = await _connect(self.url)
        try:
            replicas = TopologyConfig(replicas=3) if self.cluster else None
            await ensure_topology(nc, self.subjects, replicas)
            if self.cluster:
                self.leaders = await _spread(nc, self.subjects)
        finally:
            await nc.close()
        for n in range(workers):
            proc = spawn(
                "worker",
                APP,
                self.url,
                self.subjects,
                self.env.dir / f"{self.subjects.prefix}-worker-{n}.log",
                extra=("--concurrency", str(concurrency)),
                env=self.env.spawn_env,
                new_session=True,
            )
            self.workers.append(proc)
            self.env.workers.append(proc)  # stopped with the environment if we fail

    def stop(self) -> None:
        for proc in self.workers:
            proc.stop()
            self.env.workers.remove(proc)
        self.workers.clear()


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    counts = [int(x) for x in args.shards.split(",")]
    nodes = (
        NatsServer.local_cluster(env.dir / "cluster", name="w7", sync_always=env.fsync_always)
        if args.cluster
        else []
    )
    url = ",".join(n.url for n in nodes) if nodes else env.url
    rates: dict[int, list[float]] = {s: [] for s in counts}
    cores: dict[int, list[float]] = {s: [] for s in counts}
    bare: dict[str, float] = {}
    try:
        for r in range(args.rounds):
            order = counts if r % 2 == 0 else counts[::-1]
            for shards in order:
                rate, busy = await _measure(env, url, nodes, shards, args, r)
                rates[shards].append(rate)
                cores[shards].append(busy)
        if args.bare:
            bare = await _bare(url, counts, args.bare, replicas=3 if nodes else 1)
    finally:
        for node in nodes:
            node.stop()
    by_shards = {str(s): round(statistics.median(v), 1) for s, v in rates.items()}
    base = by_shards.get("1")
    return {
        **common_fields("w7", env),
        "cluster": bool(nodes),
        "runs": args.runs,
        "steps": args.steps,
        "rounds": args.rounds,
        "workers_per_deployment": args.workers or "one per shard",
        "steps_per_s_by_shards": by_shards,
        "rounds_steps_per_s": {str(s): [round(x, 1) for x in v] for s, v in rates.items()},
        "ratio_4_to_1": round(by_shards["4"] / base, 2) if base and "4" in by_shards else None,
        "ratio_2_to_1": round(by_shards["2"] / base, 2) if base and "2" in by_shards else None,
        "cpu_busy_cores_by_shards": {
            str(s): round(statistics.median(v), 2) for s, v in cores.items()
        },
        "bare_msgs_per_s_by_streams": bare,
        "bare_ratio_4_to_1": round(bare["4"] / bare["1"], 2)
        if "4" in bare and "1" in bare
        else None,
    }


async def _bare(url: str, counts: list[int], n: int, *, replicas: int) -> dict[str, float]:
    """The broker alone, on W7's own pattern: 256 chains of 10 acked 300-byte appends,
    each stating where its chain's subject must end (the journal's optimistic check),
    from four connections, over 1, 2 and 4 streams of the same storage: what shards
    can gain from the server when no Mainspring code runs. ``n``: messages per count."""
    conns = [await _connect(url) for _ in range(4)]
    out: dict[str, float] = {}
    try:
        js0 = conns[0].jetstream()
        for k in range(max(counts)):
            await js0.add_stream(
                name=f"W7BARE{k}", subjects=[f"w7bare{k}.>"], num_replicas=replicas
            )
        data = b"x" * 300
        chains, steps = 256, max(1, n // 256)
        for streams in counts:

            async def chain(c: int, streams: int = streams) -> None:
                js = conns[c % len(conns)].jetstream()
                subject = f"w7bare{c % streams}.s{streams}c{c}"
                last = 0
                for i in range(steps):
                    headers = {
                        "Nats-Msg-Id": f"{subject}:{i}",
                        "Nats-Expected-Last-Subject-Sequence": str(last),
                        "Nats-Expected-Last-Subject-Sequence-Subject": f"{subject}.>",
                    }
                    last = (await js.publish(f"{subject}.e", data, headers=headers)).seq

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for c in range(chains):
                    tg.start_soon(chain, c)
            out[str(streams)] = round(chains * steps / (time.perf_counter() - t0), 1)
            log(
                f"bare: {chains}x{steps} chained appends over {streams} stream(s): "
                f"{out[str(streams)]:.0f}/s"
            )
    finally:
        for nc in conns:
            await nc.close()
    return out


async def _timeline(client: ms.Client, tag: str, runs: int) -> None:
    """Where a burst's time went, from the actor-recorded times of 50 of its runs: the
    gap between a run's steps (one append each), and how long after the first run's
    start each run started and ended."""
    sample = [f"{tag}-{i}" for i in range(0, runs, max(1, runs // 50))]
    gaps: list[float] = []
    starts: list[datetime] = []
    spans: list[float] = []
    for rid in sample:
        events = [e.event for e in await client.history(rid)]
        at = [e.at for e in events]
        gaps += [(b - a).total_seconds() for a, b in itertools.pairwise(at)]
        starts.append(at[0])
        spans.append((at[-1] - at[0]).total_seconds())
    first = min(starts)
    log(
        f"timeline: step gap p50 {statistics.median(gaps) * 1000:.1f} ms, run span p50 "
        f"{statistics.median(spans):.3f} s, starts spread over "
        f"{(max(starts) - first).total_seconds():.3f} s"
    )


async def _measure(
    env: Environment,
    url: str,
    nodes: list[NatsServer],
    shards: int,
    args: argparse.Namespace,
    r: int,
) -> tuple[float, float]:
    """One burst on a new deployment of ``shards``: steps/s, and the cores busy
    meanwhile (server nodes, workers, this client)."""
    dep = _Deployment(env, url, shards, args.cluster)
    workers = args.workers or shards
    await dep.start(workers, args.concurrency)
    try:
        nc = await _connect(url)
        try:
            keys = keys_for(dep.subjects) if env.keys is not None else None
            client = ms.Client(nc, dep.subjects, keys=keys)
            await balanced(client, dep.subjects, workers)  # no lease moves while timed
            await warm_up(client, 2 * shards, steps=args.steps, tag=f"warm{r}")
            total = args.runs * args.steps
            cpu = env.cpu_meter()
            cpu.pids |= {f"node{i}": n.pid for i, n in enumerate(nodes) if n.pid is not None}
            cpu.start()
            seconds = await burst(client, f"w7r{r}", args.runs, args.steps, args.timeout)
            split = cpu.stop()
            await _timeline(client, f"w7r{r}", args.runs)
            busy = sum(split.values())
            log(f"cores busy: {split}")
        finally:
            await nc.close()
    finally:
        dep.stop()
    rate = float(total / seconds)
    log(
        f"S={shards} ({workers} worker(s)): {total} steps in {seconds:.3f}s = {rate:.0f} "
        f"steps/s, {busy:.2f} cores busy"
    )
    return rate, busy
