"""What every benchmark needs: a fresh nats-server, worker subprocesses, a client, timing helpers.

Processes are managed synchronously (``Environment`` is a plain context manager around
``anyio.run``) so they are cleaned up even when the event loop dies on Ctrl-C.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import anyio
import nats
import nats.js.errors

import mainspring as ms
from bench._cpu import CpuMeter
from mainspring import NatsServer
from streams import Subjects
from tests.harness import keys_for
from tests.procs import ROOT, Proc, spawn

APP = "tests.apps:registry"
HANDLERS = "tests.apps:handlers"
LIBRARY = (
    "mainspring",
    "actors",
    "client",
    "handlers",
    "flows",
    "servers",
    "streams",
    "schemas",
    "projections",
)
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """A progress line on stderr (stdout is reserved for the JSON result)."""
    print(f"[bench {time.perf_counter() - _T0:7.2f}s] {msg}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Environment:
    """A nats-server in a fresh temp dir plus the workers and handler services spawned
    against it."""

    def __init__(
        self,
        *,
        fsync_always: bool,
        partitions: int = 16,
        keep: bool = False,
        profile_worker: Path | None = None,
        keyed: bool = True,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mainspring-bench-"))
        self.fsync_always = fsync_always
        self.keep = keep
        self.subjects = Subjects(prefix="bench", partitions=partitions)
        self.keys = keys_for(self.subjects) if keyed else None
        """the deployment keys every process gets (tests.procs.spawn writes them); None:
        an unkeyed deployment (``--no-keys``), to measure what the tags cost"""
        self.spawn_env = {} if keyed else {"MAINSPRING_KEYS": ""}
        self.server = NatsServer(self.dir / "nats", sync_always=fsync_always)
        self.profile_worker = profile_worker
        self.workers: list[Proc] = []
        self.handlers: list[Proc] = []
        self.loadavg_before = os.getloadavg()[0]
        self.source = source_state()

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> Environment:
        try:
            self.server.start()
        except BaseException:
            self._cleanup(failed=True)
            raise
        log(f"nats-server up at {self.url} (store {self.dir}, fsync_always={self.fsync_always})")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup(failed=exc_type is not None)

    def _cleanup(self, *, failed: bool) -> None:
        for name, p in self._procs():
            if failed:
                log(f"{name} {p.pid} log tail:\n{p.tail()}")
            p.stop()
        self.server.stop()
        if self.keep or failed:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def spawn_worker(self, concurrency: int) -> Proc:
        """Start a worker process (not yet ready: it still has to acquire its partitions)."""
        n = len(self.workers) + 1
        worker = spawn(
            "worker",
            APP,
            self.url,
            self.subjects,
            self.dir / f"worker-{n}.log",
            extra=("--concurrency", str(concurrency)),
            env=self.spawn_env,
            python=self._profile(f"{n}"),
            new_session=True,  # a Ctrl-C in the terminal reaches only us; we stop it
        )
        self.workers.append(worker)
        log(f"spawned worker {worker.pid} (concurrency {concurrency})")
        return worker

    def spawn_handlers(self, concurrency: int) -> Proc:
        """Start a handler service (``mainspring handlers --app tests.apps:handlers``);
        ``concurrency``: max in-flight requests of each bench.* kind in this process.

        Not yet ready: ``handlers_ready`` tells when it pulls requests."""
        n = len(self.handlers) + 1
        proc = spawn(
            "handlers",
            HANDLERS,
            self.url,
            self.subjects,
            self.dir / f"handlers-{n}.log",
            env={"MS_BENCH_HANDLER_CONCURRENCY": str(concurrency), **self.spawn_env},
            python=self._profile(f"handlers{n}"),
            new_session=True,
        )
        self.handlers.append(proc)
        log(f"spawned handler service {proc.pid} (concurrency {concurrency} per kind)")
        return proc

    def _profile(self, tag: str) -> tuple[str, ...]:
        """Interpreter options that run a process under cProfile (it writes its file when
        it stops), or none."""
        if self.profile_worker is None:
            return ()
        return ("-m", "cProfile", "-o", str(self.profile_worker.with_suffix(f".{tag}.prof")))

    def _procs(self) -> list[tuple[str, Proc]]:
        named = [(f"worker{i}", w) for i, w in enumerate(self.workers, start=1)]
        return named + [(f"handlers{i}", h) for i, h in enumerate(self.handlers, start=1)]

    def cpu_meter(self) -> CpuMeter:
        """CPU use of this process, nats-server and the live workers and handler services
        over the timed phase."""
        pids = {"client": os.getpid()}
        if self.server.proc is not None:
            pids["nats_server"] = self.server.proc.pid
        for name, p in self._procs():
            if p.popen.poll() is None:
                pids[name] = p.pid
        return CpuMeter(pids)


@asynccontextmanager
async def connect(env: Environment) -> AsyncIterator[ms.Client]:
    """A client on its own NATS connection, closed on exit."""
    nc = await nats.connect(env.url)
    try:
        yield ms.Client(nc, env.subjects, keys=env.keys)
    finally:
        await nc.close()


async def handlers_ready(
    env: Environment, client: ms.Client, kinds: tuple[str, ...], *, timeout: float = 30
) -> None:
    """Wait until every live handler process pulls requests of each of ``kinds``: each
    one keeps one pull request open on the kind's durable consumer (``num_waiting``)."""
    want = sum(1 for h in env.handlers if h.popen.poll() is None)
    js = client.nc.jetstream()
    s = env.subjects
    with anyio.fail_after(timeout):
        for kind in kinds:
            for stream in s.journal_streams:  # a consumer per kind in each shard's journal
                while True:
                    try:
                        info = await js.consumer_info(stream, s.effect_consumer(kind))
                    except nats.js.errors.NotFoundError:
                        info = None  # not created yet
                    if info is not None and (info.num_waiting or 0) >= want:
                        break
                    await anyio.sleep(0.05)
    log(f"{want} handler process(es) pulling {', '.join(kinds)}")


