"""The dead-letter stream: messages a consumer could not apply, kept with the reason.

Poison-message policy (DESIGN.md §10, docs/guarantees.md): every message a
Mainspring consumer receives is applied, recorded as ignored/rejected with a
reason, or — when it cannot be applied at all, or failed a bounded number of
deliveries — copied here with the reason and its original subject, stream
position and headers, and then acknowledged. Nothing is redelivered forever;
nothing vanishes without a trace.

Layout for prefix ``ms``: stream ``MS_DEADLETTERS``, subjects
``ms.dlq.<source>.<run>`` (``source``: ``inbox``, ``late``, ``junk``, ``fx``,
``projector``; ``run`` is ``_`` when unknown). Bounded: at most
``DLQ_PER_SUBJECT`` (1000) letters per source and run (the oldest go first, so a
flood of junk for one run cannot push out other runs' letters), ``DLQ_MAX_MSGS``
(100 000) overall, each kept 30 days (``streams._topology`` defines the stream).

Headers of a dead letter: ``Ms-Dlq-Reason``, ``Ms-Dlq-Source``, ``Ms-Dlq-Subject``,
``Ms-Dlq-Stream``, ``Ms-Dlq-Seq``, ``Ms-Dlq-Deliveries``, ``Ms-Dlq-At``,
``Ms-Dlq-Run``, and every original header as ``Ms-Orig-<name>``. The body is
the original body, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import ConfigError
from streams._consumer import num_delivered, stream_of, stream_seq
from streams._jsapi import ApiError, api_request
from streams._publish import PubAck, publish_checked
from streams._records import read_records
from streams._subjects import Subjects

_ORIG = "Ms-Orig-"
_MAX_REASON = 1000
_NO_MESSAGE = 10037


def _header_value(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _MAX_REASON else flat[: _MAX_REASON - 1] + "…"


async def dead_letter(
    nc: NATS,
    subjects: Subjects,
    *,
    source: str,
    reason: str,
    subject: str,
    data: bytes,
    headers: dict[str, str] | None,
    stream: str = "",
    seq: int = 0,
    deliveries: int = 0,
    run_id: str = "",
) -> PubAck:
    """Keep a message that cannot be applied, with the reason (idempotent per stream
    position: dead-lettering the same message twice stores it once)."""
    out = {
        "Ms-Dlq-Reason": _header_value(reason),
        "Ms-Dlq-Source": source,
        "Ms-Dlq-Subject": subject,
        "Ms-Dlq-Stream": stream,
        "Ms-Dlq-Seq": str(seq),
        "Ms-Dlq-Deliveries": str(deliveries),
        "Ms-Dlq-At": datetime.now(UTC).isoformat(),
        "Ms-Dlq-Run": run_id,
    }
    for name, value in (headers or {}).items():
        out[_ORIG + name] = value
    if seq:
        out["Nats-Msg-Id"] = f"dlq:{stream}:{seq}"
    token = run_id if run_id and "." not in run_id else "_"
    return await publish_checked(nc, subjects.dead_letter(source, token), data, out)


async def dead_letter_msg(
    nc: NATS,
    subjects: Subjects,
    msg: Msg,
    *,
    stream: str = "",
    source: str,
    reason: str,
    run_id: str,
) -> PubAck:
    """``dead_letter`` for a message a consumer delivered (stream, position and count
    from it; ``stream`` where the message does not say)."""
    return await dead_letter(
        nc,
        subjects,
        source=source,
        reason=reason,
        subject=msg.subject,
        data=msg.data,
        headers=msg.headers,
        stream=stream_of(msg) or stream,
        seq=stream_seq(msg),
        deliveries=num_delivered(msg),
        run_id=run_id,
    )


@dataclass(frozen=True)
class DeadLetter:
    """One kept message: where it came from, why it is here, and the original."""

    seq: int
    source: str
    reason: str
    subject: str
    stream: str
    stream_seq: int
    deliveries: int
    at: str
    run_id: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready (the body as text when it is UTF-8, else its size)."""
        try:
            body: object = self.data.decode()
        except UnicodeDecodeError:
            body = f"<{len(self.data)} bytes, not UTF-8>"
        return {
            "seq": self.seq,
            "source": self.source,
            "reason": self.reason,
            "run_id": self.run_id,
            "subject": self.subject,
            "stream": self.stream,
            "stream_seq": self.stream_seq,
            "deliveries": self.deliveries,
            "at": self.at,
            "headers": self.headers,
            "body": body,
        }


