"""Attendance reports: one session's members, roll-ups by unit and venue, a member's history.

An ended, evaluated session is reported from its stored ``SessionResult`` rows (fast, and they
survive retention pruning of the raw events); a running one is computed live with
``attendance.evaluation.session_attendance``. Make-up viewing of the recording after the end
(``attendance.makeup``) is reported beside live attendance, never mixed into it: ``mode``,
``watched_s`` and ``qualified`` stay live-only. The roll-ups are pure functions of report rows and
spans; only the ``async`` functions here read the store.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance import intervals
from attendance.clock import as_utc
from attendance.errors import InvalidInput, NotFound
from attendance.evaluation import session_attendance
from attendance.intervals import Span
from attendance.makeup import KIND as MAKEUP_KIND
from attendance.makeup import NO_MAKEUP, MakeupFigures, session_makeup
from attendance.models import (
    AttendanceEvent,
    Member,
    OrgUnit,
    PointsEntry,
    SessionResult,
    SessionState,
    StudyNote,
    StudySession,
    Venue,
)
from attendance.sessions import get_session
from attendance.units import SEPARATOR, join_path, parse_unit_path
from attendance.venues import SLUG

MODES = ("onsite", "remote", "absent")
NOTE_STATUSES = ("none", "submitted", "accepted", "returned")
_YES = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


# --- filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportFilter:
    """Which rows of a session report to keep; None keeps everything."""

    unit: str | None = None  # unit path prefix: the unit and everything below it
    venue: str | None = None  # venue slug (members counted on-site there)
    mode: str | None = None  # onsite | remote | absent
    qualified: bool | None = None

    def as_json(self) -> dict[str, Any]:
        """The filter as given (only the parts set), for answers, export headers and the log."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def keeps(self, row: ReportRow) -> bool:
        return (
            (self.unit is None or in_unit(row.unit, self.unit))
            and (self.venue is None or row.venue == self.venue)
            and (self.mode is None or row.mode == self.mode)
            and (self.qualified is None or row.qualified is self.qualified)
        )


def in_unit(path: str, prefix: str) -> bool:
    """Whether ``path`` is the unit ``prefix`` or lies below it (whole segments only)."""
    return path == prefix or path.startswith(prefix + SEPARATOR)


def parse_filter(
    *,
    unit: str | None = None,
    venue: str | None = None,
    mode: str | None = None,
    qualified: str | None = None,
) -> ReportFilter:
    """A filter from outside text (query string, CLI options); errors name the parameter."""
    unit_path: str | None = None
    if unit is not None and unit != "":
        try:
            unit_path = join_path(parse_unit_path(unit))
        except InvalidInput as exc:
            raise InvalidInput(f"unit: {exc.detail}") from exc
    if venue is not None and venue != "" and not SLUG.match(venue):
        raise InvalidInput(f"venue: {venue[:70]!r} is not a venue slug")
    if mode is not None and mode != "" and mode not in MODES:
        raise InvalidInput(f"mode: must be one of {', '.join(MODES)}, not {mode[:40]!r}")
    wanted: bool | None = None
    if qualified is not None and qualified != "":
        if qualified.lower() not in _YES:
            raise InvalidInput(f"qualified: must be yes or no, not {qualified[:40]!r}")
        wanted = _YES[qualified.lower()]
    return ReportFilter(unit=unit_path, venue=venue or None, mode=mode or None, qualified=wanted)


