"""JetStream topology: create or update streams, and check the server can keep our promises.

Servers older than 2.12 silently ignore headers and stream fields we rely on
(scheduled messages for timers, the ``-Subject`` variant of the OCC header), so
we read the server version and JetStream API level, and check the stream config
the server echoes back. We refuse to run rather than run without a guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client as NATS

from schemas import ConfigError, ServerUnsupported
from streams._index import index_stream_config
from streams._jsapi import ApiError, api_request, stream_info
from streams._objects import object_stream_config
from streams._subjects import Subjects

log = structlog.get_logger()

MIN_SERVER = (2, 12, 0)
MIN_API_LEVEL = 2  # JetStream API level of nats-server 2.12
_NS = 1_000_000_000


@dataclass(frozen=True)
class ServerFeatures:
    version: str
    api_level: int


@dataclass(frozen=True)
class TopologyConfig:
    """Stream settings.

    ``replicas``: 3 on a 3-node cluster for broker fault tolerance. ``None`` (the
    default) creates R1 streams and never changes an existing stream's replicas, so
    a worker started without this setting cannot scale an R3 deployment down.
    """

    replicas: int | None = None
    duplicate_window_s: float = 120.0
    storage: str = "file"


def _parse_version(text: str) -> tuple[int, int, int]:
    core = text.split("-")[0].lstrip("v")
    parts = [int(p) for p in core.split(".")[:3] if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return parts[0], parts[1], parts[2]


async def check_server(nc: NATS) -> ServerFeatures:
    """Refuse servers older than 2.12 (naming the version found and the one needed)."""
    version = nc.connected_server_version
    found = f"{version.major}.{version.minor}.{version.patch}"
    need = ".".join(map(str, MIN_SERVER))
    if (version.major, version.minor, version.patch) < MIN_SERVER:
        raise ServerUnsupported(
            f"nats-server {found} is too old: Mainspring needs nats-server >= {need} "
            "(scheduled messages and subject-filtered optimistic concurrency). "
            "Older servers silently ignore the headers that keep runs correct. "
            "Use `mainspring dev` (bundles a new server) or upgrade."
        )
    info = await api_request(nc, "$JS.API.INFO")
    level = int(info.get("api", {}).get("level", 0))
    if level < MIN_API_LEVEL:
        raise ServerUnsupported(
            f"nats-server {found} reports JetStream API level {level}; Mainspring needs "
            f"level >= {MIN_API_LEVEL} (nats-server >= {need})"
        )
    return ServerFeatures(version=found, api_level=level)


SHARDS_KEY = "mainspring_shards"
"""the stream metadata entry of shard 0's journal that records the deployment's shards"""


def journal_stream_config(
    subjects: Subjects, cfg: TopologyConfig, shard: int = 0
) -> dict[str, Any]:
    config = {
        "name": subjects.journal_stream_of(shard),
        "description": "Mainspring run journals: the source of truth",
        "subjects": [subjects.journal_all(shard)],
        "retention": "limits",
        "storage": cfg.storage,
        "num_replicas": cfg.replicas,
        "discard": "old",
        "duplicate_window": int(cfg.duplicate_window_s * _NS),
        "allow_direct": True,
        "deny_delete": True,
        # No purge either, of the stream or of a run's subjects: history cannot be cut
        # through the API. NATS cannot lift this once set (docs/concepts.md).
        "deny_purge": True,
        "allow_rollup_hdrs": False,
        "republish": {
            "src": subjects.journal_all(shard),
            "dest": subjects.watch_all(),
            "headers_only": True,
        },
    }
    if shard == 0 and subjects.shards > 1:
        # Where every process finds how many shards there are (a deployment of one
        # shard has none: so were all deployments before shards).
        config["metadata"] = {SHARDS_KEY: str(subjects.shards)}
    return config


def inbox_stream_config(subjects: Subjects, cfg: TopologyConfig, shard: int = 0) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": subjects.inbox_stream_of(shard),
        "description": "Mainspring run inboxes: inputs not yet turned into journal facts",
        "subjects": subjects.inbox_stream_subjects(shard),
        "retention": "workqueue",
        "storage": cfg.storage,
        "num_replicas": cfg.replicas,
        "discard": "old",
        "duplicate_window": int(cfg.duplicate_window_s * _NS),
        "allow_direct": True,
        "allow_msg_schedules": True,
    }
    if shard == 0:
        config["subject_transform"] = {
            "src": subjects.event_ingest(),
            "dest": subjects.event_transform_dest(),
        }
    return config


DLQ_MAX_AGE_DAYS = 30
DLQ_MAX_MSGS = 100_000
DLQ_PER_SUBJECT = 1000
"""dead letters kept per source and run: a flood for one run cannot push out others'"""
# No max_bytes: JetStream reserves a stream's max_bytes up front from the server's
# storage, per deployment prefix. Letters are bounded by count and age instead, and
# each by the server's max payload (it was a message of ours once).


