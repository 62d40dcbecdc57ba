"""Hosts as network namespaces: a lab of "machines" on one switch, whose links a test
cuts and restores (``ip netns``, veth pairs, a bridge; root only).

Every host gets an address in 198.18.<n>.0/24 (198.18.0.0/15 is reserved for network
tests) and nothing routes anywhere else. The test process itself is on the switch
too (``198.18.<n>.1``), so it reaches every host directly. A cut is made on the
switch's side of a host's link: the host keeps an interface that looks up while its
packets are dropped, as when a cable or a switch port fails beyond it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_TAG = "mslab"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why this machine cannot run the lab (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{_TAG}probe{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` was refused here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def require_lab() -> None:
    """Skip with the reason where namespaces are refused; under CI=true as root, fail."""
    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true" and os.geteuid() == 0:
        pytest.fail(f"the multi-host tests must run in CI as root: {reason}")
    pytest.skip(reason)


@dataclass
class Host:
    name: str
    netns: str
    ip: str
    port: str
    """the switch's end of this host's link (what a cut takes down)"""

    @property
    def wrap(self) -> tuple[str, ...]:
        """The command prefix that runs a program on this host."""
        return ("ip", "netns", "exec", self.netns)


@dataclass
class Lab:
    """A switch and hosts; ``with Lab() as lab`` removes everything on exit."""

    net: int = field(default_factory=lambda: 1 + os.getpid() % 250)
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tag = f"{_TAG}{os.getpid()}"
        self.switch = f"{self.tag}sw"
        self.root_link = f"ms{os.getpid()}r"
        self.ip = f"198.18.{self.net}.1"

    def __enter__(self) -> Lab:
        _remove_stale()
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        _ip("link", "add", self.root_link, "type", "veth", "peer", "name", "root")
        _ip("link", "set", "root", "netns", self.switch)
        _ip("-n", self.switch, "link", "set", "root", "master", "br0", "up")
        _ip("addr", "add", f"{self.ip}/24", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts.values():
            _kill_all_in(host.netns)
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.root_link, check=False)
        _ip("netns", "del", self.switch, check=False)

    def host(self, name: str) -> Host:
        n = len(self.hosts) + 10
        netns, port = f"{self.tag}{name}", f"h{name}"
        host = Host(name, netns, f"198.18.{self.net}.{n}", port)
        _ip("netns", "add", netns)
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0")
        _ip("-n", self.switch, "link", "set", "eth0", "netns", netns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def cut(self, *hosts: Host) -> None:
        for host in hosts:
            _ip("-n", self.switch, "link", "set", host.port, "down")

    def restore(self, *hosts: Host) -> None:
        for host in hosts:
            _ip("-n", self.switch, "link", "set", host.port, "up")


def _kill_all_in(netns: str) -> None:
    pids = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


def _remove_stale() -> None:
    """Namespaces a killed test session left behind (its pid is gone)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        owner = re.match(rf"{_TAG}(\d+)", name)
        if owner and not Path(f"/proc/{owner.group(1)}").exists():
            _kill_all_in(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        link = re.match(r"\d+: (ms(\d+)r)@", line)
        if link and not Path(f"/proc/{link.group(2)}").exists():
            _ip("link", "del", link.group(1), check=False)