# --- the member report ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportRow:
    """One expected or present member's line of a session report."""

    member_no: str
    name: str
    unit: str
    expected: bool
    mode: str  # onsite | remote | absent
    venue: str | None
    first_join: datetime | None
    last_leave: datetime | None
    watched_s: float
    share: float
    presence_passed: int
    presence_total: int
    quiz_points: int
    notes: str  # none | submitted | accepted | returned (the member's newest note)
    qualified: bool
    reason: str
    # Make-up viewing of the recording after the session (not live attendance).
    makeup_s: float = 0.0
    makeup_share: float = 0.0
    makeup_qualified: bool = False
    makeup_reason: str = ""
    makeup_presence_passed: int = 0
    makeup_presence_total: int = 0

    @property
    def watched_min(self) -> float:
        return round(self.watched_s / 60, 1)

    @property
    def makeup_minutes(self) -> float:
        return round(self.makeup_s / 60, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "member_no": self.member_no,
            "name": self.name,
            "unit": self.unit,
            "expected": self.expected,
            "mode": self.mode,
            "venue": self.venue,
            "first_join": self.first_join.isoformat() if self.first_join else None,
            "last_leave": self.last_leave.isoformat() if self.last_leave else None,
            "watched_s": round(self.watched_s, 1),
            "watched_min": self.watched_min,
            "share": round(self.share, 4),
            "presence_passed": self.presence_passed,
            "presence_total": self.presence_total,
            "quiz_points": self.quiz_points,
            "notes": self.notes,
            "qualified": self.qualified,
            "reason": self.reason,
            "makeup_minutes": self.makeup_minutes,
            "makeup_share": round(self.makeup_share, 4),
            "makeup_qualified": self.makeup_qualified,
            "makeup_reason": self.makeup_reason,
            "makeup_presence_passed": self.makeup_presence_passed,
            "makeup_presence_total": self.makeup_presence_total,
        }


def _makeup_fields(figures: MakeupFigures) -> dict[str, Any]:
    return {
        "makeup_s": figures.attendance.seconds,
        "makeup_share": figures.share,
        "makeup_qualified": figures.qualified,
        "makeup_reason": figures.verdict.reason if figures.attendance.seconds > 0 else "",
        "makeup_presence_passed": len(figures.attendance.checks_passed),
        "makeup_presence_total": figures.attendance.checks_total,
    }


@dataclass(frozen=True)
class SessionReport:
    """A session's member report. ``final``: from the stored evaluation at the session's end;
    otherwise live figures up to ``generated_at``."""

    session_id: int
    title: str
    state: str
    final: bool
    live_s: float
    generated_at: datetime
    filter: ReportFilter
    rows: list[ReportRow]

    def header(self) -> dict[str, Any]:
        return {
            "session": {"id": self.session_id, "title": self.title, "state": self.state},
            "final": self.final,
            "live_s": round(self.live_s, 1),
            "generated_at": self.generated_at.isoformat(),
            "filter": self.filter.as_json(),
        }

    def as_json(self) -> dict[str, Any]:
        return {**self.header(), "rows": [r.as_json() for r in self.rows]}


def _mode(first_join: datetime | None, venue_id: int | None) -> str:
    if first_join is None:
        return "absent"
    return "onsite" if venue_id is not None else "remote"


async def _note_statuses(
    db: AsyncSession, session_id: int, member_ids: Iterable[int] | None = None
) -> dict[int, str]:
    """Each member's newest note status in the session (a returned note may be resubmitted)."""
    query = (
        select(StudyNote.member_id, StudyNote.status)
        .where(StudyNote.session_id == session_id)
        .order_by(StudyNote.id)
    )
    if member_ids is not None:
        query = query.where(StudyNote.member_id.in_(list(member_ids)))
    return {member_id: status for member_id, status in await db.execute(query)}


async def _stored_rows(db: AsyncSession, session_id: int) -> tuple[list[ReportRow], float] | None:
    """The stored evaluation as report rows with the live seconds, or None if there is none."""
    result = await db.execute(
        select(
            SessionResult.member_id,
            Member.member_no,
            Member.name,
            OrgUnit.path,
            SessionResult.expected,
            Venue.slug,
            SessionResult.venue_id,
            SessionResult.first_join,
            SessionResult.last_leave,
            SessionResult.watched_s,
            SessionResult.live_s,
            SessionResult.share,
            SessionResult.presence_passed,
            SessionResult.presence_total,
            SessionResult.quiz_points,
            SessionResult.qualified,
            SessionResult.reason,
        )
        .join(Member, Member.id == SessionResult.member_id)
        .join(OrgUnit, OrgUnit.id == Member.unit_id)
        .outerjoin(Venue, Venue.id == SessionResult.venue_id)
        .where(SessionResult.session_id == session_id)
    )
    # Sorted here, not in SQL: the database's collation would order member numbers differently.
    records = sorted(result.all(), key=lambda r: r.member_no)
    if not records:
        return None
    notes = await _note_statuses(db, session_id)
    makeup = await session_makeup(db, session_id)
    rows: list[ReportRow] = []
    live_s = 0.0
    for r in records:
        first_join = as_utc(r.first_join) if r.first_join else None
        live_s = max(live_s, r.live_s)
        rows.append(
            ReportRow(
                member_no=r.member_no,
                name=r.name,
                unit=r.path,
                expected=r.expected,
                mode=_mode(first_join, r.venue_id),
                venue=r.slug,
                first_join=first_join,
                last_leave=as_utc(r.last_leave) if r.last_leave else None,
                watched_s=r.watched_s,
                share=r.share,
                presence_passed=r.presence_passed,
                presence_total=r.presence_total,
                quiz_points=r.quiz_points,
                notes=notes.get(r.member_id, "none"),
                qualified=r.qualified,
                reason=r.reason,
                **_makeup_fields(makeup.get(r.member_id, NO_MAKEUP)),
            )
        )
    return rows, live_s


