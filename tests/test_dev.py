"""`mainspring dev`: one foreground process others use; Ctrl-C stops it; data persists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import mainspring as ms
from servers import free_port
from servers._postgres import PostgresServer
from streams import NatsAuth, Subjects, connect
from tests.procs import ROOT, cli

README_ALLOW = ("--cli-allow", "python3,echo")
EXAMPLE = ROOT / "examples" / "flows" / "tag_release.yaml"


@pytest.fixture(autouse=True)
def _drop_cluster(tmp_path: Path) -> Iterator[None]:
    """Delete the dev PostgreSQL cluster after each test: as root it may live outside
    tmp_path (see servers/_postgres.py)."""
    yield
    data = tmp_path / "work" / ".mainspring" / "postgres"
    if data.exists():
        PostgresServer(data).destroy()


def _env(home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MAINSPRING_")}
    return {**clean, "HOME": str(home), "PYTHONPATH": str(ROOT)}


def _as_background_job() -> None:
    """What a shell does to a script's `cmd &`: the job ignores SIGINT from the start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_dev(
    work: Path, env: dict[str, str], port: int, *extra: str, background: bool = False
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        # with the README's allow-list for the example's cli steps
        [
            sys.executable,
            "-m",
            "mainspring",
            "dev",
            "--nats-port",
            str(port),
            *README_ALLOW,
            *extra,
        ],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_as_background_job if background else None,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    for line in proc.stdout:  # blocks until dev prints; bounded by the deadline check
        if "mainspring dev is up" in line:
            return proc
        assert time.monotonic() < deadline, "mainspring dev did not come up"
    raise AssertionError(f"mainspring dev exited with {proc.wait()}")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)  # drains and closes its output
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc.returncode


def _status_until(run_id: str, code: int, work: Path, env: dict[str, str]) -> str:
    """The projection may trail the journal by a moment: wait for the expected exit code."""
    deadline = time.monotonic() + 30
    while True:
        out = cli("status", run_id, cwd=work, env=env)
        if out.returncode == code or time.monotonic() > deadline:
            return out.stdout + out.stderr
        time.sleep(0.2)  # re-checking a condition with a deadline


