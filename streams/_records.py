"""Reading stored stream messages in order, many per request (batched direct get)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import anyio
import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas import ConnectionFailed
from streams._publish import Unavailable, retrying


@dataclass(frozen=True, slots=True)
class Record:
    """A stored stream message, undecoded: what audits and the projector read."""

    seq: int
    subject: str
    headers: dict[str, str]
    data: bytes

    @property
    def run_id(self) -> str:
        tokens = self.subject.split(".")
        return tokens[2] if len(tokens) > 3 else "?"


async def read_records(
    nc: NATS, stream: str, filt: str, start: int, *, size: int = 1000, timeout: float = 5.0
) -> tuple[list[Record], int]:
    """Up to ``size`` messages matching ``filt`` from stream sequence ``start`` on, in
    order, and how many more match after them (one batched direct-get request)."""

    async def once() -> tuple[list[Record], int]:
        return await _read_once(nc, stream, filt, start, size, timeout)

    return await retrying(once, f"reading {stream} ({filt})")


async def read_all(
    nc: NATS, stream: str, filt: str, start: int = 1, *, size: int = 1000, timeout: float = 5.0
) -> list[Record]:
    """Every message matching ``filt`` from stream sequence ``start`` on, in order (pages
    of ``size`` batched direct gets)."""
    found: list[Record] = []
    while True:
        records, pending = await read_records(nc, stream, filt, start, size=size, timeout=timeout)
        found += records
        if not pending or not records:
            return found
        start = records[-1].seq + 1


async def _read_once(
    nc: NATS, stream: str, filt: str, start: int, size: int, timeout: float
) -> tuple[list[Record], int]:
    api = f"$JS.API.DIRECT.GET.{stream}"
    out: list[Record] = []
    done = anyio.Event()
    outcome: list[int | str] = []

    async def collect(msg: Msg) -> None:  # a callback: no task per message
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            out.append(
                Record(
                    int(headers.get("Nats-Sequence", "0")),
                    headers.get("Nats-Subject", ""),
                    headers,
                    msg.data,
                )
            )
            return
        if status == "404":
            outcome.append(0)
        elif status == "204":  # end of batch
            outcome.append(int(headers.get("Nats-Num-Pending", "0")))
        elif status == "503":
            outcome.append("unavailable")
        else:
            outcome.append(f"status {status}")
        done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect, pending_msgs_limit=size + 16)
    try:
        req = {"seq": start, "next_by_subj": filt, "batch": size}
        await nc.publish(api, msgspec.json.encode(req), reply=inbox)
        with anyio.move_on_after(timeout):
            await done.wait()
    finally:
        with contextlib.suppress(nats.errors.ConnectionClosedError):
            await sub.unsubscribe()
    if not outcome or outcome[0] == "unavailable":
        raise Unavailable(f"stream {stream} did not answer (does it exist yet? start a worker)")
    if isinstance(outcome[0], str):
        raise ConnectionFailed(f"reading {stream} ({filt}): {outcome[0]}")
    return out, outcome[0]
