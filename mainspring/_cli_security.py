"""``mainspring keys`` and ``mainspring roles``: who wrote what, and who may do what.

The keys file is the ``--keys`` setting (flag, MAINSPRING_KEYS, or a running dev
instance's), like for every other command, so one variable serves them all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from mainspring._cli_options import Connection, connecting
from mainspring._cli_runner import EXIT_INVALID, EXIT_OK, Env
from mainspring._config import resolve
from schemas import ConfigError

if TYPE_CHECKING:
    from streams import Keyring

keys_app = typer.Typer(
    help="Deployment keys: workers tag every journal entry, effect request and input "
    "they write; workers, handlers, projectors and audits refuse what no key of the "
    "deployment tagged. Give the keys file with --keys or MAINSPRING_KEYS.",
    no_args_is_help=True,
)


def _fail(error: ConfigError) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(EXIT_INVALID)


KeysOpt = Annotated[
    str | None,
    typer.Option(
        "--keys",
        help="the deployment keys file [env: MAINSPRING_KEYS]",
        show_default=False,
    ),
]


def _path(flags: Mapping[str, str | None]) -> Path:
    value = resolve(flags)["keys"].value
    if not value:
        _fail(ConfigError("name the deployment keys file: --keys FILE or MAINSPRING_KEYS=FILE"))
    return Path(value)


def _ring(flags: Mapping[str, str | None]) -> tuple[Path, Keyring]:
    from streams import Keyring

    path = _path(flags)
    try:
        return path, Keyring.load(path)
    except ConfigError as e:
        _fail(e)


def _journal_end(conn: Connection, then: Callable[[list[int]], int]) -> None:
    """Connect and hand ``then`` each shard's journal stream's last sequence."""

    async def body(env: Env) -> int:
        from streams import Journal

        return then(await Journal(env.nc, env.subjects).last_seqs())

    conn.run(body)


def _seqs(text: str) -> list[int]:
    """``12`` or, one per shard, ``12,40,7``."""
    try:
        found = [int(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give a journal stream sequence, or one per shard (12,40,7)"
        ) from None
    if any(n < 0 for n in found):
        raise typer.BadParameter(f"{text!r}: sequences are not negative")
    return found


def _seqs_text(seqs: Sequence[int]) -> str:
    if len(seqs) == 1:
        return str(seqs[0])
    return ", ".join(f"{n} (shard {k})" for k, n in enumerate(seqs))


@keys_app.command("new")
@connecting(json=False)
def keys_new(
    legacy_until: Annotated[
        str | None,
        typer.Option(
            help="journal stream sequence up to which entries may be untagged (written "
            "before the keys), one per shard if it has several (12,40,7); default: read "
            "from the deployment (0 for a new one)",
            show_default=False,
        ),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Create the deployment keys file (readable by its owner only).

    Give it to workers, projectors and operators' commands (--keys / MAINSPRING_KEYS);
    give each handler host only `mainspring keys handler` for the kinds it serves."""
    from streams import Keyring

    path = _path(conn.flags)
    if path.exists():
        _fail(ConfigError(f"{path} exists: keys are rotated with `mainspring keys add`"))

    def create(until: list[int]) -> int:
        ring = Keyring.generate(legacy_until=until)
        ring.save(path)
        print(f"created {path} (sign key {ring.signing.id}); journal entries up to stream")
        print(f"  sequence {_seqs_text(until)} may be untagged (legacy). Give it to workers,")
        print("  projectors and operators (--keys / MAINSPRING_KEYS); handlers get")
        print("  `mainspring keys handler`.")
        return EXIT_OK

    if legacy_until is not None:
        raise SystemExit(create(_seqs(legacy_until)))
    _journal_end(conn, create)


@keys_app.command("show")
def keys_show(keys: KeysOpt = None) -> None:
    """List the keys (ids and uses, never the secrets)."""
    path, ring = _ring({"keys": keys})
    print(f"{path}: legacy until journal stream sequence {_seqs_text(ring.legacy)}")
    for key in ring.keys.values():
        extra = (
            f" (valid to stream sequence {_seqs_text(key.valid_to)})"
            if key.use == "revoked"
            else ""
        )
        print(f"  {key.id}  {key.use}{extra}")


@keys_app.command("add")
def keys_add(keys: KeysOpt = None) -> None:
    """Rotation, step 1: add a new key that verifies but does not sign yet.

    Roll the file out to every worker, handler (re-export) and projector, then make
    the new key sign with `mainspring keys use`: no host ever reads a tag it cannot
    check."""
    from streams import new_key

    path, ring = _ring({"keys": keys})
    key = new_key("verify")
    ring.added(key).save(path)
    print(f"added key {key.id} (verify only); when every host has this file:")
    print(f"  mainspring keys use {key.id}")


@keys_app.command("use")
def keys_use(
    key_id: Annotated[str, typer.Argument(help="the key that signs from now on")],
    keys: KeysOpt = None,
) -> None:
    """Rotation, step 2: make a key the one that signs; the old one keeps verifying."""
    path, ring = _ring({"keys": keys})
    try:
        ring.signing_with(key_id).save(path)
    except ConfigError as e:
        _fail(e)
    print(f"key {key_id} signs now; roll the file out (and re-export handlers' keys)")


