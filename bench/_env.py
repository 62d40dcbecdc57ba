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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import nats

import mainspring as ms
from bench._cpu import CpuMeter
from mainspring import NatsServer
from streams import Subjects
from tests.procs import ROOT, Proc, spawn

APP = "tests.apps:registry"
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
    """A nats-server in a fresh temp dir plus the workers spawned against it."""

    def __init__(
        self,
        *,
        fsync_always: bool,
        partitions: int = 16,
        keep: bool = False,
        profile_worker: Path | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mainspring-bench-"))
        self.fsync_always = fsync_always
        self.keep = keep
        self.subjects = Subjects(prefix="bench", partitions=partitions)
        self.server = NatsServer(self.dir / "nats", sync_always=fsync_always)
        self.profile_worker = profile_worker
        self.workers: list[Proc] = []
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
        for w in self.workers:
            if failed:
                log(f"worker {w.pid} log tail:\n{w.tail()}")
            w.stop()
        self.server.stop()
        if self.keep or failed:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def spawn_worker(self, concurrency: int) -> Proc:
        """Start a worker process (not yet ready: it still has to acquire its partitions)."""
        log_path = self.dir / f"worker-{len(self.workers) + 1}.log"
        profile: tuple[str, ...] = ()
        if self.profile_worker is not None:  # cProfile writes its file when the worker stops
            prof = self.profile_worker.with_suffix(f".{len(self.workers) + 1}.prof")
            profile = ("-m", "cProfile", "-o", str(prof))
        worker = spawn(
            "worker",
            APP,
            self.url,
            self.subjects,
            log_path,
            extra=("--concurrency", str(concurrency)),
            python=profile,
            new_session=True,  # a Ctrl-C in the terminal reaches only us; we stop it
        )
        self.workers.append(worker)
        log(f"spawned worker {worker.pid} (concurrency {concurrency})")
        return worker

    def cpu_meter(self) -> CpuMeter:
        """CPU use of this process, nats-server and the live workers over the timed phase."""
        pids = {"client": os.getpid()}
        if self.server.proc is not None:
            pids["nats_server"] = self.server.proc.pid
        for i, w in enumerate(self.workers, start=1):
            if w.popen.poll() is None:
                pids[f"worker{i}"] = w.pid
        return CpuMeter(pids)


@asynccontextmanager
async def connect(env: Environment) -> AsyncIterator[ms.Client]:
    """A client on its own NATS connection, closed on exit."""
    nc = await nats.connect(env.url)
    try:
        yield ms.Client(nc, env.subjects)
    finally:
        await nc.close()


async def warm_up(client: ms.Client, runs: int, *, steps: int = 10, timeout: float = 30) -> None:
    """Run ``runs`` chains one after another: proves a worker holds the partitions, warms caches."""
    for i in range(runs):
        rid = await client.start("chain", steps, run_id=f"warmup-{i}")
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
