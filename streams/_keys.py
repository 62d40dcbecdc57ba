"""Deployment keys: who wrote a journal entry, an effect request or a result.

A hash chain proves order, not authorship: anyone who can read a journal can compute
the next link. So every message a Mainspring process writes for another one to trust
carries an HMAC-SHA256 tag in the header ``Ms-Mac: <key id>.<tag>`` (its first 16 bytes
in hex; DESIGN.md §10a, docs/security.md):

========================  =======================  =====================================
what                      key                      tagged bytes
========================  =======================  =====================================
journal entry             deployment key           ``ms1:j:<subject>:`` + chain link
effect request (also)     effect key of its kind   ``ms1:fx:<subject>:`` + chain link
effect result             effect key of its kind   ``ms1:res:<subject>:`` + message bytes
timer firing, child done  deployment key           ``ms1:in:<subject>:`` + message bytes
========================  =======================  =====================================

The chain link already covers the entry's bytes and its predecessor, so tagging it
binds run, position and content; the subject binds the run and the effect kind.
A request's second tag is in ``Ms-Fx-Mac``.

Deployment keys live with workers, projectors and operators (a ``mainspring keys``
file). A handler gets only the *effect keys* of the kinds it serves, derived as
``HMAC(deployment key, "ms1:effect-key:" + kind)``: an ``llm`` handler can neither take
``cli`` requests nor write journal entries. HMAC, not signatures: a tag costs about a
microsecond to make and to check, where Ed25519 costs 38 µs to sign and 130 µs to
verify per entry (measured), which audit at 50,000 events/s cannot pay.

Rotation: keys are added as ``verify`` first, made the ``sign`` key once every host
has the new file, and kept for verifying old entries. Revocation names the last
journal stream sequence a key may have tagged: stream sequences are assigned by the
server, so an entry tagged later with a leaked key is reported as forged while the
history it tagged before stays valid. Entries at or below ``legacy_until`` (written
before the deployment had keys) without a tag are legacy: reported, not refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec

from schemas import ConfigError
from streams._subjects import journal_shard

try:  # CPython's OpenSSL binding (hmac.new wraps it in a Python object)
    from _hashlib import hmac_new as _hmac_new
except ImportError:  # pragma: no cover - another interpreter: the portable path
    _hmac_new = hmac.new  # type: ignore[assignment]

HDR_MAC = "Ms-Mac"
HDR_FX_MAC = "Ms-Fx-Mac"
KEYS_FORMAT = "mainspring-keys/v1"
EFFECT_KEYS_FORMAT = "mainspring-effect-keys/v1"
_SIGN, _VERIFY, _REVOKED = "sign", "verify", "revoked"


def tag(secret: bytes, domain: bytes, subject: str, data: bytes) -> str:
    """HMAC-SHA256 of ``ms1:<domain>:<subject>:`` + ``data``: its first 16 bytes in hex
    (a 128-bit tag; every stored message carries one or two)."""
    h = _keyed(secret, domain).copy()  # the key schedule and prefix done once per key
    h.update(subject.encode() + b":" + data)
    return h.digest()[:16].hex()  # type: ignore[no-any-return]


@lru_cache(maxsize=1024)
def _keyed(secret: bytes, domain: bytes) -> Any:
    """An HMAC state after ``ms1:<domain>:``, to copy. OpenSSL's own HMAC object where
    the interpreter has it: its copy/update/digest cost 1 µs, hmac.HMAC's wrapper 2."""
    return _hmac_new(secret, b"ms1:" + domain + b":", "sha256")


@lru_cache(maxsize=1024)
def derive_effect_key(secret: bytes, kind: str) -> bytes:
    """The effect key of ``kind`` under a deployment key."""
    return hmac.digest(secret, b"ms1:effect-key:" + kind.encode(), "sha256")


def key_id(secret: bytes) -> str:
    """A key's public name: the first 8 hex digits of SHA-256 over ``ms1:key-id:`` + it."""
    return hashlib.sha256(b"ms1:key-id:" + secret).hexdigest()[:8]


def _value(seq: int | Callable[[], int]) -> int:
    return seq() if callable(seq) else seq


Seqs = int | Sequence[int]
"""a journal stream sequence threshold: one for a deployment of one shard, or one per
shard (shard 0's first)"""


def _seqs(value: Seqs) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


def _at(seqs: tuple[int, ...], shard: int) -> int:
    """A shard's threshold (0 for a shard the keys file names none for)."""
    return seqs[shard] if shard < len(seqs) else 0