def _letter(seq: int, headers: dict[str, str], data: bytes) -> DeadLetter:
    return DeadLetter(
        seq=seq,
        source=headers.get("Ms-Dlq-Source", ""),
        reason=headers.get("Ms-Dlq-Reason", ""),
        subject=headers.get("Ms-Dlq-Subject", ""),
        stream=headers.get("Ms-Dlq-Stream", ""),
        stream_seq=int(headers.get("Ms-Dlq-Seq", "0") or 0),
        deliveries=int(headers.get("Ms-Dlq-Deliveries", "0") or 0),
        at=headers.get("Ms-Dlq-At", ""),
        run_id=headers.get("Ms-Dlq-Run", ""),
        data=data,
        headers={k[len(_ORIG) :]: v for k, v in headers.items() if k.startswith(_ORIG)},
    )


async def dead_letters(
    nc: NATS, subjects: Subjects, *, source: str = "*", run_id: str = "*", limit: int = 1000
) -> list[DeadLetter]:
    """Kept messages, oldest first (at most ``limit``)."""
    filt = subjects.dead_letter(source, run_id)
    out: list[DeadLetter] = []
    start = 1
    while len(out) < limit:
        records, pending = await read_records(
            nc, subjects.dead_letter_stream, filt, start, size=min(1000, limit - len(out))
        )
        out.extend(_letter(r.seq, r.headers, r.data) for r in records)
        if not pending or not records:
            return out
        start = records[-1].seq + 1
    return out


async def dead_letter_at(nc: NATS, subjects: Subjects, seq: int) -> DeadLetter:
    """The dead letter at stream sequence ``seq``; ``ConfigError`` if there is none."""
    records, _ = await read_records(
        nc, subjects.dead_letter_stream, subjects.dead_letter_all(), seq, size=1
    )
    if not records or records[0].seq != seq:
        raise ConfigError(
            f"no dead letter {seq} in {subjects.dead_letter_stream} "
            "(list them with `mainspring dead-letters`)"
        )
    return _letter(records[0].seq, records[0].headers, records[0].data)


async def reinject(nc: NATS, subjects: Subjects, seq: int) -> DeadLetter:
    """Publish dead letter ``seq`` to its original subject again (after a fix), then
    remove it. The original ``Nats-Msg-Id`` travels as ``Ms-Event-Id`` (a run still
    recognises a duplicate event by it) so the stream's de-duplication window does
    not swallow the re-injected copy."""
    letter = await dead_letter_at(nc, subjects, seq)
    if not subjects.is_inbox(letter.subject):
        raise ConfigError(
            f"dead letter {seq} ({letter.source}) came from {letter.stream or 'nowhere'} "
            f"subject {letter.subject!r}, not from a run inbox: it is kept as evidence and "
            "cannot be re-injected (journal events are never rewritten)"
        )
    headers = {k: v for k, v in letter.headers.items() if not k.startswith("Nats-")}
    original_id = letter.headers.get("Nats-Msg-Id")
    if original_id:
        headers.setdefault("Ms-Event-Id", original_id)
    headers["Nats-Msg-Id"] = f"reinject:{subjects.dead_letter_stream}:{seq}"
    await publish_checked(nc, letter.subject, letter.data, headers)
    try:
        await api_request(
            nc, f"$JS.API.STREAM.MSG.DELETE.{subjects.dead_letter_stream}", {"seq": seq}
        )
    except ApiError as e:
        if e.err_code != _NO_MESSAGE:  # deleted meanwhile by a concurrent re-injection
            raise
    return letter
