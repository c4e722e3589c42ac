"""Writes the relay's session states (live, paused, ended) to the record store, in order.

The relay knows when a broadcast starts, drops out or ends; it must not wait on the database for
that. Changes queue here and one task writes them: state, first start and end times, and an
entry in the admin trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime

from sqlalchemy import select

from attendance.clock import Clock
from attendance.errors import StudycastError
from attendance.journal import NewAttendanceEvent, append_attendance_events, record_admin_event
from attendance.models import SessionState, StudySession
from attendance.store import Store
from server.relay.relay import Relay

log = logging.getLogger(__name__)

_STATES = {
    "live": SessionState.LIVE,
    "paused": SessionState.PAUSED,
    "ended": SessionState.ENDED,
}


def broadcast_event(session_id: int, state: str, at: datetime) -> NewAttendanceEvent:
    """The log entry of a broadcast state change; live time is computed from these."""
    return NewAttendanceEvent(
        session_id=session_id,
        event_uuid=uuid.uuid4(),
        kind="broadcast",
        source="relay",
        client_time=at,
        payload={"state": state, "at": at.isoformat()},
    )


class BroadcastStateRecorder:
    """Queue of state changes with one writer task. ``close()`` drains and stops it."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._queue: asyncio.Queue[tuple[int, str, datetime] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def __call__(self, session_id: int, state: str) -> None:
        if state in _STATES:
            self.idle.clear()
            # The time of the change, not of the write: live time is measured from it.
            self._queue.put_nowait((session_id, state, self._clock()))

    async def _run(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            try:
                await self._write(*item)
            except StudycastError as exc:
                log.error("could not record session %s as %s: %s", item[0], item[1], exc.detail)
            except Exception:
                log.exception("could not record session %s as %s", item[0], item[1])
            if self._queue.empty():
                self.idle.set()

    async def _write(self, session_id: int, state: str, now: datetime) -> None:
        async with self._store.write() as db:
            session = await db.get(StudySession, session_id)
            if session is None or session.state == SessionState.ENDED:
                return
            session.state = _STATES[state]
            if state == "live" and session.started_at is None:
                session.started_at = now
            if state == "ended":
                session.ended_at = now
            await record_admin_event(
                db,
                now=now,
                actor="relay",
                action=f"broadcast_{state}",
                target=f"session:{session_id}",
            )
            await append_attendance_events(
                db, [broadcast_event(session_id, state, now)], now=self._clock()
            )

    async def close(self) -> None:
        if self._task is None:
            return
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None


async def follow_ended_sessions(store: Store, relay: Relay, interval: float = 5.0) -> None:
    """End the relay's hubs of sessions ended elsewhere (``studycast session end``, another
    node); runs until cancelled."""
    while True:
        await asyncio.sleep(interval)
        ids = [sid for sid, hub in relay.sessions.items() if hub.state != "ended"]
        if not ids:
            continue
        try:
            async with store.read() as db:
                ended = (
                    await db.scalars(
                        select(StudySession.id).where(
                            StudySession.id.in_(ids), StudySession.state == SessionState.ENDED
                        )
                    )
                ).all()
        except StudycastError as exc:
            log.warning("could not check for ended sessions: %s", exc.detail)
            continue
        for session_id in ended:
            log.info("session %s was ended elsewhere: closing its peers", session_id)
            await relay.end_session(session_id)
