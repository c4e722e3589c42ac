"""The points ledger across sessions: awards for attendance, quiz answers and accepted study
notes, and the leaderboards by member, venue and unit.

The ledger is append-only. Each award carries a ``ref`` naming what earned it
(``quiz:12:member:1001``), so awarding twice is a no-op; a correction is a new entry with a
reason, never an edit.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import InvalidInput
from attendance.models import Member, OrgUnit, PointsEntry, Venue
from attendance.quiz import RankedEntry, rank

BOARDS = ("member", "venue", "unit")


async def award(
    db: AsyncSession,
    *,
    ref: str,
    member_id: int | None,
    venue_id: int | None,
    unit_id: int | None,
    session_id: int | None,
    kind: str,
    points: int,
    reason: str,
    now: datetime,
) -> bool:
    """Add an entry unless ``ref`` was awarded already; True when added."""
    if await db.scalar(select(PointsEntry.id).where(PointsEntry.ref == ref)) is not None:
        return False
    db.add(
        PointsEntry(
            ref=ref,
            member_id=member_id,
            venue_id=venue_id,
            unit_id=unit_id,
            session_id=session_id,
            kind=kind,
            points=points,
            reason=reason,
            at=now,
        )
    )
    await db.flush()
    return True


async def member_points(db: AsyncSession, member_id: int) -> dict[str, Any]:
    """A member's total and the entries behind it, newest first."""
    entries = list(
        await db.scalars(
            select(PointsEntry)
            .where(PointsEntry.member_id == member_id)
            .order_by(PointsEntry.id.desc())
            .limit(500)
        )
    )
    total = await db.scalar(
        select(func.coalesce(func.sum(PointsEntry.points), 0)).where(
            PointsEntry.member_id == member_id
        )
    )
    return {
        "total": int(total or 0),
        "entries": [
            {
                "kind": e.kind,
                "points": e.points,
                "reason": e.reason,
                "session_id": e.session_id,
                "at": e.at.isoformat(),
            }
            for e in entries
        ],
    }


async def leaderboard(
    db: AsyncSession,
    by: str,
    *,
    session_id: int | None = None,
    unit_level: int | None = None,
    limit: int = 100,
) -> list[RankedEntry]:
    """Points ranked by member, venue (on-site members' and team points) or unit (members'
    units, or their ancestors ``unit_level`` levels from the root)."""
    if by not in BOARDS:
        raise InvalidInput(f"by: must be one of {', '.join(BOARDS)}, not {by!r}")
    if not 1 <= limit <= 1000:
        raise InvalidInput("limit: must be between 1 and 1000")
    where = [PointsEntry.session_id == session_id] if session_id is not None else []
    totals: dict[str, tuple[str, int]] = {}
    if by == "member":
        rows = await db.execute(
            select(Member.member_no, Member.name, func.sum(PointsEntry.points))
            .join(Member, Member.id == PointsEntry.member_id)
            .where(*where)
            .group_by(Member.member_no, Member.name)
        )
        totals = {number: (name, int(points)) for number, name, points in rows}
    elif by == "venue":
        rows = await db.execute(
            select(Venue.slug, Venue.name, func.sum(PointsEntry.points))
            .join(Venue, Venue.id == PointsEntry.venue_id)
            .where(*where)
            .group_by(Venue.slug, Venue.name)
        )
        totals = {slug: (name, int(points)) for slug, name, points in rows}
    else:
        if unit_level is not None and not 1 <= unit_level <= 20:
            raise InvalidInput("unit_level: must be between 1 and 20")
        unit_rows = await db.execute(
            select(OrgUnit.path, func.sum(PointsEntry.points))
            .join(OrgUnit, OrgUnit.id == PointsEntry.unit_id)
            .where(*where)
            .group_by(OrgUnit.path)
        )
        summed: dict[str, int] = defaultdict(int)
        for path, points in unit_rows:
            key = "/".join(path.split("/")[:unit_level]) if unit_level else path
            summed[key] += int(points)
        totals = {path: (path.split("/")[-1], points) for path, points in summed.items()}
    return rank(totals)[:limit]
