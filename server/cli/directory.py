"""``studycast unit`` and ``studycast venue``: the organisation tree and its rooms."""

from __future__ import annotations

from dataclasses import asdict

import click

from attendance.clock import utcnow
from attendance.store import Store
from attendance.units import UnitSummary, list_units
from attendance.venues import VenueInfo, add_venue, list_venues, set_venue_edge
from server.cli.common import echo_json, json_option, with_store
from server.cli.output import print_table
from server.settings import Settings


@click.group()
def unit() -> None:
    """The organisation tree (units are created by roster import or venue add)."""


@unit.command("list")
@json_option
def unit_list(as_json: bool) -> None:
    """List every unit with its own members and venues."""

    @with_store
    async def go(store: Store, _settings: Settings) -> list[UnitSummary]:
        async with store.read() as db:
            return await list_units(db)

    units = go()
    if as_json:
        echo_json([asdict(u) for u in units])
    else:
        print_table(
            f"{len(units)} units",
            ["path", "members", "venues"],
            [("  " * (u.depth - 1) + u.path, u.members, u.venues) for u in units],
        )


@click.group()
def venue() -> None:
    """Rooms with a big screen."""


@venue.command("add")
@click.argument("slug")
@click.option("--name", required=True, help="Name shown on screens, e.g. '第2会议室'.")
@click.option("--unit", "unit_path", required=True, help="Unit path, e.g. '北京/朝阳办公区'.")
@click.option("--capacity", type=click.IntRange(1, 100_000), help="Seats in the room.")
@click.option("--create-unit", is_flag=True, help="Create the unit path if it does not exist.")
@json_option
def venue_add(
    slug: str, name: str, unit_path: str, capacity: int | None, create_unit: bool, as_json: bool
) -> None:
    """Add the venue SLUG (used in its screen link) under a unit."""

    @with_store
    async def go(store: Store, _settings: Settings) -> VenueInfo:
        now = utcnow()
        async with store.write() as db:
            if create_unit:
                from attendance.units import UnitTree, parse_unit_path

                await UnitTree(db, now).ensure(parse_unit_path(unit_path))
            return await add_venue(
                db,
                slug=slug,
                name=name,
                unit_path=unit_path,
                capacity=capacity,
                now=now,
                actor="cli",
            )

    info = go()
    if as_json:
        echo_json(asdict(info))
    else:
        click.echo(f"added venue {info.slug} ({info.name}) under {info.unit_path}")


@venue.command("list")
@json_option
def venue_list(as_json: bool) -> None:
    """List venues."""

    @with_store
    async def go(store: Store, _settings: Settings) -> list[VenueInfo]:
        async with store.read() as db:
            return await list_venues(db)

    venues = go()
    if as_json:
        echo_json([asdict(v) for v in venues])
    else:
        print_table(
            f"{len(venues)} venues",
            ["slug", "name", "unit", "capacity", "edge"],
            [(v.slug, v.name, v.unit_path, v.capacity, v.edge_url or "-") for v in venues],
        )


@venue.command("edge")
@click.argument("slug")
@click.argument("url", required=False)
@click.option("--none", "clear", is_flag=True, help="Play from the origin again (no edge).")
@json_option
def venue_edge(slug: str, url: str | None, clear: bool, as_json: bool) -> None:
    """Make the venue SLUG's screen play from the edge at URL (its base URL, as started with
    `serve --origin`), or from the origin again with --none.

    Venue links made afterwards open the screen on the edge; it falls back to the origin by
    itself while the edge is down."""
    if clear == (url is not None):
        raise click.UsageError("give the edge's URL, or --none to play from the origin")

    @with_store
    async def go(store: Store, _settings: Settings) -> VenueInfo:
        async with store.write() as db:
            return await set_venue_edge(db, slug, url, now=utcnow(), actor="cli")

    info = go()
    if as_json:
        echo_json(asdict(info))
    elif info.edge_url:
        click.echo(f"venue {info.slug} plays from the edge {info.edge_url}")
    else:
        click.echo(f"venue {info.slug} plays from the origin")