def dead_letter_stream_config(subjects: Subjects) -> dict[str, Any]:
    return {
        "name": subjects.dead_letter_stream,
        "description": "Mainspring dead letters: messages a consumer could not apply, and why",
        "subjects": [subjects.dead_letter_all()],
        "retention": "limits",
        "storage": "file",
        "discard": "old",
        "max_age": DLQ_MAX_AGE_DAYS * 86400 * _NS,
        "max_msgs": DLQ_MAX_MSGS,
        "max_bytes": -1,
        "max_msgs_per_subject": DLQ_PER_SUBJECT,
        "duplicate_window": 120 * _NS,
        "allow_direct": True,
    }


def _same(field: str, current: Any, wanted: Any) -> bool:
    if field == "metadata":  # the server adds entries of its own (``_nats.*``)
        return all((current or {}).get(k) == v for k, v in wanted.items())
    return bool(current == wanted)


async def create_or_update(nc: NATS, config: dict[str, Any]) -> dict[str, Any]:
    name = config["name"]
    if config.get("num_replicas") is None:
        config = {**config, "num_replicas": 1}
        keep_replicas = True
    else:
        keep_replicas = False
    info = await stream_info(nc, name)
    if info is None:
        resp = await api_request(nc, f"$JS.API.STREAM.CREATE.{name}", config)
        log.info("stream_created", stream=name)
        echoed: dict[str, Any] = resp["config"]
        return echoed
    current: dict[str, Any] = info["config"]
    if keep_replicas:
        config = {**config, "num_replicas": current.get("num_replicas", 1)}
    if all(_same(k, current.get(k), v) for k, v in config.items()):
        return current
    merged = {**current, **config}
    try:
        resp = await api_request(nc, f"$JS.API.STREAM.UPDATE.{name}", merged)
    except ApiError as e:
        raise ServerUnsupported(
            f"stream {name} exists with a configuration Mainspring cannot update "
            f"({e.description}); it was probably created with another partition count "
            "or by another version. Inspect it with `nats stream info`."
        ) from e
    log.info("stream_updated", stream=name)
    updated: dict[str, Any] = resp["config"]
    return updated


def _require(echoed: dict[str, Any], wanted: dict[str, Any], fields: tuple[str, ...]) -> None:
    for field in fields:
        if echoed.get(field) != wanted[field]:
            raise ServerUnsupported(
                f"stream {wanted['name']}: the server echoed {field}={echoed.get(field)!r} "
                f"instead of {wanted[field]!r}; this server does not support a feature "
                "Mainspring needs (nats-server >= 2.12 required)"
            )


async def ensure_topology(
    nc: NATS, subjects: Subjects, cfg: TopologyConfig | None = None
) -> ServerFeatures:
    """Check the server, then create or update the journal, inbox and dead-letter
    streams and verify what the server echoes."""
    cfg = cfg or TopologyConfig()
    features = await check_server(nc)
    await check_shards(nc, subjects)
    for shard in range(subjects.shards):
        journal = journal_stream_config(subjects, cfg, shard)
        inbox = inbox_stream_config(subjects, cfg, shard)
        _require(
            await create_or_update(nc, journal),
            journal,
            ("allow_direct", "republish", "deny_delete", "deny_purge"),
        )
        _require(
            await create_or_update(nc, inbox),
            inbox,
            ("allow_msg_schedules", "subject_transform", "retention")
            if shard == 0
            else ("allow_msg_schedules", "retention"),
        )
    dlq = dead_letter_stream_config(subjects)
    if cfg.replicas is not None:
        dlq["num_replicas"] = cfg.replicas
    _require(await create_or_update(nc, dlq), dlq, ("max_msgs_per_subject",))
    index = index_stream_config(subjects)
    if cfg.replicas is not None:
        index["num_replicas"] = cfg.replicas
    _require(await create_or_update(nc, index), index, ("deny_delete", "deny_purge"))
    await _ensure_objects(nc, subjects, cfg)
    return features


