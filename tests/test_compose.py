"""compose.yaml starts what Mainspring needs (no Docker engine here: checked statically)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict[str, Any]:
    data = YAML(typ="safe").load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_names_nats_with_jetstream_new_enough() -> None:
    """NATS >= 2.12 with JetStream on a persistent volume, client port published."""
    nats = _compose()["services"]["nats"]
    image = nats["image"]
    version = re.match(r"nats:(\d+)\.(\d+)", image)
    assert version, image
    assert (int(version.group(1)), int(version.group(2))) >= (2, 12)
    assert "--jetstream" in nats["command"]
    assert "4222:4222" in nats["ports"]
    assert any(v.endswith(":/data") for v in nats["volumes"])


def test_compose_names_postgres_with_a_volume() -> None:
    """PostgreSQL with credentials matching the README's DSN and a persistent volume."""
    compose = _compose()
    pg = compose["services"]["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "5432:5432" in pg["ports"]
    assert pg["environment"]["POSTGRES_DB"] == "mainspring"
    assert set(compose["volumes"]) == {"nats-data", "postgres-data"}
    readme = (ROOT / "README.md").read_text()
    assert "postgresql://mainspring:mainspring@127.0.0.1:5432/mainspring" in readme
