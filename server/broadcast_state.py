"""Writes the relay's session states (live, paused, ended) to the record store, in order.

The relay knows when a broadcast starts, drops out or ends; it must not wait on the database for
that. Changes queue here and one task writes them: state, first start and end times, and an
entry in the admin trail.

A relay process that dies (a crash, ``kill -9``, the machine) cannot record that its broadcasts
stopped, and live time would run on until the broadcaster came back. So the origin, when it
starts, pauses the sessions the record still calls live (``pause_broadcasts_left_live``) as of
the last sign of the process before: its node row's last report or the end of the recording,
whichever is later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from attendance.clock import Clock, as_utc
from attendance.errors import StudycastError
from attendance.journal import NewAttendanceEvent, append_attendance_events, record_admin_event
from attendance.models import AttendanceEvent, Node, Recording, SessionState, StudySession
from attendance.store import Store
from server.nodes import OFFLINE_AFTER
from server.relay.relay import Relay

log = logging.getLogger(__name__)

_STATES = {
    "live": SessionState.LIVE,
    "paused": SessionState.PAUSED,
    "ended": SessionState.ENDED,
}


def broadcast_event(session_id: int, state: str, at: datetime, **detail: str) -> NewAttendanceEvent:
    """The log entry of a broadcast state change; live time is computed from these."""
    return NewAttendanceEvent(
        session_id=session_id,
        event_uuid=uuid.uuid4(),
        kind="broadcast",
        source="relay",
        client_time=at,
        payload={"state": state, "at": at.isoformat(), **detail},
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


# --- broadcasts a dead relay process left live ---------------------------------------------------

RESTART_REASON = "the relay restarted: paused as of the last sign of its previous run"


def paused_at(
    live_at: datetime | None, signs: Iterable[datetime | None], now: datetime
) -> datetime:
    """When a broadcast that the record still calls live stopped, its relay process having died:
    the latest of ``signs`` (times that process was known to be alive or receiving media), never
    before the broadcast went live (``live_at``) nor after ``now``. ``now`` when there is no
    sign at all: without evidence, as much live time as before this existed, never more."""
    known = [sign for sign in signs if sign is not None]
    at = max(known) if known else now
    if live_at is not None:
        at = max(at, live_at)
    return min(at, now)


def _held_elsewhere(nodes: Iterable[Node]) -> dict[int, Node]:
    """Per session, the other origin that last said it holds the session's broadcaster."""
    held: dict[int, Node] = {}
    for other in nodes:
        if other.role != "origin":
            continue
        sessions = other.status.get("sessions") if isinstance(other.status, dict) else None
        for key, served in (sessions or {}).items():
            if not (isinstance(served, dict) and served.get("source") == "broadcaster"):
                continue
            with contextlib.suppress(ValueError):
                sid = int(key)
                if sid not in held or as_utc(held[sid].seen_at) < as_utc(other.seen_at):
                    held[sid] = other
    return held


@dataclass(frozen=True)
class PausedOnStart:
    session_id: int
    live_at: datetime | None
    paused_at: datetime


async def pause_broadcasts_left_live(store: Store, clock: Clock, node: str) -> list[PausedOnStart]:
    """Pause every session the record calls live, as of the last sign of ``node`` (the origin
    process that held their broadcasters) or of their recording. Run by the origin as it starts,
    before any broadcaster can connect: no broadcast is live in a process that just started."""
    now = clock()
    done: list[PausedOnStart] = []
    async with store.write() as db:
        left = (
            await db.scalars(
                select(StudySession)
                .where(StudySession.state == SessionState.LIVE)
                .order_by(StudySession.id)
            )
        ).all()
        if not left:
            return done
        row = await db.get(Node, node)
        seen = as_utc(row.seen_at) if row is not None else None
        elsewhere = _held_elsewhere((await db.scalars(select(Node).where(Node.name != node))).all())
        for session in left:
            holder = elsewhere.get(session.id)
            last_seen = seen
            if holder is not None:
                if now - as_utc(holder.seen_at) <= OFFLINE_AFTER:
                    log.warning(
                        "session %s is live on another origin (%s): left as it is; two "
                        "origins on one record store is a mistake",
                        session.id,
                        holder.name,
                    )
                    continue
                last_seen = as_utc(holder.seen_at)  # that origin's last sign, not ours
            last = await db.scalar(
                select(AttendanceEvent.payload)
                .where(
                    AttendanceEvent.session_id == session.id,
                    AttendanceEvent.kind == "broadcast",
                )
                .order_by(AttendanceEvent.id.desc())
                .limit(1)
            )
            live_at = None
            if isinstance(last, dict) and last.get("state") == "live":
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    live_at = as_utc(datetime.fromisoformat(str(last["at"])))
            recorded = await db.scalar(
                select(func.max(Recording.ended_at)).where(Recording.session_id == session.id)
            )
            at = paused_at(live_at, [last_seen, as_utc(recorded) if recorded else None], now)
            session.state = SessionState.PAUSED
            await record_admin_event(
                db,
                now=now,
                actor="relay",
                action="broadcast_paused",
                target=f"session:{session.id}",
                detail={"at": at.isoformat(), "reason": RESTART_REASON},
            )
            await append_attendance_events(
                db, [broadcast_event(session.id, "paused", at, reason=RESTART_REASON)], now=now
            )
            done.append(PausedOnStart(session.id, live_at, at))
    for item in done:
        log.warning(
            "session %s was still live in the record from a run that ended without saying so: "
            "paused as of %s",
            item.session_id,
            item.paused_at.isoformat(timespec="seconds"),
        )
    return done