def _split(header: str | None) -> tuple[str, str] | None:
    if not header or "." not in header:
        return None
    kid, _, mac = header.partition(".")
    return kid, mac


class _KeyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    secret: str
    """base64 of 32 random bytes"""
    use: str = _VERIFY
    """``sign`` (the one that tags new entries), ``verify`` or ``revoked``"""
    kind: str = ""
    """effect keys only: the kind it serves"""
    valid_to_seq: int = 0
    """revoked keys: the last journal stream sequence the key may have tagged"""
    valid_to_shards: list[int] = []
    """...in the journals of shards 1, 2, ... (shard 0's is ``valid_to_seq``)"""


class _KeysFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    keys: list[_KeyEntry]
    legacy_until: int = 0
    """journal stream sequences at or below this may lack a tag (written before keys)"""
    legacy_until_shards: list[int] = []
    """...in the journals of shards 1, 2, ... (shard 0's is ``legacy_until``)"""


@dataclass(frozen=True)
class Key:
    id: str
    secret: bytes = field(repr=False)
    use: str = _VERIFY
    valid_to: tuple[int, ...] = (0,)
    """revoked keys: the last journal stream sequence the key may have tagged, by shard"""
    kind: str = ""

    @property
    def valid_to_seq(self) -> int:
        """shard 0's ``valid_to`` (the only one of a deployment of one shard)"""
        return _at(self.valid_to, 0)

    def entry(self) -> _KeyEntry:
        secret = base64.b64encode(self.secret).decode()
        first, *rest = self.valid_to or (0,)
        return _KeyEntry(self.id, secret, self.use, self.kind, first, rest)


def new_key(use: str = _SIGN) -> Key:
    secret = secrets.token_bytes(32)
    return Key(key_id(secret), secret, use)


def _read(path: str | Path, fmt: str) -> tuple[list[Key], tuple[int, ...]]:
    path = Path(path)
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=_KeysFile)
        keys = [
            Key(
                e.id,
                base64.b64decode(e.secret, validate=True),
                e.use,
                (e.valid_to_seq, *e.valid_to_shards),
                e.kind,
            )
            for e in doc.keys
        ]
    except OSError as e:
        raise ConfigError(f"cannot read the keys file {path}: {e.strerror}") from e
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as e:
        raise ConfigError(f"{path} is not a Mainspring keys file: {e}") from None
    if doc.format != fmt:
        raise ConfigError(
            f"{path} holds {doc.format!r} keys, expected {fmt!r}"
            + (
                " (a handler's effect keys: workers need the deployment keys file)"
                if doc.format == EFFECT_KEYS_FORMAT
                else ""
            )
        )
    for k in keys:
        if k.use not in (_SIGN, _VERIFY, _REVOKED) or len(k.secret) < 16:
            raise ConfigError(f"{path}: key {k.id} has use {k.use!r} or a secret under 16 bytes")
    if sum(k.use == _SIGN for k in keys if not k.kind) > 1:
        raise ConfigError(f"{path}: more than one key has use 'sign'")
    return keys, (doc.legacy_until, *doc.legacy_until_shards)


def _write(path: str | Path, fmt: str, keys: Iterable[Key], legacy: tuple[int, ...]) -> None:
    """Write a keys file readable by its owner only (replacing it atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = legacy or (0,)
    doc = _KeysFile(fmt, [k.entry() for k in keys], first, rest)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgspec.json.format(msgspec.json.encode(doc)) + b"\n")
    os.replace(tmp, path)


class Verdict(msgspec.Struct, frozen=True):
    """How a journal entry's tag checked out."""

    ok: bool
    legacy: bool = False
    """written before the deployment had keys (no tag, at or below ``legacy_until``)"""
    problem: str = ""


_OK = Verdict(True)
_LEGACY = Verdict(True, legacy=True)


