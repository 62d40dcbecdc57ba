"""W10, tenants: one tenant's W1 while another, on the same server, is at its quota.

Two tenants (``mainspring tenants``: an account each) on one nats-server: ``acme``
with a small storage limit, ``beta`` without. Beta's W1 bursts are measured alone,
then again while acme, its storage full, keeps trying to start runs (each refused by
the server with QuotaExceeded) at ``--flood-rate`` attempts/s. The ratio says whether
a tenant at its quota costs the others anything.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio
import msgspec

import mainspring as ms
from bench._env import Environment, common_fields, log, warm_up
from bench.w1 import burst
from mainspring._tenants import add_tenant
from schemas import QuotaExceeded
from streams import AccountLimits, EffectMarkers, Leases, NatsAuth, connect, ensure_topology
from tests.procs import spawn


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=200, help="runs per burst (default 200)")
    p.add_argument("--steps", type=int, default=10, help="steps per run (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="bursts each way (default 5)")
    p.add_argument(
        "--flood-rate", type=float, default=200.0, help="acme's refused starts per second"
    )


async def run(env: Environment, args: argparse.Namespace) -> dict[str, object]:
    root, s = env.dir / "tenants", env.subjects
    add_tenant(root, "acme", [], AccountLimits(max_storage=4 * 1024 * 1024), prefix=s.prefix)
    add_tenant(root, "beta", [], AccountLimits(), prefix=s.prefix)
    env.server.stop()  # again, with the tenants' accounts
    env.server.extra_config = (root / "accounts.conf").read_text()
    env.server.start()

    def auth(tenant: str, user: str) -> NatsAuth:
        return NatsAuth(nkey=str(root / tenant / f"{user}.nk"))

    for tenant in ("acme", "beta"):
        op = await connect(env.url, auth=auth(tenant, "operator"))
        await ensure_topology(op, s)
        await EffectMarkers(op, s).open()
        await Leases(op, s, "setup").open()
        await op.close()
    seed = str(root / "beta" / "worker.nk")
    worker = spawn(
        "worker", "tests.apps:registry", env.url, s, env.dir / "beta-worker.log",
        extra=("--concurrency", "1000", "--nats-nkey", seed), env=env.spawn_env,
        new_session=True,
    )  # fmt: skip
    env.workers.append(worker)
    beta_nc = await connect(env.url, auth=auth("beta", "client"))
    acme_nc = await connect(env.url, auth=auth("acme", "client"))
    beta = ms.Client(beta_nc, s, keys=env.keys)
    acme = ms.Client(acme_nc, s, keys=env.keys)
    total = args.runs * args.steps
    try:
        await warm_up(beta, 1, steps=args.steps)
        big = msgspec.Raw(b'"' + b"x" * 200_000 + b'"')
        filled = 0
        while True:  # acme fills its storage
            try:
                await acme.start("chain", big, run_id=f"fill-{filled}")
            except QuotaExceeded:
                break
            filled += 1
        log(f"acme at its quota after {filled} starts")

        async def bursts(tag: str) -> list[float]:
            rates = []
            for r in range(args.rounds):
                seconds = await burst(beta, f"{tag}{r}", args.runs, args.steps, args.timeout)
                rates.append(total / seconds)
                log(f"beta {tag} round {r + 1}: {rates[-1]:.0f} steps/s")
            return rates

        alone = await bursts("alone")
        refused = 0
        async with anyio.create_task_group() as tg:

            async def flood() -> None:
                nonlocal refused
                while True:
                    try:
                        await acme.start("chain", big, run_id=f"flood-{refused}")
                    except QuotaExceeded:
                        refused += 1
                    await anyio.sleep(1 / args.flood_rate)  # a rate, not a settle wait

            tg.start_soon(flood)
            t0 = time.perf_counter()
            beside = await bursts("beside")
            flood_s = time.perf_counter() - t0
            tg.cancel_scope.cancel()
    finally:
        await beta_nc.close()
        await acme_nc.close()
    ratio = statistics.median(beside) / statistics.median(alone)
    log(f"beta beside a full acme / alone: {ratio:.3f} ({refused / flood_s:.0f} refusals/s)")
    return {
        **common_fields("w10", env),
        "runs": args.runs,
        "steps": args.steps,
        "rounds": args.rounds,
        "steps_per_s_alone": round(statistics.median(alone), 1),
        "steps_per_s_beside_full_tenant": round(statistics.median(beside), 1),
        "rounds_alone": [round(x, 1) for x in alone],
        "rounds_beside": [round(x, 1) for x in beside],
        "ratio": round(ratio, 3),
        "acme_refusals_per_s": round(refused / flood_s, 1),
    }