async def spread_leaders(nc: NATS, subjects: Subjects) -> dict[str, str]:
    """Move the leaders of the shards' replicated journal and inbox streams apart, so
    that no node leads more of them than its share (a leader takes every append of its
    stream: shards pay off across nodes only when their leaders are on different ones).

    The server places each stream's peers and elects its leader without regard to the
    others; this asks an overloaded node's streams to step down in favour of a replica
    on the least loaded node (nats-server >= 2.11: a preferred leader). A no-op when
    already spread, or on one node. Returns stream -> leader afterwards."""
    streams = [
        *subjects.journal_streams,
        *(subjects.inbox_stream_of(k) for k in range(subjects.shards)),
    ]
    leaders: dict[str, str] = {}
    peers: dict[str, list[str]] = {}
    for name in streams:
        info = await stream_info(nc, name)
        cluster = (info or {}).get("cluster") or {}
        if not cluster.get("leader") or not cluster.get("replicas"):
            continue  # R1, or no leader right now: nothing to move
        leaders[name] = cluster["leader"]
        peers[name] = [r["name"] for r in cluster["replicas"] if r.get("current")]
    nodes = sorted({n for name in leaders for n in (leaders[name], *peers[name])})
    if len(nodes) < 2:
        return leaders
    share = -(-len(leaders) // len(nodes))
    load = {n: sum(1 for v in leaders.values() if v == n) for n in nodes}
    for name in sorted(leaders):
        here = leaders[name]
        if load[here] <= share:
            continue
        target = min(peers[name], key=lambda n: (load[n], n), default=None)
        if target is None or load[target] + 1 > share:
            continue
        try:
            await api_request(
                nc,
                f"$JS.API.STREAM.LEADER.STEPDOWN.{name}",
                {"placement": {"preferred": target}},
            )
        except ApiError as e:  # a peer just went away: leave this one where it is
            log.warning("leader_not_moved", stream=name, to=target, error=e.description)
            continue
        load[here] -= 1
        load[target] += 1
        leaders[name] = target
        log.info("leader_moved", stream=name, to=target)
    return leaders


async def deployed_shards(nc: NATS, subjects: Subjects) -> int | None:
    """How many shards the deployment of ``subjects.prefix`` was created with (None:
    there is none yet)."""
    info = await stream_info(nc, subjects.journal_stream)
    if info is None:
        return None
    metadata = info["config"].get("metadata") or {}
    return int(metadata.get(SHARDS_KEY, "1"))


async def check_shards(nc: NATS, subjects: Subjects) -> None:
    """Refuse to work with another number of shards than the deployment was created
    with: runs would be looked for, and their inputs sent, in the wrong streams."""
    found = await deployed_shards(nc, subjects)
    if found is None or found == subjects.shards:
        return
    raise ConfigError(
        f"the deployment {subjects.prefix!r} has {found} shard(s), but this process was "
        f"started with {subjects.shards}. The number of shards is fixed when a deployment "
        f"is created: start it with --shards {found} (Subjects(..., shards={found}) in code). "
        "To move to more shards, create a new deployment under another prefix with "
        "`mainspring setup --prefix NEW --shards N`, start new runs there, and retire the "
        "old one when its runs have ended (docs/scaling.md, 'Changing the number of shards')."
    )


async def _ensure_objects(nc: NATS, subjects: Subjects, cfg: TopologyConfig) -> None:
    """The object store of large payloads (DESIGN.md §10), as replicated as the journal."""
    replicas = cfg.replicas
    if replicas is None:
        info = await api_request(nc, f"$JS.API.STREAM.INFO.{subjects.journal_stream}")
        replicas = int(info["config"].get("num_replicas", 1))
    config = object_stream_config(subjects, replicas, cfg.storage)
    _require(await create_or_update(nc, config), config, ("allow_rollup_hdrs", "allow_direct"))


async def set_retention(nc: NATS, subjects: Subjects, max_age_s: float) -> None:
    """Keep journal entries ``max_age_s`` seconds, then let the server drop the oldest
    (``discard: old``): retention for every run alike. Workers starting later keep it
    (they only set what they need). A run still going when its first entries age out
    loses them: pick an age longer than any run lives."""
    for name in subjects.journal_streams:
        info = await stream_info(nc, name)
        if info is None:
            raise ConfigError(f"no journal stream {name}: run setup first")
        await api_request(
            nc, f"$JS.API.STREAM.UPDATE.{name}", {**info["config"], "max_age": int(max_age_s * _NS)}
        )
