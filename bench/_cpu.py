"""CPU seconds used by each process during a measured interval (Linux /proc; empty elsewhere).

On a small machine the client, the worker and nats-server share the cores; the
split shows which one a throughput figure is bound by.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of ``pid`` so far, or None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """Snapshot named processes at start, report CPU-busy fraction of wall time at stop."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float | None] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """``{process: cpu seconds / wall seconds}`` since ``start`` (1.0 = one core busy)."""
        wall = time.perf_counter() - self._t0
        busy: dict[str, float] = {}
        for name, pid in self.pids.items():
            before, after = self._start.get(name), cpu_seconds(pid)
            if before is not None and after is not None and wall > 0:
                busy[name] = round((after - before) / wall, 2)
        return busy
