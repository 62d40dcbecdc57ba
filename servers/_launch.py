"""Server processes of ours: started on free ports (again when one was taken), tied
to our life, stopped the way each server likes.

A free port is picked before the server binds it; another process may take it in
between. The server then exits with "address already in use": pick new ports and
launch again (three tries), unless the caller chose the ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

import anyio

from schemas import ConnectionFailed

TRIES = 3


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


class Launchable(Protocol):
    def launch(self) -> None:
        """Spawn the server without waiting for it."""

    def wait_ready(self, timeout: float) -> None:
        """Block until it serves (``ConnectionFailed`` when it exited or timed out)."""

    def repick_ports(self) -> bool:
        """New ports when ours were picked for us and one was taken meanwhile (False:
        the caller chose them, or the failure was something else)."""


def start_retrying(server: Launchable, timeout: float) -> None:
    for attempt in range(TRIES):
        server.launch()
        try:
            server.wait_ready(timeout)
            return
        except ConnectionFailed:
            if attempt == TRIES - 1 or not server.repick_ports():
                raise


async def start_retrying_async(server: Launchable, timeout: float) -> None:
    """``start_retrying`` for async callers: launched on the calling (event loop)
    thread, so the parent-death signal holds for the process's life; waited for in a
    worker thread, abandoned at once when cancelled."""
    for attempt in range(TRIES):
        server.launch()
        try:
            await anyio.to_thread.run_sync(server.wait_ready, timeout, abandon_on_cancel=True)
            return
        except ConnectionFailed:
            if attempt == TRIES - 1 or not server.repick_ports():
                raise


class ChildServer:
    """A server process of ours: stopped the way it likes, or killed."""

    stop_signal: signal.Signals
    """what asks the server to stop cleanly (also sent if we die first)"""
    stop_timeout: float
    """how long a clean stop may take before the server is killed"""
    proc: subprocess.Popen[bytes] | None = None

    def stop(self, timeout: float | None = None) -> None:
        """Stop with ``stop_signal``; SIGKILL when that takes longer than ``timeout``."""
        if self.proc is not None:
            stop_children([(self.proc, self.stop_signal)], timeout or self.stop_timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server's whole process group."""
        if self.proc is not None:
            kill_group(self.proc)
        self.proc = None
