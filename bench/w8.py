"""W8, effects through a separate handler process: latency of one effect, and throughput.

Handlers run in their own processes (``mainspring handlers --app tests.apps:handlers``),
the kind is ``bench.echo``, which returns its payload: the figures are the effect path,
not the work. Runs are ``echo_chain``: N effects, each awaited before the next.

Sequential: ``--seq-runs`` runs of ``--seq-effects`` effects, one run after another,
one handler process. An effect's latency is the gap between the actor-recorded times
(``at``) of ``effect.requested`` and of the matching ``effect.completed`` (same ``seq``)
in the journal: storing the request, a handler process pulling it, the handler call,
the result published to the run's inbox, the worker taking it in and the run deciding
on it, up to the moment the actor stamps ``effect.completed`` (the append of that event
is not in it). The client-side time of a whole run (start → result) is reported too.

Throughput: ``--runs`` runs of ``--effects`` effects started at once; effects/s = all
effects / seconds from the first start to the last result; once with one handler
process (``effects_per_s``), once more after a second one joined
(``effects_per_s_2_handlers``). The worker's ``--concurrency`` and each handler
process's in-flight limit (``--handler-concurrency``) default to at least the effects
in flight (one per run), so neither is the bottleneck.
"""

from __future__ import annotations

import argparse
import statistics
import time

import mainspring as ms
from bench._env import (
    Environment,
    common_fields,
    connect,
    handlers_ready,
    log,
    percentile,
    warm_up,
)
from bench.w1 import burst
from schemas import EffectCompleted, EffectRequested
from streams import StoredEvent

KINDS = ("bench.echo",)
MIN_SEQUENTIAL = 1000
"""effects the sequential phase should time, so that its p99 means something"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-runs", type=int, default=100, help="sequential runs (default 100)")
    p.add_argument(
        "--seq-effects", type=int, default=10, help="effects per sequential run (default 10)"
    )
    p.add_argument("--runs", type=int, default=200, help="runs started at once (default 200)")
    p.add_argument("--effects", type=int, default=10, help="effects per such run (default 10)")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat each burst; report the median (default 1)"
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    p.add_argument("--concurrency", type=int, default=1000, help="worker --concurrency")
    p.add_argument(
        "--handler-concurrency",
        type=int,
        help="in-flight requests per handler process (default: --runs, at least 64)",
    )


def effect_latencies_ms(events: list[StoredEvent], effects: int) -> list[float]:
    """Per effect: actor-recorded ``effect.requested`` → ``effect.completed`` (by seq)."""
    requested = {e.event.seq: e.event.at for e in events if isinstance(e.event, EffectRequested)}
    completed = {e.event.seq: e.event.at for e in events if isinstance(e.event, EffectCompleted)}
    if len(completed) != effects or completed.keys() != requested.keys():
        raise RuntimeError(
            f"expected {effects} effects requested and completed, "
            f"got {len(requested)} requested and {len(completed)} completed"
        )
    return [(completed[s] - requested[s]).total_seconds() * 1000 for s in sorted(completed)]


async def sequential(
    client: ms.Client, runs: int, effects: int, timeout: float
) -> tuple[list[float], list[float]]:
    """Runs one after another: (per-effect latencies, per-run client latencies) in ms."""
    effect_ms: list[float] = []
    run_ms: list[float] = []
    for i in range(runs):
        t0 = time.perf_counter()
        rid = await client.start("echo_chain", effects, run_id=f"w8s-{i}")
        out = await client.result(rid, timeout=timeout)
        run_ms.append((time.perf_counter() - t0) * 1000)
        if out != effects:
            raise RuntimeError(f"run {rid} returned {out!r}, expected {effects}")
        effect_ms.extend(effect_latencies_ms(await client.history(rid), effects))
    return effect_ms, run_ms


async def bursts(
    client: ms.Client, tag: str, args: argparse.Namespace
) -> tuple[list[float], list[float]]:
    """``--rounds`` bursts of ``--runs`` x ``--effects``: (seconds, effects/s) per round."""
    total = args.runs * args.effects
    elapsed: list[float] = []
    rates: list[float] = []
    for r in range(args.rounds):
        seconds = await burst(
            client, f"{tag}r{r}", args.runs, args.effects, args.timeout, workflow="echo_chain"
        )
        elapsed.append(seconds)
        rates.append(total / seconds)
        log(f"{tag} round {r + 1}: {total} effects in {seconds:.3f}s = {rates[-1]:.0f}/s")
    return elapsed, rates


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    seq_runs: int = args.seq_runs
    seq_effects: int = args.seq_effects
    handler_concurrency: int = args.handler_concurrency or max(args.runs, 64)
    if seq_runs * seq_effects < MIN_SEQUENTIAL:
        log(f"only {seq_runs * seq_effects} sequential effects: p99 is rough below 1000")
    env.spawn_worker(args.concurrency)
    env.spawn_handlers(handler_concurrency)
    async with connect(env) as client:
        await handlers_ready(env, client, KINDS)
        await warm_up(client, args.warmup, steps=seq_effects, workflow="echo_chain")

        log(f"sequential: {seq_runs} runs x {seq_effects} effects, one after another")
        cpu = env.cpu_meter()
        cpu.start()
        effect_ms, run_ms = await sequential(client, seq_runs, seq_effects, args.timeout)
        busy_seq = cpu.stop()
        p50, p99 = percentile(effect_ms, 50), percentile(effect_ms, 99)
        log(f"effect p50 {p50:.3f} ms, p99 {p99:.3f} ms; run p50 {percentile(run_ms, 50):.2f} ms")

        log(f"throughput, 1 handler process: {args.runs} runs x {args.effects} effects at once")
        cpu = env.cpu_meter()
        cpu.start()
        elapsed1, rates1 = await bursts(client, "w8t1", args)
        busy1 = cpu.stop()

        env.spawn_handlers(handler_concurrency)
        await handlers_ready(env, client, KINDS)
        await warm_up(client, 1, steps=args.effects, workflow="echo_chain", tag="warmup2")
        log(f"throughput, 2 handler processes: {args.runs} runs x {args.effects} effects")
        cpu = env.cpu_meter()
        cpu.start()
        elapsed2, rates2 = await bursts(client, "w8t2", args)
        busy2 = cpu.stop()
    return {
        **common_fields("w8", env),
        "seq_runs": seq_runs,
        "seq_effects": seq_effects,
        "warmup": args.warmup,
        "effect_samples": len(effect_ms),
        "effect_p50_ms": round(p50, 3),
        "effect_p99_ms": round(p99, 3),
        "effect_max_ms": round(max(effect_ms), 3),
        "run_p50_ms": round(percentile(run_ms, 50), 3),
        "run_p99_ms": round(percentile(run_ms, 99), 3),
        "runs": args.runs,
        "effects": args.effects,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "handler_concurrency": handler_concurrency,
        "elapsed_s": round(statistics.median(elapsed1), 4),
        "effects_per_s": round(statistics.median(rates1), 1),
        "rounds_effects_per_s": [round(x, 1) for x in rates1],
        "elapsed_s_2_handlers": round(statistics.median(elapsed2), 4),
        "effects_per_s_2_handlers": round(statistics.median(rates2), 1),
        "rounds_effects_per_s_2_handlers": [round(x, 1) for x in rates2],
        "cpu_busy_sequential": busy_seq,
        "cpu_busy": busy1,
        "cpu_busy_2_handlers": busy2,
    }
