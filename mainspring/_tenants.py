"""Tenants: each its own NATS account (streams, KV and objects isolated by the server,
with JetStream limits) and its own PostgreSQL schema (docs/security.md#tenants).

A tenants directory holds one folder per tenant (its roles' seeds, ``account.conf``,
``tenant.json``) and ``accounts.conf``, every tenant's account for nats-server.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from schemas import ConfigError
from streams import AccountLimits, Subjects, account_block, accounts_conf

TENANT_FILE = "tenant.json"
ACCOUNTS_FILE = "accounts.conf"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SIZE = re.compile(r"(\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    account: str
    postgres_schema: str
    kinds: list[str] = msgspec.field(default_factory=list)
    max_storage: int = -1
    max_streams: int = -1
    max_consumers: int = -1


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1048576`` -> bytes."""
    found = _SIZE.fullmatch(text.strip())
    if found is None:
        raise ConfigError(f"not a size: {text!r} (say 500M, 2G or a number of bytes)")
    power = "_kmgt".index(found.group(2).lower() or "_")
    return int(found.group(1)) * int(1024**power)


def add_tenant(
    root: Path, name: str, kinds: list[str], limits: AccountLimits, *, prefix: str = "ms"
) -> Tenant:
    """Make (or remake, keeping its seeds) tenant ``name`` under ``root`` and write
    ``accounts.conf`` again with every tenant's account."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"invalid tenant name {name!r}: a-z, then up to 31 of a-z 0-9 _")
    folder = root / name
    tenant = Tenant(
        name=name,
        account=name.upper(),
        postgres_schema=f"tenant_{name}",
        kinds=sorted(set(kinds)),
        max_storage=limits.max_storage,
        max_streams=limits.max_streams,
        max_consumers=limits.max_consumers,
    )
    block, _ = account_block(
        folder, Subjects(prefix), tenant.kinds, account=tenant.account, limits=limits
    )
    (folder / "account.conf").write_text(block + "\n")
    (folder / TENANT_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(tenant)) + b"\n")
    write_accounts(root)
    return tenant


def tenants(root: Path) -> list[Tenant]:
    found = []
    for path in sorted(root.glob(f"*/{TENANT_FILE}")):
        try:
            found.append(msgspec.json.decode(path.read_bytes(), type=Tenant))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise ConfigError(f"{path} is not a Mainspring tenant file: {e}") from None
    return found


def write_accounts(root: Path) -> Path:
    """``accounts.conf``: every tenant's account, for nats-server.conf."""
    blocks = [(root / t.name / "account.conf").read_text().rstrip("\n") for t in tenants(root)]
    path = root / ACCOUNTS_FILE
    path.write_text(accounts_conf(blocks, f"Mainspring tenants in {root}"))
    return path