def test_dev_serves_other_commands_and_keeps_data(tmp_path: Path) -> None:
    """Other commands find `mainspring dev` without configuration; after Ctrl-C and a
    restart, the run and its projection are still there."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = _env(home)
    port = free_port()
    dev = _start_dev(work, env, port)
    try:
        info_file = work / ".mainspring" / "dev.json"
        info = json.loads(info_file.read_text())
        assert info["pid"] == dev.pid
        # its NATS runs with the roles, each seed this user's alone: commands here get
        # the operator's through dev.json; a client without a seed is refused
        assert info_file.stat().st_mode & 0o077 == 0
        seeds = sorted((work / ".mainspring" / "roles").glob("*.nk"))
        assert {s.stem for s in seeds} >= {"operator", "worker", "client", "handler-cli"}
        assert all(s.stat().st_mode & 0o077 == 0 for s in seeds)
        refused = cli("runs", cwd=work, env={**env, "MAINSPRING_NATS_NKEY": ""})
        assert refused.returncode != 0
        assert "refused this connection" in refused.stderr
        # the client's seed is enough to list runs
        nc_env = {**env, "MAINSPRING_NATS_NKEY": str(work / ".mainspring/roles/client.nk")}
        assert cli("runs", cwd=work, env=nc_env).returncode == 0
        started = cli(
            "run",
            str(EXAMPLE),
            "--input",
            '{"repo": "r", "tag": "v3"}',
            "--wait",
            "--json",
            cwd=work,
            env=env,
        )
        assert started.returncode == 40, started.stdout + started.stderr
        run_id = json.loads(started.stdout)["run_id"]
        done = cli(
            "resume",
            run_id,
            "release_review",
            "--payload",
            '{"decision": "publish"}',
            "--wait",
            "--json",
            cwd=work,
            env=env,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["result"] == {"status": "published", "lines": 3}
        assert "status    completed" in _status_until(run_id, 0, work, env)
    finally:
        code = _stop(dev)
    assert code == 0
    assert not (work / ".mainspring" / "dev.json").exists()
    dev = _start_dev(work, env, port)
    try:
        assert "status    completed" in _status_until(run_id, 0, work, env)
        audit = cli(
            "audit",
            "verify",
            run_id,
            "--public-key",
            str(work / ".mainspring" / "keys" / "signing.pub.pem"),
            cwd=work,
            env=env,
        )
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        assert _stop(dev) == 0


def _gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _servers_of(pid: int) -> list[int]:
    """The nats-server and postgres processes ``pid`` started (its direct children)."""
    children = [
        int(c)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for c in (task / "children").read_text().split()
    ]
    names = {c: Path(f"/proc/{c}/comm").read_text().strip() for c in children}
    found = [c for c, name in names.items() if name in ("nats-server", "postgres")]
    assert len(found) == 2, f"expected a nats-server and a postgres among {names}"
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still running after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if not _gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)  # re-checking a condition with a deadline
    return alive


async def _flood(info: dict[str, object], runs: int) -> None:
    """Start many effect-heavy runs and return once some, not all, have finished."""
    nc = await connect(str(info["nats_url"]), auth=NatsAuth(nkey=str(info["nats_nkey"])))
    try:
        client = ms.Client(nc, Subjects(str(info["prefix"]), int(str(info["partitions"]))))
        ids = [await client.start("fanout", 20) for _ in range(runs)]
        with anyio.fail_after(60):
            await client.result(ids[0])
        try:
            last: str = (await client.status(ids[-1])).status
        except ms.MainspringError:
            last = "not started yet"
        assert last != "completed", "every run finished: no load left to stop under"
    finally:
        await nc.close()


def _dev_under_load(
    tmp_path: Path, *, background: bool = False
) -> tuple[subprocess.Popen[str], list[int], Path]:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    apps = ("--app", "tests.apps:registry", "--handlers", "tests.apps:handlers")
    dev = _start_dev(work, _env(home), free_port(), *apps, background=background)
    info = json.loads((work / ".mainspring" / "dev.json").read_text())
    try:
        servers = _servers_of(dev.pid)
        anyio.run(_flood, info, 200)
    except BaseException:
        _stop(dev)
        raise
    return dev, servers, work


@pytest.mark.parametrize(
    ("sig", "background"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["SIGINT", "SIGINT-background-job", "SIGTERM"],
)
def test_dev_stops_within_seconds_under_load(
    tmp_path: Path, sig: signal.Signals, background: bool
) -> None:
    """SIGINT (also to a script's background job) or SIGTERM stops `mainspring dev` within
    seconds while hundreds of runs and thousands of effects are in flight, and its
    nats-server and PostgreSQL are gone."""
    dev, servers, work = _dev_under_load(tmp_path, background=background)
    try:
        began = time.monotonic()
        dev.send_signal(sig)
        dev.communicate(timeout=15)
        took = time.monotonic() - began
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.communicate()
        alive = _wait_gone(servers, 10)
        for pid in alive:  # do not leave them behind even when the test fails
            os.kill(pid, signal.SIGKILL)
    assert dev.returncode == 0
    assert took < 8, f"stopping took {took:.1f}s"
    assert alive == [], "servers outlived mainspring dev"
    assert not (work / ".mainspring" / "dev.json").exists()


def test_dev_sigkilled_leaves_no_server(tmp_path: Path) -> None:
    """kill -9 of `mainspring dev` under load: its nats-server and PostgreSQL die with it."""
    dev, servers, _ = _dev_under_load(tmp_path)
    try:
        dev.kill()
        dev.communicate()
    finally:
        alive = _wait_gone(servers, 10)
        for pid in alive:
            os.kill(pid, signal.SIGKILL)
    assert alive == [], "servers outlived a SIGKILLed mainspring dev"
