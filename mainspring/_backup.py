"""Backup and restore of a deployment's streams, with JetStream's own snapshots.

A backup is a directory: ``manifest.json`` (the deployment, and per stream its
configuration, state and the SHA-256 of its snapshot) and one ``<stream>.snapshot`` per
stream (the server's snapshot archive, messages and consumers with their positions).
A restore recreates every stream from it, sequence for sequence, consumers where they
were: hash-chain links, tags, key thresholds, projector positions and the handlers'
places in the journal all stay true.

What is backed up: each shard's journal and inbox, the dead letters, the run index,
the cap on active runs, the payload objects, the at-most-once start markers. Not the
lease bucket: leases are taken afresh. The deployment must be quiet (no worker or
handler running): the streams are snapshotted one after the other, and a run that
moved between two snapshots could lose an input or wait for a result forever.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import ConfigError
from streams import (
    ApiError,
    EffectMarkers,
    Leases,
    Subjects,
    api_request,
    consumer_infos,
    stream_info,
)

FORMAT = "mainspring-backup/1"
MANIFEST = "manifest.json"
_CHUNK = 128 * 1024


class StreamCopy(msgspec.Struct, frozen=True):
    name: str
    file: str
    sha256: str
    bytes: int
    config: dict[str, Any]
    state: dict[str, Any]


class Manifest(msgspec.Struct, frozen=True):
    format: str
    prefix: str
    partitions: int
    shards: int
    taken_at: str
    streams: list[StreamCopy]


def backup_streams(subjects: Subjects) -> list[str]:
    """The streams a backup holds, in the order they are taken."""
    s = subjects
    return [
        *s.journal_streams,
        *(s.inbox_stream_of(k) for k in range(s.shards)),
        s.dead_letter_stream,
        s.index_stream,
        s.active_stream,
        s.object_stream,
        f"KV_{EffectMarkers.bucket(s)}",
    ]


async def check_quiet(nc: NATS, subjects: Subjects, what: str) -> None:
    """Refuse while something of the deployment runs: a worker announced in the lease
    bucket that answers its ping, or a handler pulling from a journal consumer."""
    leases = Leases(nc, subjects, f"{what}-check")
    try:
        await leases.open()
        alive = await leases.live_members() - 1
    except ApiError:
        alive = 0
    if alive > 0:
        raise ConfigError(
            f"{alive} worker(s) of this deployment are running: stop every worker and "
            f"handler before {what} (runs would move while it reads the streams)"
        )
    for stream in subjects.journal_streams:
        for info in await consumer_infos(nc, stream):
            if info.get("num_waiting", 0) or info.get("push_bound"):
                raise ConfigError(
                    f"consumer {info['name']} of {stream} has a reader connected (a "
                    f"handler?): stop every worker and handler before {what}"
                )


async def backup(
    nc: NATS, subjects: Subjects, into: Path, say: Callable[[str], None] = lambda _: None
) -> Manifest:
    """Snapshot every stream of the deployment into the directory ``into`` (new, or
    empty), then write the manifest last: a directory without one is no backup."""
    if await stream_info(nc, subjects.journal_stream) is None:
        raise ConfigError(f"no deployment {subjects.prefix!r} here (no {subjects.journal_stream})")
    for stream in subjects.journal_streams:
        if await stream_info(nc, f"{stream}_ERASING") is not None:
            raise ConfigError(
                f"an erasure of {stream} was cut short: finish it first (`mainspring erase` "
                "with the same runs), then back up"
            )
    _new_directory(into)
    copies = []
    for name in backup_streams(subjects):
        if await stream_info(nc, name) is None:
            continue  # this deployment has none (no cap on active runs, say)
        copy = await _snapshot(nc, name, into / f"{name}.snapshot")
        copies.append(copy)
        say(f"{name}: {copy.state.get('messages', 0)} messages, {copy.bytes} bytes")
    manifest = Manifest(
        FORMAT,
        subjects.prefix,
        subjects.partitions,
        subjects.shards,
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        copies,
    )
    (into / MANIFEST).write_bytes(msgspec.json.format(msgspec.json.encode(manifest)) + b"\n")
    return manifest


def _new_directory(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise ConfigError(f"{path} is not empty: back up into a new directory")


async def _snapshot(nc: NATS, stream: str, path: Path) -> StreamCopy:
    """One stream's snapshot (messages and consumers) into ``path``."""
    inbox = nc.new_inbox()
    digest = hashlib.sha256()
    size = 0
    done = anyio.Event()
    failed: list[str] = []
    out = path.open("wb")

    async def chunk(msg: Msg) -> None:
        nonlocal size
        if not msg.data:  # the end (a status header says if the server gave up)
            status = (msg.headers or {}).get("Status")
            if status and status != "200":
                failed.append(f"{status} {(msg.headers or {}).get('Description', '')}")
            done.set()
            return
        out.write(msg.data)
        digest.update(msg.data)
        size += len(msg.data)
        if msg.reply:  # flow control: the server sends more once chunks are acknowledged
            await nc.publish(msg.reply, b"")

    sub = await nc.subscribe(inbox, cb=chunk)
    try:
        answer = await api_request(
            nc,
            f"$JS.API.STREAM.SNAPSHOT.{stream}",
            {"deliver_subject": inbox, "chunk_size": _CHUNK, "jsck": True},
            timeout=30,
        )
        with anyio.fail_after(600):
            await done.wait()
    finally:
        await sub.unsubscribe()
        out.close()
    if failed:
        raise ConfigError(f"the server could not snapshot {stream}: {failed[0]}")
    return StreamCopy(
        stream, path.name, digest.hexdigest(), size, answer["config"], answer["state"]
    )


