"""Corrections: an organiser overrides a member's attendance verdict with a reason.

A correction is a new event in the hash-chained log (kind ``correction``), never an edit of
what was recorded; evaluations apply the latest correction per member. For an evaluated session
the stored result (a summary derived from the log) is brought in line and the attendance points
adjusted by a new ledger entry.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import InvalidInput, NotFound
from attendance.evaluation import corrected, settle_attendance_points
from attendance.journal import NewAttendanceEvent, append_attendance_events, record_admin_event
from attendance.models import Member, SessionResult, StudySession
from attendance.rules import Verdict
from attendance.sessions import AttendanceRule

MAX_REASON = 1000


async def correct_attendance(
    db: AsyncSession,
    session_id: int,
    *,
    member_no: str,
    qualified: bool,
    reason: str,
    now: datetime,
    actor: str,
    event_id: uuid.UUID,
) -> dict[str, Any]:
    """Record the correction and apply it; returns the member's corrected verdict."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("reason: say why the attendance is corrected")
    if len(reason) > MAX_REASON:
        raise InvalidInput(f"reason: longer than {MAX_REASON} characters")
    session = await db.get(StudySession, session_id)
    if session is None:
        raise NotFound(f"no study session {session_id}")
    member = await db.scalar(select(Member).where(Member.member_no == member_no))
    if member is None:
        raise NotFound(f"no member {member_no[:40]!r}")
    payload = {
        "member_no": member_no,
        "qualified": qualified,
        "reason": reason,
        "by": actor,
        "status": "accepted",
    }
    await append_attendance_events(
        db,
        [
            NewAttendanceEvent(
                session_id=session_id,
                event_uuid=event_id,
                kind="correction",
                source=actor,
                client_time=now,
                member_id=member.id,
                payload=payload,
            )
        ],
        now=now,
    )
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="attendance_corrected",
        target=f"session:{session_id}",
        detail={"member_no": member_no, "qualified": qualified, "reason": reason},
    )
    result = await db.get(SessionResult, (session_id, member.id))
    verdict: Verdict | None = None
    if result is not None:
        # The stored summary follows the log: its evaluation, with the correction applied.
        _, marker, inner = result.reason.rpartition("(evaluated: ")
        evaluated = inner.removesuffix(")") if marker else result.reason
        verdict = corrected(Verdict(result.qualified, evaluated), payload)
        result.qualified, result.reason = verdict.qualified, verdict.reason
        rule = AttendanceRule.model_validate(session.attendance_rule or {})
        await settle_attendance_points(
            db,
            session_id,
            [(member.id, member.unit_id, result.venue_id, verdict)],
            points=rule.attendance_points,
            now=now,
        )
    return {
        "session_id": session_id,
        "member_no": member_no,
        "qualified": qualified,
        "reason": verdict.reason if verdict else reason,
        "evaluated": result is not None,
    }