async def _live_rows(
    db: AsyncSession, session_id: int, *, now: datetime, member_ids: Iterable[int] | None = None
) -> tuple[list[ReportRow], float]:
    computed = await session_attendance(db, session_id, now=now, member_ids=member_ids)
    notes = await _note_statuses(db, session_id, member_ids)
    makeup = await session_makeup(db, session_id, member_ids=member_ids)
    rows: list[ReportRow] = []
    live_s = 0.0
    for m in computed:
        a = m.attendance
        live_s = max(live_s, a.live_s)
        rows.append(
            ReportRow(
                member_no=m.member_no,
                name=m.name,
                unit=m.unit_path,
                expected=m.expected,
                mode=_mode(a.first_join, a.venue_id),
                venue=m.venue_slug,
                first_join=a.first_join,
                last_leave=a.last_leave,
                watched_s=a.watched_s,
                share=a.share,
                presence_passed=a.presence_passed,
                presence_total=a.presence_total,
                quiz_points=m.quiz_points,
                notes=notes.get(m.member_id, "none"),
                qualified=m.verdict.qualified,
                reason=m.verdict.reason,
                **_makeup_fields(makeup.get(m.member_id, NO_MAKEUP)),
            )
        )
    return rows, live_s


async def session_report(
    db: AsyncSession,
    session_id: int,
    *,
    now: datetime,
    filters: ReportFilter | None = None,
) -> SessionReport:
    """Every expected or present member of a session (absent ones as ``absent``), filtered,
    in member-number order."""
    session = await get_session(db, session_id)
    filters = filters or ReportFilter()
    stored = await _stored_rows(db, session_id) if session.state == SessionState.ENDED else None
    rows, live_s = stored if stored is not None else await _live_rows(db, session_id, now=now)
    return SessionReport(
        session_id=session.id,
        title=session.title,
        state=session.state.value,
        final=stored is not None,
        live_s=live_s,
        generated_at=now,
        filter=filters,
        rows=[r for r in rows if filters.keeps(r)],
    )


# --- roll-up by unit (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class UnitFigures:
    """One unit of the tree with everything below it. ``qualified`` counts every qualified
    member, guests (present, not expected) included; ``rate`` is qualified / expected."""

    unit: str
    depth: int
    expected: int
    present: int
    guests: int
    qualified: int
    rate: float | None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": None if self.rate is None else round(self.rate, 4)}


def unit_rollup(rows: Iterable[ReportRow], *, under: str | None = None) -> list[UnitFigures]:
    """Figures for every unit at every level of the tree that has a row, sorted by path;
    ``under`` keeps only that unit and the ones below it."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in rows:
        segments = row.unit.split(SEPARATOR)
        present = row.mode != "absent"
        for depth in range(1, len(segments) + 1):
            c = counts[SEPARATOR.join(segments[:depth])]
            c[0] += row.expected
            c[1] += present
            c[2] += present and not row.expected
            c[3] += row.qualified
    return [
        UnitFigures(
            unit=path,
            depth=path.count(SEPARATOR) + 1,
            expected=expected,
            present=present,
            guests=guests,
            qualified=qualified,
            rate=qualified / expected if expected else None,
        )
        for path, (expected, present, guests, qualified) in sorted(counts.items())
        if under is None or in_unit(path, under)
    ]


# --- roll-up by venue -------------------------------------------------------------------------


@dataclass(frozen=True)
class VenueFigures:
    """A venue in one session: screen uptime (connected while live), check-ins (distinct
    members) and the members counted on-site there."""

    venue: str
    name: str
    uptime_s: float
    live_s: float
    uptime_share: float | None
    checkins: int
    onsite: int

    def as_json(self) -> dict[str, Any]:
        share = None if self.uptime_share is None else round(self.uptime_share, 4)
        return {
            **asdict(self),
            "uptime_s": round(self.uptime_s, 1),
            "live_s": round(self.live_s, 1),
            "uptime_share": share,
        }


@dataclass
class VenueEvidence:
    """What the log says about one venue: its screen's media spans, who checked in there."""

    slug: str
    name: str
    screen: list[Span] = field(default_factory=list)
    checked_in: set[int] = field(default_factory=set)


