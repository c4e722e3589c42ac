"""``studycast report``: attendance reports of a session, by unit and venue, and per member."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import click

from attendance.clock import utcnow
from attendance.exports import (
    ExportFormat,
    ExportTable,
    export,
    members_table,
    units_table,
    venues_table,
)
from attendance.exports import history_table as history_export
from attendance.journal import record_admin_event
from attendance.reports import (
    MODES,
    ReportFilter,
    member_history,
    parse_filter,
    session_report,
    unit_rollup,
    venue_rollup,
)
from attendance.store import Store
from server.cli.common import echo_json, with_store
from server.cli.output import print_table
from server.settings import Settings

ACTOR = "cli"


def _output_options(fn: Any) -> Any:
    fn = click.option(
        "--output",
        "-o",
        type=click.Path(dir_okay=False, writable=True, path_type=Path),
        help="Write the export to this file (needed for xlsx; csv goes to stdout without it).",
    )(fn)
    fn = click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "csv", "xlsx"]),
        default="table",
        show_default=True,
        help="Output: a terminal table, JSON, or an export file.",
    )(fn)
    return fn


def _check_output(fmt: str, output: Path | None) -> None:
    if fmt == "xlsx" and output is None:
        raise click.UsageError("--format xlsx needs --output FILE")
    if fmt in ("table", "json") and output is not None:
        raise click.UsageError("--output is for --format csv or xlsx")


async def _export(
    store: Store, table: ExportTable, fmt: str, output: Path | None, target: str
) -> None:
    """Write the export (file or stdout) and log it, as the server does for downloads."""
    data = export(table, cast(ExportFormat, fmt))
    async with store.write() as db:
        await record_admin_event(
            db,
            now=utcnow(),
            actor=ACTOR,
            action="report_exported",
            target=target,
            detail={
                "report": table.kind,
                "format": fmt,
                "filter": table.filter,
                "output": str(output) if output else "stdout",
            },
        )
    if output is None:
        click.echo(data, nl=False)
    else:
        await asyncio.to_thread(output.write_bytes, data)
        click.echo(f"wrote {len(table.rows)} rows to {output}", err=True)


def _yes(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


@click.group()
def report() -> None:
    """Attendance reports (tables, JSON, CSV or XLSX)."""


@report.command("session")
@click.argument("session_id", type=click.IntRange(1))
@click.option("--unit", help="Unit path prefix: that unit and those below it.")
@click.option("--venue", help="Venue slug: members on-site there.")
@click.option("--mode", type=click.Choice(MODES), help="On-site, remote or absent members.")
@click.option("--qualified", type=click.Choice(["yes", "no"]), help="Qualified or not.")
@_output_options
@with_store
async def session_command(
    store: Store,
    settings: Settings,
    session_id: int,
    unit: str | None,
    venue: str | None,
    mode: str | None,
    qualified: str | None,
    fmt: str,
    output: Path | None,
) -> None:
    """One line per expected or present member of session SESSION_ID."""
    _check_output(fmt, output)
    filters = parse_filter(unit=unit, venue=venue, mode=mode, qualified=qualified)
    async with store.read() as db:
        found = await session_report(db, session_id, now=utcnow(), filters=filters)
    if fmt == "json":
        echo_json(found.as_json())
    elif fmt == "table":
        kind = "final" if found.final else "live"
        print_table(
            f"Session {session_id} {found.title} ({found.state}, {kind}), "
            f"{len(found.rows)} members",
            [
                *("No.", "Name", "Unit", "Mode", "Venue", "Min", "Share", "Checks", "Quiz"),
                *("Notes", "Qualified", "Reason"),
            ],
            [
                [
                    *(r.member_no, r.name, r.unit, r.mode, r.venue, f"{r.watched_min:.1f}"),
                    *(f"{r.share:.0%}", f"{r.presence_passed}/{r.presence_total}", r.quiz_points),
                    *(r.notes, _yes(r.qualified), r.reason),
                ]
                for r in found.rows
            ],
        )
    else:
        await _export(store, members_table(found), fmt, output, f"session:{session_id}")


@report.command("units")
@click.argument("session_id", type=click.IntRange(1))
@click.option("--unit", help="Only this unit and those below it.")
@_output_options
@with_store
async def units_command(
    store: Store,
    settings: Settings,
    session_id: int,
    unit: str | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Expected, present, qualified and rate per unit at every level, for SESSION_ID."""
    _check_output(fmt, output)
    filters = parse_filter(unit=unit)
    async with store.read() as db:
        found = await session_report(db, session_id, now=utcnow(), filters=filters)
    units = unit_rollup(found.rows, under=filters.unit)
    if fmt == "json":
        echo_json({**found.header(), "units": [u.as_json() for u in units]})
    elif fmt == "table":
        print_table(
            f"Session {session_id} {found.title}: units",
            ["Unit", "Expected", "Present", "Guests", "Qualified", "Rate"],
            [
                [
                    *(u.unit, u.expected, u.present, u.guests, u.qualified),
                    "" if u.rate is None else f"{u.rate:.0%}",
                ]
                for u in units
            ],
        )
    else:
        await _export(store, units_table(found, units), fmt, output, f"session:{session_id}")


@report.command("venues")
@click.argument("session_id", type=click.IntRange(1))
@_output_options
@with_store
async def venues_command(
    store: Store, settings: Settings, session_id: int, fmt: str, output: Path | None
) -> None:
    """Screen uptime, check-ins and on-site members per venue of SESSION_ID."""
    _check_output(fmt, output)
    now = utcnow()
    async with store.read() as db:
        found = await session_report(db, session_id, now=now, filters=ReportFilter())
        venues = await venue_rollup(db, session_id, now=now, rows=found.rows)
    if fmt == "json":
        echo_json({**found.header(), "venues": [v.as_json() for v in venues]})
    elif fmt == "table":
        print_table(
            f"Session {session_id} {found.title}: venues",
            ["Venue", "Name", "Uptime min", "Uptime share", "Check-ins", "On-site"],
            [
                [
                    *(v.venue, v.name, _minutes(v.uptime_s)),
                    "" if v.uptime_share is None else f"{v.uptime_share:.0%}",
                    *(v.checkins, v.onsite),
                ]
                for v in venues
            ],
        )
    else:
        await _export(store, venues_table(found, venues), fmt, output, f"session:{session_id}")


@report.command("member")
@click.argument("member_no")
@_output_options
@with_store
async def member_command(
    store: Store, settings: Settings, member_no: str, fmt: str, output: Path | None
) -> None:
    """MEMBER_NO's sessions, newest first, with points per session and in all."""
    _check_output(fmt, output)
    async with store.read() as db:
        history = await member_history(db, member_no, now=utcnow())
    if fmt == "json":
        echo_json(history.as_json())
    elif fmt == "table":
        print_table(
            f"{history.member_no} {history.name} ({history.unit}): "
            f"{history.total_points} points in all",
            ["Session", "Title", "State", "Mode", "Min", "Share", "Qualified", "Points"],
            [
                [
                    *(s.session_id, s.title, s.state, s.row.mode, f"{s.row.watched_min:.1f}"),
                    *(f"{s.row.share:.0%}", _yes(s.row.qualified), s.points),
                ]
                for s in history.sessions
            ],
        )
    else:
        await _export(store, history_export(history), fmt, output, f"member:{member_no}")
