"""The reports API: session reports, roll-ups by unit and venue, member history, exports.

``?format=json`` (default), ``csv`` or ``xlsx``; a download is an attachment, and every download
is itself recorded in the admin audit trail (``report_exported``: who, when, which filter).
Auditors may download: logging the export is the server's write, not theirs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from attendance.errors import InvalidInput
from attendance.exports import (
    CONTENT_TYPES,
    FORMATS,
    ExportFormat,
    ExportTable,
    export,
    export_display_name,
    export_filename,
    history_table,
    members_table,
    units_table,
    venues_table,
)
from attendance.journal import record_admin_event
from attendance.models import Role
from attendance.reports import (
    ReportFilter,
    member_history,
    parse_filter,
    session_report,
    unit_rollup,
    venue_rollup,
)
from attendance.timeline import session_timeline
from server.api import id_param
from server.auth import CLOCK, STORE, current_user, require_role

routes = web.RouteTableDef()


def _format(request: web.Request) -> ExportFormat | None:
    """The requested download format, or None for JSON."""
    raw = request.query.get("format", "json")
    if raw in ("", "json"):
        return None
    if raw not in FORMATS:
        raise InvalidInput(f"format: must be json, csv or xlsx, not {raw[:40]!r}")
    return raw


def _filter(request: web.Request, *names: str) -> ReportFilter:
    return parse_filter(**{name: request.query.get(name) for name in names})


async def _download(
    request: web.Request, table: ExportTable, fmt: ExportFormat, target: str
) -> web.Response:
    """The export as an attachment, after logging it in the admin audit trail."""
    user = await current_user(request)
    body = export(table, fmt)
    async with request.config_dict[STORE].write() as db:
        await record_admin_event(
            db,
            now=request.config_dict[CLOCK](),
            actor=user.actor,
            action="report_exported",
            target=target,
            detail={"report": table.kind, "format": fmt, "filter": table.filter},
        )
    ascii_name = export_filename(table, fmt)
    name = export_display_name(table, fmt)
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
    return web.Response(
        body=body,
        headers={
            "Content-Type": CONTENT_TYPES[fmt],
            "Content-Disposition": disposition,
            "Cache-Control": "no-store",
        },
    )


@routes.get("/api/sessions/{id}/report")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def session_report_show(request: web.Request) -> web.StreamResponse:
    """One row per expected or present member; ``?unit=&venue=&mode=&qualified=`` filter."""
    session_id = id_param(request, "study session")
    fmt = _format(request)
    filters = _filter(request, "unit", "venue", "mode", "qualified")
    async with request.config_dict[STORE].read() as db:
        report = await session_report(
            db, session_id, now=request.config_dict[CLOCK](), filters=filters
        )
    if fmt is None:
        return web.json_response(report.as_json())
    return await _download(request, members_table(report), fmt, f"session:{session_id}")


@routes.get("/api/sessions/{id}/report/units")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def unit_report_show(request: web.Request) -> web.StreamResponse:
    """Expected, present, qualified and rate for every unit at every level; ``?unit=`` keeps
    that unit and those below it."""
    session_id = id_param(request, "study session")
    fmt = _format(request)
    filters = _filter(request, "unit")
    async with request.config_dict[STORE].read() as db:
        report = await session_report(
            db, session_id, now=request.config_dict[CLOCK](), filters=filters
        )
    units = unit_rollup(report.rows, under=filters.unit)
    if fmt is None:
        body: dict[str, Any] = {**report.header(), "units": [u.as_json() for u in units]}
        return web.json_response(body)
    return await _download(request, units_table(report, units), fmt, f"session:{session_id}")


@routes.get("/api/sessions/{id}/report/venues")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def venue_report_show(request: web.Request) -> web.StreamResponse:
    """Per venue: screen uptime and its share of live time, check-ins, on-site members."""
    session_id = id_param(request, "study session")
    fmt = _format(request)
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].read() as db:
        report = await session_report(db, session_id, now=now)
        venues = await venue_rollup(db, session_id, now=now, rows=report.rows)
    if fmt is None:
        body: dict[str, Any] = {**report.header(), "venues": [v.as_json() for v in venues]}
        return web.json_response(body)
    return await _download(request, venues_table(report, venues), fmt, f"session:{session_id}")


@routes.get("/api/members/{member_no}/history")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def member_history_show(request: web.Request) -> web.StreamResponse:
    """A member's sessions, newest first, with points per session and in all."""
    number = request.match_info["member_no"]
    fmt = _format(request)
    async with request.config_dict[STORE].read() as db:
        history = await member_history(db, number, now=request.config_dict[CLOCK]())
    if fmt is None:
        return web.json_response(history.as_json())
    return await _download(request, history_table(history), fmt, f"member:{number}")


@routes.get("/api/sessions/{id}/timeline")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def session_timeline_show(request: web.Request) -> web.Response:
    """Members watching, screens connected and check-ins over time (at most 300 buckets),
    with broadcast, quiz and presence-check markers."""
    session_id = id_param(request, "study session")
    async with request.config_dict[STORE].read() as db:
        timeline = await session_timeline(db, session_id, now=request.config_dict[CLOCK]())
    return web.json_response(timeline.as_json())
