"""Attendance of a session's members, computed from the stored evidence.

Reads the session's log (broadcast states, media delivered, heartbeats, check-ins), its presence
checks and answers, and runs the pure ``attendance.intervals.attend`` per member. While the
session runs this gives live figures; at its end ``finalize_session`` applies the attendance
rule, stores one ``SessionResult`` per member and awards attendance points.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance import intervals
from attendance.clock import as_utc
from attendance.errors import Conflict
from attendance.intervals import MemberAttendance, PresenceWindow, Span
from attendance.models import (
    AttendanceEvent,
    Member,
    OrgUnit,
    PointsEntry,
    PresenceCheck,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    SessionExpectedMember,
    SessionExpectedUnit,
    SessionResult,
    StudySession,
    Venue,
)
from attendance.points import award
from attendance.presence import CONFIRMING, PASSED
from attendance.rules import Verdict, evaluate
from attendance.sessions import AttendanceRule, get_session


@dataclass
class MemberRow:
    """One member's line of a session's attendance."""

    member_id: int
    member_no: str
    name: str
    unit_id: int
    unit_path: str
    expected: bool
    attendance: MemberAttendance
    quiz_points: int
    verdict: Verdict
    venue_slug: str | None = None

    def as_json(self) -> dict[str, Any]:
        a = self.attendance
        return {
            "member_no": self.member_no,
            "name": self.name,
            "unit": self.unit_path,
            "expected": self.expected,
            "mode": "absent" if a.first_join is None else ("onsite" if a.venue_id else "remote"),
            "venue": self.venue_slug,
            "first_join": a.first_join.isoformat() if a.first_join else None,
            "last_leave": a.last_leave.isoformat() if a.last_leave else None,
            "watched_s": round(a.watched_s, 1),
            "live_s": round(a.live_s, 1),
            "share": round(a.share, 4),
            "onsite_s": round(a.onsite_s, 1),
            "remote_s": round(a.remote_s, 1),
            "presence_passed": a.presence_passed,
            "presence_total": a.presence_total,
            "quiz_points": self.quiz_points,
            "qualified": self.verdict.qualified,
            "reason": self.verdict.reason,
        }


@dataclass
class _Evidence:
    delivered: list[Span] = field(default_factory=list)
    beats: list[tuple[datetime, bool]] = field(default_factory=list)
    checkins: list[tuple[datetime, int | None]] = field(default_factory=list)
    passed: set[int] = field(default_factory=set)
    confirmations: list[datetime] = field(default_factory=list)


def _time(raw: Any) -> datetime:
    return as_utc(datetime.fromisoformat(str(raw)))


async def session_attendance(
    db: AsyncSession,
    session_id: int,
    *,
    now: datetime,
    cover: timedelta = intervals.DEFAULT_COVER,
    member_ids: Iterable[int] | None = None,
) -> list[MemberRow]:
    """Every expected or present member of a session (or only ``member_ids``), with their
    attendance up to the session's end or ``now``."""
    session = await get_session(db, session_id)
    rule = AttendanceRule.model_validate(session.attendance_rule or {})
    until = as_utc(session.ended_at) if session.ended_at else now
    wanted = set(member_ids) if member_ids is not None else None

    changes: list[tuple[datetime, str]] = []
    screens: dict[int, list[Span]] = defaultdict(list)
    evidence: dict[int, _Evidence] = defaultdict(_Evidence)
    p = AttendanceEvent.payload
    base: tuple[ColumnElement[bool], ...] = (
        AttendanceEvent.session_id == session_id,
        # Retention emptied these; the session's stored results keep what they showed.
        AttendanceEvent.pruned_at.is_(None),
    )
    if wanted is not None:
        base = (
            *base,
            or_(AttendanceEvent.member_id.in_(wanted), AttendanceEvent.member_id.is_(None)),
        )
    # The many rows (heartbeats, media): only the fields needed, extracted by the database
    # (decoding 200,000 payloads in Python doubles the time of a live report).
    bulk = select(
        AttendanceEvent.kind,
        AttendanceEvent.member_id,
        AttendanceEvent.venue_id,
        p["happened_at"].as_string(),
        p["visible"].as_boolean(),
        p["status"].as_string(),
        p["from"].as_string(),
        p["to"].as_string(),
        p["at"].as_string(),
        p["state"].as_string(),
    ).where(*base, AttendanceEvent.kind.in_(("broadcast", "media", "heartbeat")))
    for (
        kind,
        member_id,
        venue_id,
        happened,
        visible,
        status,
        start,
        end,
        at,
        state,
    ) in await db.execute(bulk):
        if kind == "broadcast":
            changes.append((_time(at), str(state)))
        elif kind == "media":
            span = Span(_time(start), _time(end))
            if member_id is not None:
                evidence[member_id].delivered.append(span)
            elif venue_id is not None:
                screens[venue_id].append(span)
        elif member_id is not None and status == "accepted":
            evidence[member_id].beats.append((_time(happened), visible is not False))
    corrections: dict[int, dict[str, Any]] = {}
    rest = select(
        AttendanceEvent.kind,
        AttendanceEvent.member_id,
        AttendanceEvent.venue_id,
        AttendanceEvent.server_time,
        AttendanceEvent.payload,
    ).where(*base, AttendanceEvent.kind.in_(("check_in", "check_out", "correction")))
    for kind, member_id, venue_id, server_time, payload in await db.execute(
        rest.order_by(AttendanceEvent.id)
    ):
        if member_id is None:
            continue
        if kind == "correction":
            corrections[member_id] = payload  # the latest correction counts
        elif payload.get("status") != "accepted":
            continue
        elif kind == "check_in":
            evidence[member_id].checkins.append((as_utc(server_time), venue_id))
        else:
            evidence[member_id].checkins.append((as_utc(server_time), None))
    live = intervals.live_spans(changes, until)

    checks = [
        PresenceWindow(c.id, as_utc(c.opened_at), as_utc(c.closes_at))
        for c in await db.scalars(
            select(PresenceCheck).where(
                PresenceCheck.session_id == session_id,
                PresenceCheck.opened_at <= until,
                PresenceCheck.announced_at.is_not(None),
            )
        )
    ]
    responses = await db.execute(
        select(PresenceResponse.member_id, PresenceResponse.check_id, PresenceResponse.outcome)
        .add_columns(PresenceResponse.answered_at)
        .join(PresenceCheck, PresenceCheck.id == PresenceResponse.check_id)
        .where(PresenceCheck.session_id == session_id)
    )
    for member_id, check_id, outcome, answered_at in responses:
        if outcome == PASSED:
            evidence[member_id].passed.add(check_id)
        if outcome in CONFIRMING:
            evidence[member_id].confirmations.append(as_utc(answered_at))

    quiz_points: dict[int, int] = defaultdict(int)
    for member_id, points in await db.execute(
        select(QuizAnswer.member_id, QuizAnswer.points_awarded)
        .join(QuizQuestion, QuizQuestion.id == QuizAnswer.question_id)
        .where(QuizQuestion.session_id == session_id, QuizAnswer.member_id.is_not(None))
    ):
        if member_id is not None:
            quiz_points[member_id] += points

    expected = await expected_member_ids(db, session)
    ids = (expected | set(evidence)) if wanted is None else wanted
    members = await _members(db, ids)
    slugs = {i: slug for i, slug in await db.execute(select(Venue.id, Venue.slug))}
    rows: list[MemberRow] = []
    empty = _Evidence()
    for member_id in sorted(ids, key=lambda i: members[i][0] if i in members else ""):
        if member_id not in members:
            continue
        number, name, unit_id, unit_path = members[member_id]
        found = evidence.get(member_id, empty)
        attendance = intervals.attend(
            intervals.MemberEvidence(
                delivered=found.delivered,
                beats=found.beats,
                checkins=found.checkins,
                passed_checks=frozenset(found.passed),
                confirmations=found.confirmations,
            ),
            live=live,
            screens=screens,
            checks=checks,
            cover=cover,
            until=until,
        )
        verdict = evaluate(
            rule,
            share=attendance.share,
            presence_passed=attendance.presence_passed,
            presence_total=attendance.presence_total,
        )
        if member_id in corrections:
            verdict = corrected(verdict, corrections[member_id])
        rows.append(
            MemberRow(
                member_id=member_id,
                member_no=number,
                name=name,
                unit_id=unit_id,
                unit_path=unit_path,
                expected=member_id in expected,
                attendance=attendance,
                quiz_points=quiz_points.get(member_id, 0),
                verdict=verdict,
                venue_slug=slugs.get(attendance.venue_id) if attendance.venue_id else None,
            )
        )
    return rows


