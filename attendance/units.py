"""The organisation tree: units addressed by their path, e.g. ``北京/朝阳办公区/第2会议室``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import InvalidInput, NotFound
from attendance.models import OrgUnit

SEPARATOR = "/"
MAX_DEPTH = 10
MAX_SEGMENT = 100


def parse_unit_path(raw: str) -> tuple[str, ...]:
    """Split and check a unit path; raise ``InvalidInput`` saying what is wrong with it."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidInput("unit path is empty")
    segments = tuple(s.strip() for s in raw.strip().strip(SEPARATOR).split(SEPARATOR))
    if any(not s for s in segments):
        raise InvalidInput(f"unit path {raw!r} has an empty segment (two '/' in a row?)")
    if len(segments) > MAX_DEPTH:
        raise InvalidInput(f"unit path {raw!r} is deeper than {MAX_DEPTH} levels")
    for s in segments:
        if len(s) > MAX_SEGMENT:
            raise InvalidInput(f"unit name {s[:20]!r}... is longer than {MAX_SEGMENT} characters")
        if any(ord(c) < 32 for c in s):
            raise InvalidInput(f"unit path {raw!r} contains a control character")
    return segments


def join_path(segments: Sequence[str]) -> str:
    return SEPARATOR.join(segments)


class UnitTree:
    """Finds or creates units by path inside one write transaction, caching what it has seen."""

    def __init__(self, db: AsyncSession, now: datetime) -> None:
        self.db = db
        self.now = now
        self._by_path: dict[str, OrgUnit] | None = None
        self.created: list[str] = []

    async def _load(self) -> dict[str, OrgUnit]:
        if self._by_path is None:
            units = (await self.db.scalars(select(OrgUnit))).all()
            self._by_path = {u.path: u for u in units}
        return self._by_path

    async def ensure(self, segments: Sequence[str]) -> OrgUnit:
        """The unit at ``segments``, creating it and any missing ancestors."""
        by_path = await self._load()
        parent: OrgUnit | None = None
        for depth in range(1, len(segments) + 1):
            path = join_path(segments[:depth])
            unit = by_path.get(path)
            if unit is None:
                unit = OrgUnit(
                    parent_id=parent.id if parent else None,
                    name=segments[depth - 1],
                    path=path,
                    depth=depth,
                    created_at=self.now,
                )
                self.db.add(unit)
                await self.db.flush()
                by_path[path] = unit
                self.created.append(path)
            parent = unit
        assert parent is not None
        return parent


@dataclass(frozen=True)
class UnitSummary:
    id: int
    path: str
    name: str
    depth: int
    parent_id: int | None
    members: int
    venues: int


async def get_unit(db: AsyncSession, path: str) -> OrgUnit:
    unit = await db.scalar(select(OrgUnit).where(OrgUnit.path == join_path(parse_unit_path(path))))
    if unit is None:
        raise NotFound(f"no unit at path {path!r}")
    return unit


async def list_units(db: AsyncSession) -> list[UnitSummary]:
    """All units in path order, each with its own (not subtree) member and venue counts."""
    from sqlalchemy import func

    from attendance.models import Member, Venue

    members = (
        select(Member.unit_id, func.count().label("n"))
        .where(Member.active.is_(True))
        .group_by(Member.unit_id)
        .subquery()
    )
    venues = select(Venue.unit_id, func.count().label("n")).group_by(Venue.unit_id).subquery()
    rows = await db.execute(
        select(OrgUnit, func.coalesce(members.c.n, 0), func.coalesce(venues.c.n, 0))
        .outerjoin(members, members.c.unit_id == OrgUnit.id)
        .outerjoin(venues, venues.c.unit_id == OrgUnit.id)
        .order_by(OrgUnit.path)
    )
    return [
        UnitSummary(u.id, u.path, u.name, u.depth, u.parent_id, int(m), int(v))
        for u, m, v in rows.all()
    ]
