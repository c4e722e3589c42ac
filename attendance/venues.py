"""Venues: rooms with a big screen, each belonging to an organisation unit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.models import Venue
from attendance.units import get_unit

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def check_slug(slug: str) -> str:
    if not SLUG.match(slug or ""):
        raise InvalidInput(
            f"venue slug {slug!r} must be 1-64 characters of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return slug


def check_name(name: str, what: str = "venue name", limit: int = 100) -> str:
    name = (name or "").strip()
    if not name:
        raise InvalidInput(f"{what} is empty")
    if len(name) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")
    if any(ord(c) < 32 for c in name):
        raise InvalidInput(f"{what} contains a control character")
    return name


@dataclass(frozen=True)
class VenueInfo:
    id: int
    slug: str
    name: str
    unit_path: str
    capacity: int | None


def venue_info(v: Venue) -> VenueInfo:
    return VenueInfo(v.id, v.slug, v.name, v.unit.path, v.capacity)


async def add_venue(
    db: AsyncSession,
    *,
    slug: str,
    name: str,
    unit_path: str,
    now: datetime,
    actor: str,
    capacity: int | None = None,
) -> VenueInfo:
    """Register a venue under an existing unit; the slug appears in the venue screen's link."""
    check_slug(slug)
    name = check_name(name)
    if capacity is not None and not 0 < capacity <= 100_000:
        raise InvalidInput("capacity must be between 1 and 100000")
    unit = await get_unit(db, unit_path)
    if await db.scalar(select(Venue.id).where(Venue.slug == slug)) is not None:
        raise Conflict(f"venue {slug!r} exists already")
    venue = Venue(slug=slug, name=name, unit_id=unit.id, capacity=capacity, created_at=now)
    venue.unit = unit
    db.add(venue)
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="venue_added",
        target=f"venue:{slug}",
        detail={"name": name, "unit": unit.path},
    )
    return venue_info(venue)


async def list_venues(db: AsyncSession) -> list[VenueInfo]:
    venues = await db.scalars(select(Venue).options(selectinload(Venue.unit)).order_by(Venue.slug))
    return [venue_info(v) for v in venues]


async def get_venue(db: AsyncSession, slug: str) -> Venue:
    venue = await db.scalar(
        select(Venue).options(selectinload(Venue.unit)).where(Venue.slug == slug)
    )
    if venue is None:
        raise NotFound(f"no venue {slug!r}")
    return venue