@keys_app.command("revoke")
@connecting(json=False)
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key to revoke (not the sign key)")],
    valid_to_seq: Annotated[
        str | None,
        typer.Option(
            help="last journal stream sequence the key may have tagged, one per shard if "
            "it has several (12,40,7); later entries tagged with it are forged (default: "
            "the journal's end now)",
            show_default=False,
        ),
    ] = None,
    *,
    conn: Connection,
) -> None:
    """Revoke a leaked key: what it tagged up to a stream sequence stays valid, anything
    later tagged with it is reported as forged, and no live input tagged with it is
    accepted."""

    def revoke(seqs: list[int]) -> int:
        path, ring = _ring(conn.flags)
        try:
            ring.revoked(key_id, seqs).save(path)
        except ConfigError as e:
            _fail(e)
        print(
            f"revoked {key_id}: valid up to journal stream sequence {_seqs_text(seqs)}; "
            "roll the file out"
        )
        return EXIT_OK

    if valid_to_seq is not None:
        raise SystemExit(revoke(_seqs(valid_to_seq)))
    _journal_end(conn, revoke)


@keys_app.command("handler")
def keys_handler(
    kind: Annotated[
        list[str], typer.Option("--kind", help="an effect kind the handler serves (repeat)")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="the effect keys file to write")],
    keys: KeysOpt = None,
) -> None:
    """Export a handler's effect keys: it checks requests of these kinds and tags its
    results, and can neither take other kinds' requests nor write journal entries.
    Give it to the handler with --effect-keys or MAINSPRING_EFFECT_KEYS."""
    _, ring = _ring({"keys": keys})
    ring.effect_keys(kind).save(output)
    print(f"wrote {output}: effect keys for {', '.join(sorted(set(kind)))}")


# ---------------------------------------------------------------------- roles
roles_app = typer.Typer(
    help="Least-privilege NATS users, one per role (operator, worker, handler per kind, "
    "client, event-sender, projector, auditor): a nats-server config and their nkeys.",
    no_args_is_help=True,
)


@roles_app.command("write")
def roles_write(
    out: Annotated[Path, typer.Option("-o", "--out", help="directory to write into")],
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="an effect kind: its own handler user (repeat)"),
    ] = None,
    prefix: Annotated[str, typer.Option(help="subject prefix of the deployment")] = "ms",
    partitions: Annotated[int, typer.Option(help="inbox partitions")] = 16,
    shards: Annotated[int, typer.Option(help="journal and inbox shards")] = 1,
) -> None:
    """Write nats-auth.conf (the deployment's account: JetStream on, one nkey user per
    role, each allowed exactly its subjects) and each user's seed, <user>.nk.

    Put the conf's contents in nats-server.conf (or `include` it), restart the server,
    run `mainspring setup --nats-nkey operator.nk` once, then start each process with
    its own seed (--nats-nkey worker.nk, handler-<kind>.nk, ...). Keep the seeds secret;
    they are written readable by their owner only."""
    from streams import Subjects, nkey_public, reply_prefix, role_users, write_roles

    subjects = Subjects(prefix, partitions, shards)
    paths = write_roles(out, subjects, kind or [])
    print(f"wrote {paths[0]} and {len(paths) - 1} nkey seeds:")
    for user, perms in role_users(subjects, kind or []).items():
        replies = reply_prefix(nkey_public(out / f"{user}.nk"))
        print(
            f"  {user}.nk  publish {len(perms.publish)} subject(s), subscribe "
            f"{len(perms.subscribe)}; replies on {replies}.>"
        )


# ---------------------------------------------------------------------- tenants
tenants_app = typer.Typer(
    help="Tenants: each its own NATS account (streams isolated by the server, with "
    "JetStream limits), its own roles and its own PostgreSQL schema.",
    no_args_is_help=True,
)
TenantsDir = Annotated[
    Path, typer.Option("--dir", help="the tenants directory (one folder per tenant)")
]


@tenants_app.command("add")
def tenants_add(
    name: Annotated[str, typer.Argument(help="the tenant: a-z, then a-z 0-9 _")],
    root: TenantsDir = Path("tenants"),
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", help="an effect kind it serves: its own handler user (repeat)"),
    ] = None,
    max_storage: Annotated[
        str | None,
        typer.Option(help="JetStream storage for all its streams (500M, 2G)", show_default=False),
    ] = None,
    max_streams: Annotated[int, typer.Option(help="streams it may have (-1: any)")] = -1,
    max_consumers: Annotated[int, typer.Option(help="consumers it may have (-1: any)")] = -1,
) -> None:
    """Add a tenant (or change its limits and kinds, keeping its seeds), and write
    <dir>/accounts.conf again with every tenant's account.

    Put accounts.conf in nats-server.conf and reload the server; run `mainspring setup`
    with the tenant's operator.nk; give the tenant's processes their own seeds and its
    projector a DSN ending in ?search_path=tenant_<name> (the schema is made on first
    use)."""
    from mainspring._tenants import add_tenant, parse_size
    from streams import AccountLimits

    try:
        storage = parse_size(max_storage) if max_storage else -1
        tenant = add_tenant(
            root, name, kind or [], AccountLimits(storage, max_streams, max_consumers)
        )
    except ConfigError as e:
        _fail(e)
    print(f"tenant {tenant.name}: account {tenant.account}, seeds in {root / name}")
    print(f"  projector DSN: ...?search_path={tenant.postgres_schema}")
    print(f"  wrote {root / 'accounts.conf'} (every tenant): reload nats-server with it")


@tenants_app.command("list")
def tenants_list(root: TenantsDir = Path("tenants")) -> None:
    """The tenants and their limits."""
    from mainspring._tenants import tenants

    try:
        found = tenants(root)
    except ConfigError as e:
        _fail(e)

    def shown(n: int) -> str:
        return "-" if n < 0 else str(n)

    print("TENANT  ACCOUNT  STORAGE  STREAMS  CONSUMERS  SCHEMA  KINDS")
    for t in found:
        print(
            f"{t.name}  {t.account}  {shown(t.max_storage)}  {shown(t.max_streams)}  "
            f"{shown(t.max_consumers)}  {t.postgres_schema}  {','.join(t.kinds) or '-'}"
        )
