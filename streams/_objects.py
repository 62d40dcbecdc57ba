"""Large payloads in the JetStream Object Store, content-addressed (DESIGN.md §10).

A payload over ``PayloadLimits.threshold`` is stored as an object and replaced, in
the journal event or inbox message that carries it, by a reference
(``schemas._payloads``). Over ``PayloadLimits.cap`` it is refused with
``PayloadTooLarge`` (a terminal ``payload_too_large``).

Bucket ``<prefix>_objects`` (stream ``OBJ_<prefix>_objects``) is created with the
topology and is as replicated as the journal. The layout is NATS's object store, so
any NATS client's object-store API (or ``nats object get``) reads and writes it:
chunks on ``$O.<bucket>.C.<nuid>``, one rolled-up meta message per object on
``$O.<bucket>.M.<base64url(name)>``. The object's name is the hex SHA-256 of its
bytes: storing the same value twice stores it once, and a reader checks the bytes
against the name, so a replaced object is never taken for the original.

Values at or under the threshold cost one length check and one anchored regex
match on their first bytes (is it a reference?): no round trip, no re-encoding.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import (
    PAYLOAD_FIELDS,
    ConfigError,
    PayloadRef,
    PayloadTooLarge,
    PayloadUnavailable,
    is_ref,
    parse_ref,
    ref_json,
)
from streams._jsapi import purge_subject
from streams._publish import publish_checked, retrying
from streams._records import read_all
from streams._subjects import Subjects

CHUNK_SIZE = 128 * 1024
"""bytes per chunk message (NATS's object-store default)"""
_READ_BATCH = 64  # chunks per batched direct get: 8 MiB per answer
_NS = 1_000_000_000
M = TypeVar("M", bound=msgspec.Struct)


@dataclass(frozen=True)
class PayloadLimits:
    """Where payloads stop travelling inline, and where they stop altogether.

    ``threshold``: values larger than this (bytes of JSON) go to the object store
    and travel as a reference. Well under the server's max payload (1 MiB by
    default), since the event around a value adds its own bytes.
    ``cap``: values larger than this are refused: ``payload_too_large``.
    """

    threshold: int = 256 * 1024
    cap: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= self.cap:
            raise ConfigError(
                f"payload limits need 0 < threshold <= cap, got threshold={self.threshold} "
                f"cap={self.cap}"
            )


class _ObjectMeta(msgspec.Struct, omit_defaults=True):
    """NATS object-store meta (the fields Mainspring writes and reads)."""

    name: str
    bucket: str = ""
    nuid: str = ""
    size: int = 0
    chunks: int = 0
    digest: str = ""
    """``SHA-256=<base64url of the digest>``, as every NATS client writes it"""
    mtime: str = ""
    deleted: bool = False
    options: dict[str, Any] | None = None


_meta_decoder = msgspec.json.Decoder(_ObjectMeta)
_meta_encoder = msgspec.json.Encoder()


def object_stream_config(subjects: Subjects, replicas: int | None, storage: str) -> dict[str, Any]:
    """The object-store bucket's stream, as NATS clients create it."""
    return {
        "name": subjects.object_stream,
        "description": "Mainspring payloads too large to travel inline (content-addressed)",
        "subjects": subjects.object_all(),
        "retention": "limits",
        "storage": storage,
        "num_replicas": replicas,
        "discard": "new",
        "allow_rollup_hdrs": True,
        "allow_direct": True,
        "duplicate_window": 120 * _NS,
    }


def _nats_digest(raw_digest: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(raw_digest).decode()


class Objects:
    """Store and fetch payload objects of one deployment (a subject prefix)."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        limits: PayloadLimits | None = None,
        *,
        timeout: float = 5.0,
    ) -> None:
        self._nc = nc
        self._s = subjects
        self.limits = limits or PayloadLimits()
        self._timeout = timeout

    @property
    def bucket(self) -> str:
        return self._s.object_bucket

    def check_size(self, size: int, what: str) -> None:
        """``PayloadTooLarge`` (naming ``what``, the size and the cap) over the cap."""
        if size > self.limits.cap:
            raise PayloadTooLarge(what, size, self.limits.cap)

    # ------------------------------------------------------------------ objects
    async def put(self, data: bytes) -> PayloadRef:
        """Store ``data`` under its SHA-256 (once: an intact copy is left as it is)."""
        raw_digest = hashlib.sha256(data).digest()
        digest = raw_digest.hex()
        ref = PayloadRef(f"sha256:{digest}", len(data))
        nats_digest = _nats_digest(raw_digest)
        meta = await self.stat(digest)
        if meta is not None and meta.size == len(data) and meta.digest == nats_digest:
            return ref
        nuid = uuid.uuid4().hex
        chunks = self._s.object_chunks(nuid)
        count = 0
        for count, start in enumerate(range(0, len(data), CHUNK_SIZE), start=1):
            # the msg id makes a retried chunk (its ack lost) land once
            await publish_checked(
                self._nc,
                chunks,
                data[start : start + CHUNK_SIZE],
                {"Nats-Msg-Id": f"{nuid}.{count}"},
            )
        meta = _ObjectMeta(
            name=digest,
            bucket=self.bucket,
            nuid=nuid,
            size=len(data),
            chunks=count,
            digest=nats_digest,
            mtime=datetime.now(UTC).isoformat(),
            options={"max_chunk_size": CHUNK_SIZE},
        )
        await publish_checked(
            self._nc,
            self._s.object_meta(digest),
            _meta_encoder.encode(meta),
            {"Nats-Rollup": "sub"},
        )
        return ref

    async def stat(self, digest: str) -> _ObjectMeta | None:
        """The object's meta, or None when there is no (undeleted) object of that name."""
        msg = await self._direct({"last_by_subj": self._s.object_meta(digest)})
        if msg is None:
            return None
        try:
            meta = _meta_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return None if meta.deleted else meta

    async def delete(self, digest: str) -> bool:
        """Remove an object, as NATS clients do: its chunks purged, its meta replaced by
        a deleted marker (False: there was none)."""
        meta = await self.stat(digest)
        if meta is None:
            return False
        await purge_subject(self._nc, self._s.object_stream, self._s.object_chunks(meta.nuid))
        gone = msgspec.structs.replace(meta, deleted=True, size=0, chunks=0, nuid="")
        await publish_checked(
            self._nc,
            self._s.object_meta(digest),
            _meta_encoder.encode(gone),
            {"Nats-Rollup": "sub"},
        )
        return True

    async def read(self, digest: str) -> bytes | None:
        """The object's bytes as stored, unchecked (None when missing): for exports."""
        meta = await self.stat(digest)
        if meta is None:
            return None
        return await self._chunks(meta)

    async def verify(self, ref: PayloadRef) -> tuple[str, str] | None:
        """For audits: None when the object is there byte for byte, else (kind, detail)."""
        return object_problem(ref, await self.read(ref.digest), f"bucket {self.bucket}")

    async def get(self, ref: PayloadRef, what: str = "a payload") -> bytes:
        """The referenced value, checked against its digest and size.

        ``PayloadUnavailable`` when the object is missing or does not match;
        ``PayloadTooLarge`` (before reading anything) when it is over the cap.
        """
        self.check_size(ref.size, what)
        meta = await self.stat(ref.digest)
        if meta is None:
            raise PayloadUnavailable(ref.ref, f"missing from bucket {self.bucket}")
        self.check_size(meta.size, what)
        data = await self._chunks(meta)
        actual = hashlib.sha256(data).hexdigest()
        if actual != ref.digest:
            raise PayloadUnavailable(
                ref.ref,
                f"its bytes hash to sha256:{actual}: the object was replaced or altered",
            )
        if len(data) != ref.size:
            raise PayloadUnavailable(
                ref.ref, f"the reference says {ref.size} bytes, the object has {len(data)}"
            )
        return data

    async def _chunks(self, meta: _ObjectMeta) -> bytes:
        if meta.size == 0 or not meta.nuid:
            return b""
        chunks = await read_all(
            self._nc,
            self._s.object_stream,
            self._s.object_chunks(meta.nuid),
            size=_READ_BATCH,
            timeout=self._timeout,
        )
        return b"".join(r.data for r in chunks)

    async def _direct(self, req: dict[str, object]) -> Msg | None:
        subject = f"$JS.API.DIRECT.GET.{self._s.object_stream}"

        async def once() -> Msg:
            return await self._nc.request(subject, msgspec.json.encode(req), timeout=self._timeout)

        msg = await retrying(once, f"reading {self._s.object_stream}")
        if msg.headers and msg.headers.get("Status"):
            return None
        return msg

    # ------------------------------------------------------------------ payloads
    async def outgoing(self, data: bytes, what: str) -> msgspec.Raw:
        """A user value as it goes on the wire: inline, or stored and referenced when
        it is large or would itself read as a reference. ``PayloadTooLarge`` over the cap."""
        self.check_size(len(data), what)
        if len(data) <= self.limits.threshold and not is_ref(data):
            return msgspec.Raw(data)
        ref = await self.put(data)
        return msgspec.Raw(ref_json(ref.digest, ref.size))

    async def resolve(self, value: msgspec.Raw | bytes, what: str = "a payload") -> msgspec.Raw:
        """The value a payload stands for (fetched and checked when it is a reference).

        ``PayloadUnavailable`` for a bad reference or a missing/altered object;
        ``PayloadTooLarge`` for an object over the cap.
        """
        if not is_ref(value):
            return value if isinstance(value, msgspec.Raw) else msgspec.Raw(value)
        try:
            ref = parse_ref(value)
        except ValueError as e:
            raise PayloadUnavailable(bytes(value)[:120].decode(errors="replace"), str(e)) from e
        return msgspec.Raw(await self.get(ref, what))

    async def store_fields(self, message: M) -> M:
        """The event or inbox message as it goes on the wire: its payload (a value, never
        a reference: inputs are resolved before they become facts) stored by reference
        when ``outgoing`` says so."""
        name = PAYLOAD_FIELDS.get(type(message))
        if name is None:
            return message
        value: msgspec.Raw = getattr(message, name)
        if len(value) <= self.limits.threshold and not is_ref(value):
            return message
        stored = await self.outgoing(bytes(value), _what(message, name))
        return msgspec.structs.replace(message, **{name: stored})

    async def resolve_fields(self, message: M) -> M:
        """The event or inbox message with a referenced payload replaced by its value."""
        name = PAYLOAD_FIELDS.get(type(message))
        if name is None:
            return message
        value: msgspec.Raw = getattr(message, name)
        if not is_ref(value):
            return message
        resolved = await self.resolve(value, _what(message, name))
        return msgspec.structs.replace(message, **{name: resolved})


def object_problem(ref: PayloadRef, data: bytes | None, where: str) -> tuple[str, str] | None:
    """What is wrong with ``data`` as the object ``ref`` names: ``object-missing`` or
    ``object-altered`` with a detail naming the digest, or None when it matches."""
    if data is None:
        return "object-missing", f"object {ref.ref} ({ref.size} bytes) is missing from {where}"
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref.digest or len(data) != ref.size:
        return (
            "object-altered",
            f"object {ref.ref} was replaced or altered: {where} holds {len(data)} bytes "
            f"that hash to sha256:{actual}",
        )
    return None


def _what(message: msgspec.Struct, field: str) -> str:
    """``the result of effect.completed for run r-1``: names a value in errors."""
    tag = type(message).__struct_config__.tag
    run_id = getattr(message, "run_id", "?")
    return f"the {field} of {tag} for run {run_id}"