class Keyring:
    """A deployment's keys: tags what a worker writes and checks what it reads."""

    def __init__(self, keys: Iterable[Key], *, legacy_until: Seqs = 0) -> None:
        self.keys = {k.id: k for k in keys}
        self.legacy = _seqs(legacy_until)
        """by shard: journal stream sequences at or below may lack a tag"""
        self.legacy_until = _at(self.legacy, 0)
        """shard 0's (the only one of a deployment of one shard)"""
        signing = [k for k in self.keys.values() if k.use == _SIGN]
        if len(signing) != 1:
            raise ConfigError(
                f"a deployment keyring needs exactly one 'sign' key, has {len(signing)}"
            )
        self.signing = signing[0]
        self._prefix = self.signing.id + "."

    @classmethod
    def load(cls, path: str | Path) -> Keyring:
        keys, legacy_until = _read(path, KEYS_FORMAT)
        return cls(keys, legacy_until=legacy_until)

    @classmethod
    def generate(cls, *, legacy_until: Seqs = 0) -> Keyring:
        return cls([new_key()], legacy_until=legacy_until)

    def save(self, path: str | Path) -> None:
        _write(path, KEYS_FORMAT, self.keys.values(), self.legacy)

    # ------------------------------------------------------------------ changes
    def added(self, key: Key) -> Keyring:
        return Keyring([*self.keys.values(), key], legacy_until=self.legacy)

    def signing_with(self, kid: str) -> Keyring:
        """The ring with ``kid`` as its sign key (the old one kept for verifying)."""
        key = self._known(kid)
        if key.use == _REVOKED:
            raise ConfigError(f"key {kid} is revoked; it cannot sign again")
        keys = [
            replace(k, use=_SIGN if k.id == kid else (_VERIFY if k.use == _SIGN else k.use))
            for k in self.keys.values()
        ]
        return Keyring(keys, legacy_until=self.legacy)

    def revoked(self, kid: str, valid_to_seq: Seqs) -> Keyring:
        """The ring with ``kid`` revoked: valid up to ``valid_to_seq`` (by shard)."""
        key = self._known(kid)
        if key.use == _SIGN:
            raise ConfigError(f"key {kid} is the sign key: make another the sign key first")
        keys = [
            replace(k, use=_REVOKED, valid_to=_seqs(valid_to_seq)) if k.id == kid else k
            for k in self.keys.values()
        ]
        return Keyring(keys, legacy_until=self.legacy)

    def _known(self, kid: str) -> Key:
        if kid not in self.keys:
            raise ConfigError(f"no key {kid!r} in this keyring (it has {', '.join(self.keys)})")
        return self.keys[kid]

    # ------------------------------------------------------------------ journal entries
    def tag_entry(self, subject: str, link: bytes) -> str:
        return self._prefix + tag(self.signing.secret, b"j", subject, link)

    def tag_request(self, subject: str, link: bytes, kind: str) -> str:
        key = derive_effect_key(self.signing.secret, kind)
        return self._prefix + tag(key, b"fx", subject, link)

    def check_entry(
        self, subject: str, link: bytes, header: str | None, seq: int | Callable[[], int]
    ) -> Verdict:
        """Is the entry stored at stream sequence ``seq`` tagged by a key of ours?
        (``seq`` may be a function: it is needed only for untagged or revoked-key entries.)"""
        if header:  # the common case first: a live key's good tag (audit's hot path)
            kid, _, mac = header.partition(".")
            key = self.keys.get(kid)
            if (
                key is not None
                and key.use != _REVOKED
                and hmac.compare_digest(mac, tag(key.secret, b"j", subject, link))
            ):
                return _OK
        return self._entry_problem(subject, link, header, seq)

    def _entry_problem(
        self, subject: str, link: bytes, header: str | None, seq: int | Callable[[], int]
    ) -> Verdict:
        parts = _split(header)
        shard = journal_shard(subject)
        if parts is None:
            if header is None and _value(seq) <= _at(self.legacy, shard):
                return _LEGACY
            return Verdict(
                False, problem="it carries no valid Ms-Mac tag (not written by a worker)"
            )
        kid, mac = parts
        key = self.keys.get(kid)
        if key is None:
            return Verdict(False, problem=f"it is tagged with key {kid!r}, unknown here")
        if key.use == _REVOKED and (at := _value(seq)) > (valid := _at(key.valid_to, shard)):
            where = f" of shard {shard}" if shard else ""
            return Verdict(
                False,
                problem=f"it is tagged with key {kid}, revoked after stream sequence "
                f"{valid}{where} (this entry is at {at})",
            )
        if not hmac.compare_digest(mac, tag(key.secret, b"j", subject, link)):
            return Verdict(False, problem="its Ms-Mac tag does not match (altered or forged)")
        return _OK

    # ------------------------------------------------------------------ inbox inputs
    def tag_input(self, subject: str, data: bytes) -> str:
        return self._prefix + tag(self.signing.secret, b"in", subject, data)

    def check_input(self, subject: str, data: bytes, header: str | None) -> str | None:
        """Why a timer firing or child outcome is not from a worker (None: it is)."""
        key, mac = self._live_key(header)
        if key is None:
            return mac
        if not hmac.compare_digest(mac, tag(key.secret, b"in", subject, data)):
            return "its Ms-Mac tag does not match (altered or forged)"
        return None

    def tag_index(self, subject: str, data: bytes) -> str:
        return self._prefix + tag(self.signing.secret, b"idx", subject, data)

    def check_index(self, subject: str, data: bytes, header: str | None) -> str | None:
        """Why a run index entry is not a worker's (None: it is). Any key of the ring
        counts, revoked ones too: the entry says only that a run existed."""
        parts = _split(header)
        key = self.keys.get(parts[0]) if parts else None
        if parts is None or key is None:
            return f"it is not tagged with a key of this deployment ({header!r})"
        if not hmac.compare_digest(parts[1], tag(key.secret, b"idx", subject, data)):
            return "its Ms-Mac tag does not match (altered or forged)"
        return None

    def check_result(self, subject: str, data: bytes, header: str | None, kind: str) -> str | None:
        """Why an effect result is not from a handler of ``kind`` (None: it is)."""
        key, mac = self._live_key(header)
        if key is None:
            return mac
        expected = tag(derive_effect_key(key.secret, kind), b"res", subject, data)
        if not hmac.compare_digest(mac, expected):
            return f"its Ms-Mac tag is not one a {kind!r} handler makes (forged, or another kind's)"
        return None

    def _live_key(self, header: str | None) -> tuple[Key | None, str]:
        """(key, mac) of a tag on a live message; (None, problem) if it has none we
        accept. Revoked keys tag nothing live."""
        parts = _split(header)
        if parts is None:
            return None, "it carries no Ms-Mac tag"
        kid, mac = parts
        key = self.keys.get(kid)
        if key is None or key.use == _REVOKED:
            return None, f"it is tagged with key {kid!r}, {'revoked' if key else 'unknown here'}"
        return key, mac

    # ------------------------------------------------------------------ handlers
    def effect_keys(self, kinds: Iterable[str]) -> EffectKeys:
        """What a handler of ``kinds`` gets: the effect keys derived from every key
        not revoked (so it checks requests tagged before and after a rotation)."""
        keys = [
            Key(k.id, derive_effect_key(k.secret, kind), k.use, kind=kind)
            for kind in sorted(set(kinds))
            for k in self.keys.values()
            if k.use != _REVOKED
        ]
        return EffectKeys(keys, legacy_until=self.legacy)


