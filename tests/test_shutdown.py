"""Services stop on SIGINT and SIGTERM within seconds, whatever they are doing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncpg
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from streams import Subjects
from tests.apps import handlers, registry
from tests.harness import Harness, running, wait_until
from tests.procs import ROOT, conn_args

pytestmark = pytest.mark.anyio

STOP_WITHIN_S = 5.0
SIGNALS = pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT-background-job", "SIGTERM"],
)


def _as_background_job() -> None:
    """What a shell does to a script's `cmd &`: the job ignores SIGINT from the start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _service(
    command: list[str], log: Path, *, background: bool, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mainspring", *command],
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            preexec_fn=_as_background_job if background else None,
        )


async def _stop_and_time(proc: subprocess.Popen[bytes], sig: signal.Signals) -> float:
    """Signal the service; seconds until it exited (it is SIGKILLed after 15)."""
    began = time.monotonic()
    proc.send_signal(sig)
    try:
        await anyio.to_thread.run_sync(proc.wait, 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return time.monotonic() - began


def _stopped_cleanly(proc: subprocess.Popen[bytes], log: Path, took: float) -> None:
    """It exited 0 (else: the end of its log), within STOP_WITHIN_S of the signal."""
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert took < STOP_WITHIN_S, f"stopping took {took:.1f}s"


async def _flood(h: Harness, runs: int) -> list[str]:
    """Many effect-heavy runs; returns once the first has finished."""
    ids = [await h.client.start("fanout", 20, run_id=f"f{i}") for i in range(runs)]
    await h.client.result(ids[0], timeout=60)
    return ids


@asynccontextmanager
async def _killed_on_exit(proc: subprocess.Popen[bytes]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@SIGNALS
async def test_worker_stops_within_seconds_under_load(
    nc: NATS,
    nats_server: NatsServer,
    subjects: Subjects,
    tmp_path: Path,
    sig: signal.Signals,
    background: bool,
) -> None:
    """A worker busy with hundreds of runs stops within seconds of the signal, exit 0."""
    worker = _service(
        ["worker", "--app", "tests.apps:registry", *conn_args(nats_server, subjects)],
        tmp_path / "worker.log",
        background=background,
    )
    async with _killed_on_exit(worker), running(nc, subjects, None, handlers) as h:
        await _flood(h, 150)
        took = await _stop_and_time(worker, sig)
    _stopped_cleanly(worker, tmp_path / "worker.log", took)


@SIGNALS
async def test_handlers_stop_within_seconds_mid_effects(
    nc: NATS,
    nats_server: NatsServer,
    subjects: Subjects,
    tmp_path: Path,
    sig: signal.Signals,
    background: bool,
) -> None:
    """Handlers in the middle of long effects and a flood of short ones stop within seconds
    of the signal, exit 0."""
    side = tmp_path / "fx.txt"
    service = _service(
        ["handlers", "--app", "tests.apps:handlers", *conn_args(nats_server, subjects)],
        tmp_path / "handlers.log",
        background=background,
        env={"MS_LINGER": "60"},
    )
    async with _killed_on_exit(service), running(nc, subjects, registry) as h:
        for i in range(20):
            await h.client.start("once", str(side), run_id=f"long{i}")

        async def lingering() -> bool:
            return side.exists() and len(side.read_text().splitlines()) >= 20

        await wait_until(lingering, timeout=60)
        await _flood(h, 100)
        took = await _stop_and_time(service, sig)
    _stopped_cleanly(service, tmp_path / "handlers.log", took)


@SIGNALS
async def test_projector_stops_within_seconds_while_projecting(
    nc: NATS,
    nats_server: NatsServer,
    subjects: Subjects,
    pg_dsn: str,
    tmp_path: Path,
    sig: signal.Signals,
    background: bool,
) -> None:
    """A projector catching up on a busy journal stops within seconds of the signal, exit 0."""
    async with running(nc, subjects, registry, handlers) as h:
        await _flood(h, 150)
        projector = _service(
            ["projector", *conn_args(nats_server, subjects, pg_dsn)],
            tmp_path / "projector.log",
            background=background,
        )
        async with _killed_on_exit(projector):
            await wait_until(_rows_in(pg_dsn), timeout=60)
            took = await _stop_and_time(projector, sig)
    _stopped_cleanly(projector, tmp_path / "projector.log", took)


def _rows_in(dsn: str) -> Callable[[], Awaitable[bool]]:
    async def projected() -> bool:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError):
            return False
        try:
            return bool(await conn.fetchval("SELECT count(*) FROM run_events"))
        except asyncpg.UndefinedTableError:
            return False
        finally:
            await conn.close()

    return projected


def test_service_error_reads_as_one_line(nats_server: NatsServer, tmp_path: Path) -> None:
    """A service that fails on its own (here: invalid settings) still exits with one
    readable error line and its exit code, not a traceback."""
    command = ["worker", "--app", "tests.apps:registry", "--nats-url", nats_server.url]
    worker = _service([*command, "--partitions", "0"], tmp_path / "worker.log", background=False)
    assert worker.wait(30) == 10
    out = (tmp_path / "worker.log").read_text()
    assert "error: partitions must be between 1 and 1024" in out
    assert "Traceback" not in out
