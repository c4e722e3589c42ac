"""The catalogue of recorded segments in the record store: one ``Recording`` row per segment,
opened when its file starts and completed when it closes; the playlist of a session; and the
recovery, at startup, of segments a crash left open.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.models import Recording, StudySession
from attendance.store import Store
from recordings.events import RecordingEvent, SegmentClosed, SegmentOpened
from recordings.remux import inspect_file

log = logging.getLogger(__name__)


async def session_recording(db: AsyncSession, session_id: int) -> tuple[bool, int]:
    """Whether the session is to be recorded, and the index its next segment takes."""
    enabled = await db.scalar(
        select(StudySession.recording_enabled).where(StudySession.id == session_id)
    )
    last = await db.scalar(
        select(func.max(Recording.segment_index)).where(Recording.session_id == session_id)
    )
    return bool(enabled), 0 if last is None else int(last) + 1


async def apply_event(db: AsyncSession, event: RecordingEvent) -> None:
    """Write what the recorder reported: a new row, or the row completed."""
    if isinstance(event, SegmentOpened):
        db.add(
            Recording(
                session_id=event.session_id,
                segment_index=event.segment_index,
                path=event.path,
                container=event.container,
                video_codec=event.video_codec,
                audio_codec=event.audio_codec,
                started_at=event.started_at,
            )
        )
        return
    row = await _row(db, event.session_id, event.segment_index)
    if row is None:
        log.error(
            "session %s: segment %s closed without a catalogue row",
            event.session_id,
            event.segment_index,
        )
        return
    row.ended_at = event.ended_at
    row.duration_s = event.duration_s
    row.size_bytes = event.size_bytes
    row.sha256 = event.sha256
    row.audio_codec = event.audio_codec


async def _row(db: AsyncSession, session_id: int, index: int) -> Recording | None:
    return await db.scalar(
        select(Recording).where(
            Recording.session_id == session_id, Recording.segment_index == index
        )
    )


@dataclass(frozen=True, slots=True)
class PlaylistEntry:
    """One segment on the session's timeline: ``offset_s`` from the first segment's start."""

    segment_index: int
    path: str
    container: str
    offset_s: float
    duration_s: float | None
    started_at: datetime
    ended_at: datetime | None


async def playlist(db: AsyncSession, session_id: int) -> list[PlaylistEntry]:
    """The session's segments in order, each placed by its wall-clock start (the gaps between
    broadcaster connections stay gaps). Deleted segments are left out."""
    rows = list(
        await db.scalars(
            select(Recording)
            .where(Recording.session_id == session_id, Recording.deleted_at.is_(None))
            .order_by(Recording.segment_index)
        )
    )
    if not rows:
        return []
    origin = rows[0].started_at
    return [
        PlaylistEntry(
            segment_index=r.segment_index,
            path=r.path,
            container=r.container,
            offset_s=round((r.started_at - origin).total_seconds(), 3),
            duration_s=r.duration_s,
            started_at=r.started_at,
            ended_at=r.ended_at,
        )
        for r in rows
    ]


def closed_event(
    row: Recording, *, duration_s: float, size_bytes: int, sha256: str
) -> SegmentClosed:
    return SegmentClosed(
        session_id=row.session_id,
        segment_index=row.segment_index,
        ended_at=row.started_at + timedelta(seconds=duration_s),
        duration_s=duration_s,
        size_bytes=size_bytes,
        sha256=sha256,
        video_frames=0,
        audio_frames=0,
        audio_codec=row.audio_codec,
        dropped=0,
    )


async def recover(store: Store, data_dir: Path, *, now: datetime) -> list[Recording]:
    """Complete the rows of segments a crash or kill left open, from what their files hold
    (duration to the last readable packet, size, SHA-256). Run at startup, before any recorder:
    a segment still being written would be taken for a crashed one. A missing file is marked
    deleted with the reason. Returns the rows it completed."""
    async with store.read() as db:
        open_rows = list(
            await db.scalars(
                select(Recording).where(
                    Recording.ended_at.is_(None), Recording.deleted_at.is_(None)
                )
            )
        )
    done: list[Recording] = []
    for row in open_rows:
        path = data_dir / row.path
        facts = inspect_file(path) if path.is_file() else None
        async with store.write() as db:
            fresh = await _row(db, row.session_id, row.segment_index)
            if fresh is None or fresh.ended_at is not None:
                continue
            if facts is None:
                fresh.ended_at = fresh.started_at
                fresh.deleted_at = now
                fresh.deleted_reason = "recovery: the segment's file is missing"
                log.warning("session %s: segment file %s missing", row.session_id, row.path)
            else:
                await apply_event(
                    db,
                    closed_event(
                        fresh,
                        duration_s=facts.duration_s,
                        size_bytes=facts.size_bytes,
                        sha256=facts.sha256,
                    ),
                )
                if facts.audio_frames == 0:
                    fresh.audio_codec = None
                log.info(
                    "session %s: recovered segment %s (%.1f s, %d bytes)",
                    row.session_id,
                    row.segment_index,
                    facts.duration_s,
                    facts.size_bytes,
                )
            done.append(fresh)
    return done