def venue_figures(
    venues: Sequence[VenueEvidence], *, live: Sequence[Span], onsite: Mapping[str, int]
) -> list[VenueFigures]:
    """Pure: each venue's uptime is its merged screen spans intersected with live time."""
    live_s = intervals.total_seconds(live)
    return [
        VenueFigures(
            venue=v.slug,
            name=v.name,
            uptime_s=(uptime := intervals.total_seconds(intervals.intersect(v.screen, live))),
            live_s=live_s,
            uptime_share=min(1.0, uptime / live_s) if live_s > 0 else None,
            checkins=len(v.checked_in),
            onsite=onsite.get(v.slug, 0),
        )
        for v in sorted(venues, key=lambda v: v.slug)
    ]


async def venue_rollup(
    db: AsyncSession, session_id: int, *, now: datetime, rows: Sequence[ReportRow]
) -> list[VenueFigures]:
    """Per venue of the session (and any other venue its log mentions): screen uptime and its
    share of live time, distinct check-ins, and on-site members counted there (from ``rows``,
    the session's unfiltered report)."""
    session = await get_session(db, session_id)
    until = as_utc(session.ended_at) if session.ended_at else now
    venues = {v.id: VenueEvidence(v.slug, v.name) for v in session.venues}
    changes: list[tuple[datetime, str]] = []
    query = select(
        AttendanceEvent.kind,
        AttendanceEvent.member_id,
        AttendanceEvent.venue_id,
        AttendanceEvent.payload,
    ).where(
        AttendanceEvent.session_id == session_id,
        AttendanceEvent.kind.in_(("broadcast", "media", "check_in")),
        (AttendanceEvent.kind == "broadcast") | (AttendanceEvent.venue_id.is_not(None)),
    )
    screens: dict[int, list[Span]] = defaultdict(list)
    checked_in: dict[int, set[int]] = defaultdict(set)
    for kind, member_id, venue_id, payload in await db.execute(query):
        if not payload:  # pruned by retention: its content is gone
            continue
        if kind == "broadcast":
            changes.append((_time(payload["at"]), str(payload["state"])))
        elif kind == "media" and member_id is None:
            screens[venue_id].append(Span(_time(payload["from"]), _time(payload["to"])))
        elif kind == "check_in" and member_id is not None and payload.get("status") == "accepted":
            checked_in[venue_id].add(member_id)
    unknown = (set(screens) | set(checked_in)) - set(venues)
    if unknown:
        for vid, slug, name in await db.execute(
            select(Venue.id, Venue.slug, Venue.name).where(Venue.id.in_(unknown))
        ):
            venues[vid] = VenueEvidence(slug, name)
    for vid, evidence in venues.items():
        evidence.screen = screens.get(vid, [])
        evidence.checked_in = checked_in.get(vid, set())
    onsite: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.mode == "onsite" and row.venue is not None:
            onsite[row.venue] += 1
    live = intervals.live_spans(changes, until)
    return venue_figures(list(venues.values()), live=live, onsite=onsite)


def _time(raw: Any) -> datetime:
    return as_utc(datetime.fromisoformat(str(raw)))


# --- a member's history -----------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    """One session of a member's history: the stored result, or live figures (``final`` False)."""

    session_id: int
    title: str
    state: str
    scheduled_start: datetime
    final: bool
    row: ReportRow
    points: int

    def as_json(self) -> dict[str, Any]:
        row = self.row.as_json()
        for key in ("member_no", "name", "unit"):
            row.pop(key)
        return {
            "session_id": self.session_id,
            "title": self.title,
            "state": self.state,
            "scheduled_start": self.scheduled_start.isoformat(),
            "final": self.final,
            **row,
            "points": self.points,
        }


