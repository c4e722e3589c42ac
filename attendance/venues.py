"""Venues: rooms with a big screen, each belonging to an organisation unit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.models import Venue
from attendance.units import get_unit

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
EDGE_URL_MAX = 300  # the column's length


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


def check_edge_url(url: str) -> str:
    """An edge node's base URL as stored: http(s), a host, no query, fragment or login; no
    trailing slash (links append ``/venue.html``)."""
    url = (url or "").strip().rstrip("/")
    shown = repr(url[:60])
    if not url:
        raise InvalidInput("edge_url is empty (to play from the origin again, clear it)")
    if len(url) > EDGE_URL_MAX:
        raise InvalidInput(f"edge_url is longer than {EDGE_URL_MAX} characters")
    if any(ord(c) < 33 or c == "\x7f" for c in url):
        raise InvalidInput("edge_url contains a space or control character")
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it raises on a port that is not one
    except ValueError as exc:
        raise InvalidInput(f"edge_url {shown} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"edge_url must start with http:// or https://, not {shown}")
    if not parts.hostname:
        raise InvalidInput(f"edge_url {shown} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("edge_url must not carry a user name or password")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise InvalidInput(f"edge_url {shown} must be a base URL, without '?' or '#'")
    return url


@dataclass(frozen=True)
class VenueInfo:
    id: int
    slug: str
    name: str
    unit_path: str
    capacity: int | None
    edge_url: str | None  # the edge its screen plays from; None: the origin


def venue_info(v: Venue) -> VenueInfo:
    return VenueInfo(v.id, v.slug, v.name, v.unit.path, v.capacity, v.edge_url)


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


async def set_venue_edge(
    db: AsyncSession, slug: str, edge_url: str | None, *, now: datetime, actor: str
) -> VenueInfo:
    """Make the venue's screen play from the edge at ``edge_url`` (its links point there), or
    from the origin again with ``None``. A change is written to the admin trail."""
    url = None if edge_url is None else check_edge_url(edge_url)
    venue = await get_venue(db, slug)
    before = venue.edge_url
    if url != before:
        venue.edge_url = url
        await db.flush()
        await record_admin_event(
            db,
            now=now,
            actor=actor,
            action="venue_edge_set" if url else "venue_edge_cleared",
            target=f"venue:{slug}",
            detail={"edge_url": url, "before": before},
        )
    return venue_info(venue)
