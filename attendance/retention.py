"""Retention: raw evidence and recordings are kept for a configured time, summaries for ever.

Raw heartbeats and members' media-delivery spans of sessions that ended more than
``raw_events_days`` ago are *pruned*: the row's content is emptied and ``pruned_at`` set, while
the row and its hashes stay, so the audit chain still links from end to end (``studycast audit
verify`` follows pruned rows by their stored hash). The evaluated results (``session_results``),
check-ins, answers, notes, points and the audit trails are never pruned. Recordings older than
``recordings_days`` lose their file; their catalogue row is marked deleted with the reason.
Every run that deletes something records what it deleted in the admin trail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.journal import record_admin_event
from attendance.models import AttendanceEvent, Recording, SessionState, StudySession

log = logging.getLogger(__name__)

# The raw evidence retention removes; everything else in the log is kept.
RAW_KINDS = ("heartbeat", "media")


@dataclass
class RetentionReport:
    pruned_events: dict[int, int] = field(default_factory=dict)  # session id -> rows
    deleted_recordings: list[int] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "pruned_events": {str(k): v for k, v in sorted(self.pruned_events.items())},
            "pruned_total": sum(self.pruned_events.values()),
            "deleted_recordings": self.deleted_recordings,
            "missing_files": self.missing_files,
        }


async def apply_retention(
    db: AsyncSession,
    *,
    now: datetime,
    raw_events_days: int | None,
    recordings_days: int | None,
    recordings_root: Path,
    actor: str,
    dry_run: bool = False,
) -> RetentionReport:
    """Prune what is past its retention (nothing when both are None); see the module doc."""
    report = RetentionReport()
    if raw_events_days is not None:
        cutoff = now - timedelta(days=raw_events_days)
        sessions = list(
            await db.scalars(
                select(StudySession.id).where(
                    StudySession.state == SessionState.ENDED, StudySession.ended_at < cutoff
                )
            )
        )
        for session_id in sessions:
            where = (
                AttendanceEvent.session_id == session_id,
                AttendanceEvent.pruned_at.is_(None),
                # Members' heartbeats and media; venue screens' media spans stay, few as they
                # are, because the venue report's screen uptime is computed from them.
                or_(
                    AttendanceEvent.kind == "heartbeat",
                    (AttendanceEvent.kind == "media") & AttendanceEvent.member_id.is_not(None),
                ),
            )
            count = int(
                await db.scalar(select(func.count()).select_from(AttendanceEvent).where(*where))
                or 0
            )
            if not count:
                continue
            report.pruned_events[session_id] = count
            if dry_run:
                continue
            await db.execute(
                update(AttendanceEvent).where(*where).values(payload={}, pruned_at=now)
            )
            await record_admin_event(
                db,
                now=now,
                actor=actor,
                action="retention_pruned_events",
                target=f"session:{session_id}",
                detail={"kinds": list(RAW_KINDS), "rows": count, "days": raw_events_days},
            )
    if recordings_days is not None:
        cutoff = now - timedelta(days=recordings_days)
        old = list(
            await db.scalars(
                select(Recording).where(
                    Recording.started_at < cutoff, Recording.deleted_at.is_(None)
                )
            )
        )
        for recording in old:
            report.deleted_recordings.append(recording.id)
            if dry_run:
                continue
            path = _inside(recordings_root, recording.path)
            existed = path is not None and path.is_file()
            if path is not None and existed:
                path.unlink()
            else:
                report.missing_files.append(recording.path)
            recording.deleted_at = now
            recording.deleted_reason = f"retention: older than {recordings_days} days"
            await record_admin_event(
                db,
                now=now,
                actor=actor,
                action="retention_deleted_recording",
                target=f"recording:{recording.id}",
                detail={
                    "session_id": recording.session_id,
                    "path": recording.path,
                    "sha256": recording.sha256,
                    "file_existed": existed,
                    "days": recordings_days,
                },
            )
    if report.pruned_events or report.deleted_recordings:
        log.info("retention (%s): %s", "dry run" if dry_run else "applied", report.as_json())
    return report


def _inside(root: Path, relative: str) -> Path | None:
    """The recording's file, only if it lies under ``root`` (a catalogue row never points out)."""
    base = root.resolve()
    path = (base / relative).resolve()
    return path if path.is_relative_to(base) else None
