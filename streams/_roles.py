"""Least-privilege NATS permissions per role, derived from a deployment's subjects.

Each role gets exactly the subjects its processes publish and subscribe to, JetStream
API calls included (docs/security.md has the table in words):

- **operator**: everything of the deployment: creates the streams, KV buckets and
  object store (``mainspring setup``), re-injects dead letters, deletes consumers.
- **worker**: appends to journals, reads them, consumes inbox partitions, schedules
  timers, holds partition leases, writes dead letters and large payloads.
- **handler** (one per set of kinds): consumes only its kinds' requests, sends only
  effect results, keeps at-most-once markers; cannot append to a journal.
- **client**: starts, cancels and wakes runs, sends resume events, reads journals and
  results; cannot append to a journal or send effect results.
- **event-sender**: publishes resume events only (webhooks, other services).
- **projector**: reads the journal through its own consumer, writes dead letters of
  its source.
- **auditor**: reads the journal, its objects and dead letters; writes nothing.

No role may delete or purge a stream or a message except the operator, and the
journal stream denies even the operator's purge and message deletes (deny_purge,
deny_delete). Each user's replies come under its own prefix (``_INBOX.<its key>``,
set by ``NatsAuth`` for an nkey): no role can listen to another's replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from streams._jsapi import nkey_public, reply_prefix
from streams._markers import EffectMarkers
from streams._subjects import Subjects

ROLES = ("operator", "worker", "handler", "client", "event-sender", "projector", "auditor")
REPLIES = "_INBOX.>"
"""stands for the user's own reply prefix (``write_roles`` puts it in)"""


@dataclass(frozen=True)
class Permissions:
    """What one role may publish and subscribe to (nats-server ``allow`` lists)."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    responds: bool = False
    """may answer requests it receives (``allow_responses``): a worker's liveness ping"""


def _api(*calls: str) -> list[str]:
    return [f"$JS.API.{c}" for c in calls]


def permissions(subjects: Subjects, role: str, *, kinds: Sequence[str] = ()) -> Permissions:
    """The ``allow`` lists of ``role`` for the deployment of ``subjects``; a handler's
    ``kinds`` name the effect kinds it serves."""
    s = subjects
    p = s.prefix
    d, o = s.dead_letter_stream, s.object_stream
    shards = range(s.shards)
    js = s.journal_streams  # one journal stream and one inbox stream per shard
    ins = [s.inbox_stream_of(k) for k in shards]
    leases, markers, objects = s.lease_bucket, EffectMarkers.bucket(s), s.object_bucket
    # what every role needs to find the deployment (ensure_topology only reads when the
    # streams exist, as the operator made them)
    runs = s.index_stream
    base = _api("INFO", *(f"STREAM.INFO.{x}" for x in (*js, *ins, d, o, runs)))
    read_objects = _api(f"DIRECT.GET.{o}", f"DIRECT.GET.{o}.>")
    read_journal = [
        *_api(*(c for j in js for c in (f"DIRECT.GET.{j}", f"DIRECT.GET.{j}.>"))),
        *_api(*(f"STREAM.MSG.GET.{j}" for j in js)),
        *read_objects,
    ]
    write_objects = [f"$O.{objects}.>"]
    if role == "operator":
        return Permissions(
            publish=[
                f"{p}.>",
                "$JS.API.>",
                f"$KV.{leases}.>",
                f"$KV.{markers}.>",
                *write_objects,
                *(f"$JS.ACK.{x}.>" for x in (*ins, *js)),
                "$JS.FC.>",
                "$JS.SNAPSHOT.>",  # backup (snapshot acks) and restore (chunks)
            ],
            subscribe=[REPLIES, f"{p}.>"],
        )
    if role == "worker":
        kv = [f"$KV.{leases}.>"]
        return Permissions(
            publish=[
                *base,
                *read_journal,
                *(s.journal_all(k) for k in shards),
                f"{p}.in.>",
                *(s.schedule_all(k) for k in shards),
                f"{p}.dlq.>",
                f"{p}.worker.*.ping",
                s.lease_round(),
                f"{p}.active.*",
                s.index_all(),
                *_api(f"STREAM.INFO.{s.active_stream}", f"STREAM.PURGE.{s.active_stream}"),
                *write_objects,
                *kv,
                *_api(
                    f"STREAM.INFO.KV_{leases}",
                    f"DIRECT.GET.KV_{leases}.>",
                    f"STREAM.MSG.GET.KV_{leases}",
                    f"CONSUMER.CREATE.KV_{leases}",
                    f"CONSUMER.CREATE.KV_{leases}.>",
                    f"CONSUMER.INFO.KV_{leases}.>",
                    f"CONSUMER.DELETE.KV_{leases}.>",
                    *(
                        f"CONSUMER.{call}.{i}.>"
                        for i in ins
                        for call in ("CREATE", "MSG.NEXT", "INFO", "DELETE")
                    ),
                ),
                *(f"$JS.ACK.{i}.>" for i in ins),
                "$JS.FC.>",
            ],
            subscribe=[REPLIES, f"{p}.worker.*.ping", s.lease_round()],
            responds=True,
        )
    if role == "handler":
        return Permissions(
            publish=[
                *base,
                *read_objects,
                f"{p}.in.*.*.effect.result",
                f"{p}.dlq.fx.>",
                *write_objects,
                f"$KV.{markers}.>",
                *_api(f"STREAM.INFO.KV_{markers}", f"DIRECT.GET.KV_{markers}.>"),
                *(
                    a
                    for k in kinds
                    for shard, j in enumerate(js)
                    for a in (
                        # the filter is part of the subject: no wider one, no other kind
                        f"$JS.API.CONSUMER.CREATE.{j}.{s.effect_consumer(k)}."
                        f"{s.effect_filter(k, shard)}",
                        f"$JS.API.CONSUMER.MSG.NEXT.{j}.{s.effect_consumer(k)}",
                        f"$JS.ACK.{j}.{s.effect_consumer(k)}.>",
                    )
                ),
            ],
            subscribe=[REPLIES],
        )
    if role == "client":
        return Permissions(
            publish=[
                *base,
                *read_journal,
                *(f"{p}.in.*.*.{kind}" for kind in ("start", "cancel", "wake")),
                f"{p}.event.>",
                *write_objects,
                *_api(*(f"STREAM.INFO.{j}.>" for j in js)),
            ],
            subscribe=[REPLIES, f"{p}.jn.>"],
        )
    if role == "event-sender":
        return Permissions(publish=[f"{p}.event.>"], subscribe=[REPLIES])
    if role == "projector":
        return Permissions(
            publish=[
                *base,
                *read_journal,
                f"{p}.dlq.projector.>",
            ],
            subscribe=[REPLIES, f"{p}.jn.>"],
        )
    if role == "auditor":
        return Permissions(
            publish=[
                *base,
                *read_journal,
                *_api(
                    f"DIRECT.GET.{d}",
                    f"DIRECT.GET.{d}.>",
                    f"DIRECT.GET.{runs}",
                    f"DIRECT.GET.{runs}.>",
                    *(c for j in js for c in (f"CONSUMER.CREATE.{j}", f"CONSUMER.CREATE.{j}.>")),
                ),
                "$JS.FC.>",
            ],
            subscribe=[REPLIES],
        )
    raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")