class EffectKeys:
    """A handler's keys: checks requests of its kinds and tags its results."""

    def __init__(self, keys: Iterable[Key], *, legacy_until: Seqs = 0) -> None:
        self.by_kind: dict[str, dict[str, Key]] = {}
        for k in keys:
            self.by_kind.setdefault(k.kind, {})[k.id] = k
        self.legacy = _seqs(legacy_until)
        """by shard: requests at or below this journal stream sequence may lack a tag"""
        self.legacy_until = _at(self.legacy, 0)

    @classmethod
    def load(cls, path: str | Path) -> EffectKeys:
        keys, legacy_until = _read(path, EFFECT_KEYS_FORMAT)
        return cls(keys, legacy_until=legacy_until)

    def save(self, path: str | Path) -> None:
        keys = (k for ks in self.by_kind.values() for k in ks.values())
        _write(path, EFFECT_KEYS_FORMAT, keys, self.legacy)

    def kinds(self) -> list[str]:
        return sorted(self.by_kind)

    def check_request(
        self, kind: str, subject: str, link: bytes, header: str | None, seq: int
    ) -> str | None:
        """Why the request stored at journal stream sequence ``seq`` is not from a
        worker of this deployment (None: it is, or it is legacy)."""
        keys = self.by_kind.get(kind)
        if keys is None:
            return f"this handler holds no effect key for kind {kind!r}"
        parts = _split(header)
        if parts is None:
            if header is None and seq <= _at(self.legacy, journal_shard(subject)):
                return None
            return f"it carries no {HDR_FX_MAC} tag (not written by a worker)"
        key = keys.get(parts[0])
        if key is None:
            return f"it is tagged with key {parts[0]!r}, unknown here"
        if not hmac.compare_digest(parts[1], tag(key.secret, b"fx", subject, link)):
            return f"its {HDR_FX_MAC} tag does not match (altered or forged)"
        return None

    def tag_result(self, kind: str, subject: str, data: bytes) -> str | None:
        keys: Mapping[str, Key] = self.by_kind.get(kind, {})
        for k in keys.values():
            if k.use == _SIGN:
                return f"{k.id}.{tag(k.secret, b'res', subject, data)}"
        return None