def read_manifest(path: Path) -> Manifest:
    try:
        manifest = msgspec.json.decode((path / MANIFEST).read_bytes(), type=Manifest)
    except OSError as e:
        raise ConfigError(
            f"{path} holds no {MANIFEST} ({e.strerror}): not a backup, or one cut short"
        ) from e
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ConfigError(f"{path / MANIFEST} is not a Mainspring backup manifest: {e}") from e
    if manifest.format != FORMAT:
        raise ConfigError(f"{path} is a {manifest.format!r} backup; this reads {FORMAT!r}")
    return manifest


async def restore(nc: NATS, source: Path, say: Callable[[str], None] = lambda _: None) -> Manifest:
    """Recreate every stream of the backup in ``source``: checked first (each file
    against its digest, no stream of the backup already on the server), then restored
    one by one. Returns the manifest (its prefix, partitions and shards)."""
    manifest = read_manifest(source)
    for copy in manifest.streams:
        data = (source / copy.file).read_bytes()
        if hashlib.sha256(data).hexdigest() != copy.sha256:
            raise ConfigError(f"{source / copy.file} does not match its digest: not restoring")
        if await stream_info(nc, copy.name) is not None:
            raise ConfigError(
                f"stream {copy.name} exists on this server: restore into a server without "
                f"the deployment {manifest.prefix!r} (or delete its streams first)"
            )
    for copy in manifest.streams:
        await _restore_one(nc, copy, (source / copy.file).read_bytes())
        say(f"{copy.name}: {copy.state.get('messages', 0)} messages restored")
    return manifest


async def _restore_one(nc: NATS, copy: StreamCopy, data: bytes) -> None:
    answer = await api_request(
        nc,
        f"$JS.API.STREAM.RESTORE.{copy.name}",
        {"config": copy.config, "state": copy.state},
        timeout=30,
    )
    deliver = answer["deliver_subject"]
    for at in range(0, len(data), _CHUNK):
        reply = await nc.request(deliver, data[at : at + _CHUNK], timeout=30)
        if reply.data:
            raise ConfigError(f"restoring {copy.name}: {reply.data[:200].decode(errors='replace')}")
    end = msgspec.json.decode((await nc.request(deliver, b"", timeout=120)).data)
    if end.get("error"):
        raise ConfigError(f"restoring {copy.name}: {end['error'].get('description', end['error'])}")