def corrected(verdict: Verdict, correction: dict[str, Any]) -> Verdict:
    """A verdict as an organiser's correction event sets it, saying who, why and what it was."""
    return Verdict(
        bool(correction["qualified"]),
        f"corrected by {correction.get('by', '?')}: {correction['reason']} "
        f"(evaluated: {verdict.reason})",
    )


async def expected_member_ids(db: AsyncSession, session: StudySession) -> set[int]:
    """Active members of the expected units' subtrees, plus those expected by name."""
    ids = set(
        await db.scalars(
            select(SessionExpectedMember.member_id).where(
                SessionExpectedMember.session_id == session.id
            )
        )
    )
    paths = list(
        await db.scalars(
            select(OrgUnit.path)
            .join(SessionExpectedUnit, SessionExpectedUnit.unit_id == OrgUnit.id)
            .where(SessionExpectedUnit.session_id == session.id)
        )
    )
    if paths:
        conditions = [OrgUnit.path == p for p in paths] + [
            OrgUnit.path.startswith(p + "/", autoescape=True) for p in paths
        ]
        ids.update(
            await db.scalars(
                select(Member.id)
                .join(OrgUnit, OrgUnit.id == Member.unit_id)
                .where(Member.active.is_(True), or_(*conditions))
            )
        )
    return ids


