"""Study notes: members submit them (as events, see ``attendance.ingest``); organisers review
them, accepting (which earns the session's note points) or returning them with a comment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.models import Member, StudyNote, StudySession
from attendance.points import award
from attendance.sessions import AttendanceRule

DECISIONS = ("accept", "return")
MAX_COMMENT = 2000
STATUSES = ("submitted", "accepted", "returned")


def describe_note(
    note: StudyNote, member_no: str | None = None, name: str | None = None
) -> dict[str, Any]:
    return {
        "id": note.id,
        "session_id": note.session_id,
        "member_no": member_no,
        "name": name,
        "text": note.body,
        "status": note.status,
        "submitted_at": note.created_at.isoformat(),
        "reviewed_at": note.reviewed_at.isoformat() if note.reviewed_at else None,
        "comment": note.review_comment,
    }


async def list_notes(
    db: AsyncSession, session_id: int, *, status: str | None = None, member_id: int | None = None
) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status: must be one of {', '.join(STATUSES)}, not {status!r}")
    query = (
        select(StudyNote, Member.member_no, Member.name)
        .join(Member, Member.id == StudyNote.member_id)
        .where(StudyNote.session_id == session_id)
        .order_by(StudyNote.id)
    )
    if status is not None:
        query = query.where(StudyNote.status == status)
    if member_id is not None:
        query = query.where(StudyNote.member_id == member_id)
    return [describe_note(n, no, name) for n, no, name in await db.execute(query)]


async def review_note(
    db: AsyncSession,
    session_id: int,
    note_id: int,
    *,
    decision: str,
    comment: str | None,
    now: datetime,
    actor: str,
    user_id: int,
) -> StudyNote:
    """Accept or return a submitted note. A returned note needs a comment saying why."""
    if decision not in DECISIONS:
        raise InvalidInput(f"decision: must be accept or return, not {decision!r}")
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT:
        raise InvalidInput(f"comment: longer than {MAX_COMMENT} characters")
    if decision == "return" and comment is None:
        raise InvalidInput("comment: say why the note is returned")
    note = await db.get(StudyNote, note_id)
    if note is None or note.session_id != session_id:
        raise NotFound(f"no study note {note_id} in session {session_id}")
    if note.status != "submitted":
        raise Conflict(f"study note {note_id} was {note.status} already", code="already_reviewed")
    note.status = "accepted" if decision == "accept" else "returned"
    note.reviewed_by = user_id
    note.reviewed_at = now
    note.review_comment = comment
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action=f"note_{note.status}",
        target=f"note:{note_id}",
        detail={"session_id": session_id, "comment": comment},
    )
    if note.status == "accepted":
        session = await db.get(StudySession, session_id)
        member = await db.get(Member, note.member_id)
        assert session is not None and member is not None
        rule = AttendanceRule.model_validate(session.attendance_rule or {})
        if rule.note_points:
            await award(
                db,
                ref=f"note:{session_id}:{note.member_id}",
                member_id=note.member_id,
                venue_id=None,
                unit_id=member.unit_id,
                session_id=session_id,
                kind="note",
                points=rule.note_points,
                reason=f"study note for session {session_id} accepted",
                now=now,
            )
    return note
