"""A cap on runs not yet ended, held by the server (a tenant's quota).

``mainspring setup --max-active-runs N`` makes stream ``<PREFIX>_ACTIVE``: one message
per run not yet ended (subject ``<prefix>.active.<run>``), at most N, new ones refused
when full (``discard: new``). A worker admits a run by publishing its message before
the run begins and removes it when the run ends; the server counts for every worker at
once. Without the stream there is no cap and no cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS

from streams._jsapi import purge_subject, stream_info, stream_subjects
from streams._publish import publish, refused
from streams._subjects import Subjects
from streams._topology import create_or_update


def active_stream_config(subjects: Subjects, cap: int) -> dict[str, Any]:
    return {
        "name": subjects.active_stream,
        "description": "Mainspring runs not yet ended (one message each): the cap on them",
        "subjects": [subjects.active_all()],
        "retention": "limits",
        "storage": "file",
        "discard": "new",
        "max_msgs": cap,
        "max_msgs_per_subject": 1,
        "duplicate_window": 120 * 1_000_000_000,
    }


async def set_active_cap(nc: NATS, subjects: Subjects, cap: int) -> None:
    """Create the cap's stream, or change its cap."""
    await create_or_update(nc, active_stream_config(subjects, cap))


class ActiveRuns:
    """The cap as one worker sees it: admit a run before it begins, release it after."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._s = subjects
        self.cap: int | None = None
        """runs not yet ended the deployment may have (None: no cap)"""

    async def open(self) -> None:
        info = await stream_info(self._nc, self._s.active_stream)
        self.cap = None if info is None else int(info["config"]["max_msgs"])

    async def admit(self, run_id: str) -> bool:
        """Count ``run_id`` as not yet ended; False if the cap is reached."""
        ack = await publish(
            self._nc, self._s.active(run_id), b"", {"Nats-Msg-Id": f"active:{run_id}"}
        )
        if ack.error is None:
            return True
        if "maximum messages exceeded" in ack.error.description.lower():
            return False
        raise refused(f"counting run {run_id} against the cap", ack.error)

    async def release(self, run_id: str) -> None:
        """``run_id`` has ended: it no longer counts."""
        await purge_subject(self._nc, self._s.active_stream, self._s.active(run_id))

    async def sweep(self, ended: Callable[[str], Awaitable[bool]]) -> int:
        """Release every counted run that has in fact ended (its end was journaled but
        a crash came before the release); returns how many."""
        counted = await stream_subjects(self._nc, self._s.active_stream, self._s.active_all())
        released = 0
        for subject in counted:
            run_id = subject.rsplit(".", 1)[-1]
            if await ended(run_id):
                await self.release(run_id)
                released += 1
        return released
