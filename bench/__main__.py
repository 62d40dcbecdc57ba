"""``python -m bench <workload> [--fsync-always] [...]``: one benchmark, one JSON line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import anyio

from bench import chaos, floor, late, w1, w2, w3, w4, w5, w6, w7, w8, w9, w10
from bench._env import Environment
from mainspring._logging import configure_logging

WORKLOADS: dict[str, tuple[ModuleType, str]] = {
    "w1": (w1, "throughput: durable steps/s of many chains on one worker"),
    "w2": (w2, "latency: per-step and per-run latency of single chains in sequence"),
    "w3": (w3, "resume latency: send_event to result of waiting runs"),
    "w4": (w4, "crash recovery: SIGKILL a worker mid-flight, time a replacement"),
    "w5": (w5, "audit replay speed: events/s whose hash chains are verified from the stream"),
    "w6": (w6, "projection lag under W1 load, and projector throughput rebuilding"),
    "w7": (w7, "shards: steps/s of W1's burst on deployments of 1, 2 and 4 shards"),
    "w8": (w8, "effects through a handler process: per-effect latency, effects/s"),
    "w9": (w9, "agent-shaped runs: runtime overhead over the handlers' own work"),
    "w10": (w10, "tenants: one tenant's W1 while another, at its storage quota, keeps trying"),
    "late": (late, "resume latency of live runs while late events flood an ended run"),
    "chaos": (chaos, "no run stalls: worker SIGKILLs and partition moves under a mixed load"),
    "floor": (floor, "the broker hops alone, no Mainspring code: acked publishes/s, a bare W3"),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="workload", required=True)
    for name, (module, help_text) in WORKLOADS.items():
        p = sub.add_parser(name, help=help_text, description=module.__doc__)
        p.add_argument(
            "--fsync-always", action="store_true", help="JetStream sync_interval: always"
        )
        p.add_argument("--partitions", type=int, default=16, help="inbox partitions")
        p.add_argument("--timeout", type=float, default=120.0, help="seconds per awaited result")
        p.add_argument("--keep", action="store_true", help="keep the temp dir (server, logs)")
        p.add_argument(
            "--no-keys",
            action="store_true",
            help="a deployment without keys: nothing tagged or checked (to measure their cost)",
        )
        p.add_argument(
            "--profile-worker",
            type=Path,
            metavar="PATH",
            help="run workers and handler services under cProfile; stats go to PATH.<n>.prof",
        )
        module.add_arguments(p)
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    # Stop cleanly (workers and nats-server too) on SIGTERM, and on SIGINT even when a
    # shell started us in the background with SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    configure_logging("warning", json=False)  # the library's logs go to stderr, not stdout
    module = WORKLOADS[args.workload][0]
    workload: Callable[[Environment, argparse.Namespace], Awaitable[dict[str, object]]]
    workload = module.run
    with Environment(
        fsync_always=args.fsync_always,
        partitions=args.partitions,
        keep=args.keep,
        profile_worker=args.profile_worker,
        keyed=not args.no_keys,
    ) as env:
        result = anyio.run(partial(workload, env, args), backend_options={"use_uvloop": True})
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
