"""Payloads stored by reference: the wire form of a value kept in the object store.

Every payload field (a run's input and output, an effect's payload and result, a
step result, an event payload, a child's input and output) holds either the value
itself, as JSON, or - when the value is large - a **reference** in its place::

    {"$ms_ref":"sha256:<64 lowercase hex>","size":<bytes>}

The object named ``<64 hex>`` in the deployment's object-store bucket holds the
exact JSON bytes of the value, and its SHA-256 is that name, so the journal's
hash chain covers the value through the digest.

No collision with user data, by one rule applied on both sides: **a payload whose
JSON text begins with an object whose first member is** ``"$ms_ref"`` **is a
reference** (whitespace allowed). Mainspring's SDK stores any user value that
would read that way by reference as well, so such values round-trip unchanged;
writers in other languages must do the same (docs/handlers.md).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas._inbox import ChildDone, EffectResult, StartRun
from schemas._journal import (
    ChildCompleted,
    ChildStarted,
    EffectCompleted,
    EffectRequested,
    EventReceived,
    RunCompleted,
    RunStarted,
    StepCompleted,
    decode_event,
)

REF_KEY = "$ms_ref"
_REF_START = re.compile(rb'\s*\{\s*"\$ms_ref"\s*:')
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class PayloadRef(msgspec.Struct, frozen=True):
    """A value stored in the object store: ``sha256:<hex>`` and its size in bytes."""

    ref: str = msgspec.field(name=REF_KEY)
    size: int

    @property
    def digest(self) -> str:
        """The hex SHA-256 of the value's bytes: also the object's name."""
        return self.ref.removeprefix("sha256:")


_ref_decoder = msgspec.json.Decoder(PayloadRef)
_ref_encoder = msgspec.json.Encoder()

PAYLOAD_FIELDS: dict[type[msgspec.Struct], str] = {
    RunStarted: "input",
    RunCompleted: "output",
    StepCompleted: "result",
    EffectRequested: "payload",
    EffectCompleted: "result",
    EventReceived: "payload",
    ChildStarted: "input",
    ChildCompleted: "output",
    StartRun: "input",
    EffectResult: "result",
    ChildDone: "output",
}
"""The one payload field of each journal event and inbox message that has one."""


def is_ref(value: Any) -> bool:
    """Whether a payload's JSON text (bytes or ``msgspec.Raw``) is a reference."""
    return _REF_START.match(value) is not None


def parse_ref(value: Any) -> PayloadRef:
    """The reference in a payload that ``is_ref``; ``ValueError`` naming what is wrong."""
    try:
        ref = _ref_decoder.decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ValueError(f"not a valid payload reference ({e})") from e
    if _DIGEST.fullmatch(ref.ref) is None or ref.size < 0:
        raise ValueError(
            f"payload reference {ref.ref!r} is not sha256:<64 lowercase hex> with a size"
        )
    return ref


def ref_json(digest: str, size: int) -> bytes:
    """The canonical reference to the value whose SHA-256 hex is ``digest``."""
    return _ref_encoder.encode(PayloadRef(f"sha256:{digest}", size))


def payload_of(message: msgspec.Struct) -> msgspec.Raw | None:
    """The payload field of an event or inbox message (None when it has none)."""
    name = PAYLOAD_FIELDS.get(type(message))
    if name is None:
        return None
    value: msgspec.Raw = getattr(message, name)
    return value


def ref_of(message: msgspec.Struct) -> PayloadRef | None:
    """The reference an event or inbox message carries in place of its payload, if any
    (``ValueError`` if its payload reads as a reference but is not a valid one)."""
    value = payload_of(message)
    if value is None or not is_ref(value):
        return None
    return parse_ref(value)


def stored_refs(data: bytes) -> list[PayloadRef]:
    """The references in a stored journal event's exact bytes (audits read these)."""
    if b'"$ms_ref"' not in data:  # the common case: one substring search
        return []
    try:
        ref = ref_of(decode_event(data))
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        return []
    return [] if ref is None else [ref]