@dataclass(frozen=True)
class MemberHistory:
    member_no: str
    name: str
    unit: str
    total_points: int
    generated_at: datetime
    sessions: list[HistoryEntry]

    def as_json(self) -> dict[str, Any]:
        return {
            "member_no": self.member_no,
            "name": self.name,
            "unit": self.unit,
            "total_points": self.total_points,
            "generated_at": self.generated_at.isoformat(),
            "sessions": [s.as_json() for s in self.sessions],
        }


async def member_history(db: AsyncSession, member_no: str, *, now: datetime) -> MemberHistory:
    """A member's sessions, newest first: ended ones from their stored result, running ones
    (live or paused, expected or present) live; with the points earned per session and in all."""
    found = (
        await db.execute(
            select(Member.id, Member.name, OrgUnit.path)
            .join(OrgUnit, OrgUnit.id == Member.unit_id)
            .where(Member.member_no == member_no)
        )
    ).first()
    if found is None:
        raise NotFound(f"no member {member_no[:40]!r}")
    member_id, name, unit = found
    points: dict[int | None, int] = {
        session_id: int(total)
        for session_id, total in await db.execute(
            select(PointsEntry.session_id, func.sum(PointsEntry.points))
            .where(PointsEntry.member_id == member_id)
            .group_by(PointsEntry.session_id)
        )
    }
    entries: list[HistoryEntry] = []
    results = await db.execute(
        select(SessionResult, StudySession, Venue.slug)
        .join(StudySession, StudySession.id == SessionResult.session_id)
        .outerjoin(Venue, Venue.id == SessionResult.venue_id)
        .where(SessionResult.member_id == member_id)
    )
    notes: dict[int, str] = {
        session_id: status
        for session_id, status in await db.execute(
            select(StudyNote.session_id, StudyNote.status)
            .where(StudyNote.member_id == member_id)
            .order_by(StudyNote.id)
        )
    }
    watched_recordings = set(
        await db.scalars(
            select(AttendanceEvent.session_id)
            .where(AttendanceEvent.member_id == member_id, AttendanceEvent.kind == MAKEUP_KIND)
            .distinct()
        )
    )
    stored_sessions: set[int] = set()
    for result, session, slug in results:
        stored_sessions.add(session.id)
        makeup = (
            await session_makeup(db, session.id, member_ids=[member_id])
            if session.id in watched_recordings
            else {}
        )
        first_join = as_utc(result.first_join) if result.first_join else None
        row = ReportRow(
            member_no=member_no,
            name=name,
            unit=unit,
            expected=result.expected,
            mode=_mode(first_join, result.venue_id),
            venue=slug,
            first_join=first_join,
            last_leave=as_utc(result.last_leave) if result.last_leave else None,
            watched_s=result.watched_s,
            share=result.share,
            presence_passed=result.presence_passed,
            presence_total=result.presence_total,
            quiz_points=result.quiz_points,
            notes=notes.get(session.id, "none"),
            qualified=result.qualified,
            reason=result.reason,
            **_makeup_fields(makeup.get(member_id, NO_MAKEUP)),
        )
        entries.append(_entry(session, row, final=True, points=points))
    running = await db.scalars(
        select(StudySession).where(StudySession.state.in_((SessionState.LIVE, SessionState.PAUSED)))
    )
    for session in running:
        if session.id in stored_sessions:
            continue
        rows, _ = await _live_rows(db, session.id, now=now, member_ids=[member_id])
        if not rows:
            continue
        row = rows[0]
        if not row.expected and row.mode == "absent":
            continue
        entries.append(_entry(session, row, final=False, points=points))
    entries.sort(key=lambda e: (e.scheduled_start, e.session_id), reverse=True)
    return MemberHistory(
        member_no=member_no,
        name=name,
        unit=unit,
        total_points=sum(points.values()),
        generated_at=now,
        sessions=entries,
    )


def _entry(
    session: StudySession, row: ReportRow, *, final: bool, points: Mapping[int | None, int]
) -> HistoryEntry:
    return HistoryEntry(
        session_id=session.id,
        title=session.title,
        state=session.state.value,
        scheduled_start=as_utc(session.scheduled_start),
        final=final,
        row=row,
        points=points.get(session.id, 0),
    )