async def lease_holders(client: ms.Client, subjects: Subjects) -> dict[int, str]:
    """Partition → the worker id holding its lease now (none before a worker made the
    bucket)."""
    try:
        kv = await client.nc.jetstream().key_value(subjects.lease_bucket)
        held: dict[int, str] = {}
        for p in range(subjects.partitions):
            try:
                entry = await kv.get(subjects.lease_key(p))
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                continue
            held[p] = (entry.value or b"").decode()
    except (nats.js.errors.BucketNotFoundError, nats.errors.TimeoutError):
        return {}  # no bucket yet, or a new replicated one without a leader yet
    return held


async def balanced(
    client: ms.Client, subjects: Subjects, workers: int, timeout: float = 30
) -> dict[int, str]:
    """Wait until ``workers`` workers hold every partition between them, balanced."""
    with anyio.fail_after(timeout):
        while True:
            held = await lease_holders(client, subjects)
            counts = Counter(held.values())
            full = len(held) == subjects.partitions and len(counts) == workers
            if full and max(counts.values()) - min(counts.values()) <= 1:
                return held
            await anyio.sleep(0.05)


async def warm_up(
    client: ms.Client,
    runs: int,
    *,
    steps: int = 10,
    timeout: float = 30,
    workflow: str = "chain",
    tag: str = "warmup",
) -> None:
    """Run ``runs`` chains one after another: proves a worker holds the partitions, warms caches.

    ``workflow``: any that takes a count and returns it (``echo_chain``: through handlers)."""
    for i in range(runs):
        rid = await client.start(workflow, steps, run_id=f"{tag}-{i}")
        out = await client.result(rid, timeout=timeout)
        if out != steps:
            raise RuntimeError(f"warm-up run {rid} returned {out!r}, expected {steps}")
    log(f"warm-up done ({runs} run(s))")


def common_fields(workload: str, env: Environment) -> dict[str, object]:
    return {
        "workload": workload,
        "fsync_always": env.fsync_always,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": round(env.loadavg_before, 2),
        "loadavg_1m_after": round(os.getloadavg()[0], 2),
        "partitions": env.subjects.partitions,
        "keyed": env.keys is not None,
        **env.source,
    }


def source_state() -> dict[str, object]:
    """The commit measured, and whether library code differed from it (uncommitted edits)."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=10
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    changed = git("status", "--porcelain", "--", *LIBRARY)
    return {"commit": commit or None, "library_dirty": bool(changed) if commit else None}