def _user_key(path: Path) -> str:
    """The public key of the NATS user nkey kept at ``path`` (made there, 0600, if it
    is not). Written again, a config keeps every user's key."""
    import os
    import secrets

    import nkeys  # type: ignore[import-untyped]

    if not path.exists():
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed + b"\n")
    return nkey_public(path)


def role_users(subjects: Subjects, kinds: Sequence[str]) -> dict[str, Permissions]:
    """Every user of a deployment: one per role, and one handler user per effect kind
    (``handler-<kind>``, dots as ``_``), so a handler of one kind cannot take another's."""
    users = {role: permissions(subjects, role) for role in ROLES if role != "handler"}
    for kind in kinds:
        users[f"handler-{kind.replace('.', '_')}"] = permissions(subjects, "handler", kinds=[kind])
    return users


@dataclass(frozen=True)
class AccountLimits:
    """JetStream limits of one account (a tenant): what its streams may hold (-1: no
    limit). The server refuses a write past them with an error that names the limit."""

    max_storage: int = -1
    """bytes of file storage across all its streams, KV buckets and objects"""
    max_streams: int = -1
    max_consumers: int = -1

    def jetstream(self) -> str:
        given = {
            "max_file": self.max_storage,
            "max_streams": self.max_streams,
            "max_consumers": self.max_consumers,
        }
        set_ = {k: v for k, v in given.items() if v >= 0}
        if not set_:
            return "jetstream: enabled"
        return "jetstream: { " + ", ".join(f"{k}: {v}" for k, v in set_.items()) + " }"


def account_block(
    out: Path,
    subjects: Subjects,
    kinds: Sequence[str],
    *,
    account: str | None = None,
    limits: AccountLimits | None = None,
) -> tuple[str, list[Path]]:
    """One account of an ``accounts`` block (JetStream on, within ``limits``; one nkey
    user per role, each user's seed ``<user>.nk`` in ``out``), and the seeds' paths."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    name = account or subjects.prefix.upper().replace("-", "_")
    lines = [f"  {name}: {{", f"    {(limits or AccountLimits()).jetstream()}", "    users: ["]
    written = []
    for user, perms in role_users(subjects, kinds).items():
        path = out / f"{user}.nk"
        public = _user_key(path)
        written.append(path)
        replies = f"{reply_prefix(public)}.>"
        allow: dict[str, object] = {
            "publish": {"allow": perms.publish},
            "subscribe": {"allow": [replies if s == REPLIES else s for s in perms.subscribe]},
        }
        if perms.responds:
            allow["allow_responses"] = True
        lines.append(f"      # {user}")
        lines.append(f"      {{ nkey: {json.dumps(public)}, permissions: {json.dumps(allow)} }}")
    lines += ["    ]", "  }"]
    return "\n".join(lines), written


def accounts_conf(blocks: Sequence[str], what: str) -> str:
    """An ``accounts`` block of nats-server.conf holding ``blocks``."""
    return "\n".join(
        [
            f"# {what}, written by Mainspring. Include it in nats-server.conf;",
            "# each process connects with its role's seed (--nats-nkey <role>.nk).",
            "accounts {",
            *blocks,
            "}",
            "",
        ]
    )


def write_roles(
    out: Path,
    subjects: Subjects,
    kinds: Sequence[str],
    *,
    account: str | None = None,
    limits: AccountLimits | None = None,
) -> list[Path]:
    """Write ``nats-auth.conf`` (an ``accounts`` block to include in nats-server.conf:
    the deployment's own account with JetStream, one nkey user per role) and each
    user's nkey seed, ``<user>.nk`` (readable by its owner only; a seed already there
    is kept). Returns the paths."""
    block, written = account_block(out, subjects, kinds, account=account, limits=limits)
    conf = out / "nats-auth.conf"
    conf.write_text(accounts_conf([block], f"Roles of the deployment {subjects.prefix!r}"))
    return [conf, *written]