async def _members(db: AsyncSession, ids: set[int]) -> dict[int, tuple[str, str, int, str]]:
    found: dict[int, tuple[str, str, int, str]] = {}
    id_list = sorted(ids)
    for start in range(0, len(id_list), 5000):
        chunk = id_list[start : start + 5000]
        rows = await db.execute(
            select(Member.id, Member.member_no, Member.name, Member.unit_id, OrgUnit.path)
            .join(OrgUnit, OrgUnit.id == Member.unit_id)
            .where(Member.id.in_(chunk))
        )
        for member_id, number, name, unit_id, path in rows:
            found[member_id] = (number, name, unit_id, path)
    return found


async def finalize_session(db: AsyncSession, session_id: int, *, now: datetime) -> list[MemberRow]:
    """Evaluate every member of an ended session: store the results (replacing an earlier
    evaluation) and award attendance points once per qualified member."""
    pruned = await db.scalar(
        select(AttendanceEvent.id)
        .where(AttendanceEvent.session_id == session_id, AttendanceEvent.pruned_at.is_not(None))
        .limit(1)
    )
    if pruned is not None:
        raise Conflict(
            f"session {session_id}'s raw evidence was removed by retention: its results are final"
            " (corrections still apply)",
            code="evidence_pruned",
        )
    rows = await session_attendance(db, session_id, now=now)
    session = await get_session(db, session_id)
    rule = AttendanceRule.model_validate(session.attendance_rule or {})
    await db.execute(delete(SessionResult).where(SessionResult.session_id == session_id))
    for row in rows:
        a = row.attendance
        db.add(
            SessionResult(
                session_id=session_id,
                member_id=row.member_id,
                expected=row.expected,
                first_join=a.first_join,
                last_leave=a.last_leave,
                watched_s=a.watched_s,
                live_s=a.live_s,
                share=a.share,
                venue_id=a.venue_id,
                presence_passed=a.presence_passed,
                presence_total=a.presence_total,
                quiz_points=row.quiz_points,
                qualified=row.verdict.qualified,
                reason=row.verdict.reason,
                evaluated_at=now,
            )
        )
    await settle_attendance_points(
        db,
        session_id,
        [(r.member_id, r.unit_id, r.attendance.venue_id, r.verdict) for r in rows],
        points=rule.attendance_points,
        now=now,
    )
    await db.flush()
    return rows


async def evaluated_too_early(
    db: AsyncSession, *, late: timedelta, ended_from: datetime, ended_until: datetime
) -> list[int]:
    """Sessions that ended between ``ended_from`` and ``ended_until`` whose stored results were
    evaluated less than ``late`` after the end: before the evidence written after the end (each
    node's next evidence round) could be in them."""
    rows = await db.execute(
        select(StudySession.id, StudySession.ended_at, func.min(SessionResult.evaluated_at))
        .join(SessionResult, SessionResult.session_id == StudySession.id)
        .where(
            StudySession.ended_at.is_not(None),
            StudySession.ended_at >= ended_from,
            StudySession.ended_at <= ended_until,
        )
        .group_by(StudySession.id, StudySession.ended_at)
        .order_by(StudySession.id)
    )
    return [
        session_id
        for session_id, ended_at, first_evaluated in rows
        if ended_at is not None and as_utc(first_evaluated) < as_utc(ended_at) + late
    ]


async def settle_attendance_points(
    db: AsyncSession,
    session_id: int,
    verdicts: Iterable[tuple[int, int, int | None, Verdict]],
    *,
    points: int,
    now: datetime,
) -> None:
    """Bring each member's attendance points for the session to what their verdict earns:
    the first award, then (after a correction) adjustments up or down, never edits."""
    held: dict[int, tuple[int, int]] = defaultdict(lambda: (0, 0))  # member -> (points, entries)
    for member_id, amount in await db.execute(
        select(PointsEntry.member_id, PointsEntry.points).where(
            PointsEntry.session_id == session_id, PointsEntry.kind == "attendance"
        )
    ):
        if member_id is not None:
            total, entries = held[member_id]
            held[member_id] = (total + amount, entries + 1)
    for member_id, unit_id, venue_id, verdict in verdicts:
        wanted = points if verdict.qualified else 0
        total, entries = held[member_id]
        if wanted == total:
            continue
        ref = f"attendance:{session_id}:{member_id}"
        if entries:
            ref = f"{ref}:adjust:{entries}"
        await award(
            db,
            ref=ref,
            member_id=member_id,
            venue_id=venue_id,
            unit_id=unit_id,
            session_id=session_id,
            kind="attendance",
            points=wanted - total,
            reason=(
                f"attended session {session_id}: {verdict.reason}"
                if not entries
                else f"attendance of session {session_id} re-evaluated: {verdict.reason}"
            ),
            now=now,
        )
