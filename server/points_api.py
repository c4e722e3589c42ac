"""Study-note review and the points: leaderboards by member, venue and unit, and a member's
points across sessions."""

from __future__ import annotations

import uuid

from aiohttp import web
from sqlalchemy import select

from attendance.errors import InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.models import Member, Role, StudySession
from attendance.notes import describe_note, list_notes, review_note
from attendance.points import award, leaderboard, member_points
from server.api import id_param
from server.auth import CLOCK, STORE, current_user, require_role, token_or_login
from server.callers import ORGANISER
from server.http_errors import read_json_object
from server.record_api import STAFF, caller_for

routes = web.RouteTableDef()


def _positive(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 9 or int(raw) < 1:
        raise InvalidInput(f"{name}: must be a positive whole number, not {raw[:20]!r}")
    return int(raw)


@routes.get("/api/sessions/{id}/notes")
@token_or_login
async def notes_index(request: web.Request) -> web.Response:
    """The session's study notes; ``?status=submitted`` for those awaiting review."""
    session_id, _ = await caller_for(request, STAFF)
    async with request.config_dict[STORE].read() as db:
        notes = await list_notes(db, session_id, status=request.query.get("status"))
    return web.json_response({"notes": notes})


@routes.post("/api/sessions/{id}/notes/{nid}/review")
@token_or_login
async def notes_review(request: web.Request) -> web.Response:
    """``{"decision": "accept" | "return", "comment": "..."}``."""
    session_id, caller = await caller_for(request, frozenset({ORGANISER}))
    note_id = id_param(request, "study note", "nid")
    body = await read_json_object(request)
    unknown = set(body) - {"decision", "comment"}
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
    decision, comment = body.get("decision"), body.get("comment")
    if not isinstance(decision, str):
        raise InvalidInput("decision: must be accept or return")
    if comment is not None and not isinstance(comment, str):
        raise InvalidInput("comment: must be text")
    assert caller.user_id is not None
    async with request.config_dict[STORE].write() as db:
        note = await review_note(
            db,
            session_id,
            note_id,
            decision=decision,
            comment=comment,
            now=request.config_dict[CLOCK](),
            actor=caller.actor,
            user_id=caller.user_id,
        )
        answer = describe_note(note)
    return web.json_response(answer)


@routes.get("/api/leaderboard")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def leaderboard_show(request: web.Request) -> web.Response:
    """``?by=member|venue|unit`` (``&session=ID``, ``&level=N`` for units, ``&limit=N``)."""
    by = request.query.get("by", "member")
    async with request.config_dict[STORE].read() as db:
        entries = await leaderboard(
            db,
            by,
            session_id=_positive(request, "session"),
            unit_level=_positive(request, "level"),
            limit=_positive(request, "limit") or 100,
        )
    return web.json_response(
        {
            "by": by,
            "entries": [
                {"rank": e.rank, "key": e.key, "name": e.name, "points": e.points} for e in entries
            ],
        }
    )


@routes.get("/api/members/{member_no}/points")
@require_role(Role.ORGANISER, Role.AUDITOR)
async def member_points_show(request: web.Request) -> web.Response:
    number = request.match_info["member_no"]
    async with request.config_dict[STORE].read() as db:
        member_id = await db.scalar(select(Member.id).where(Member.member_no == number))
        if member_id is None:
            raise NotFound(f"no member {number[:40]!r}")
        body = await member_points(db, member_id)
    return web.json_response({"member_no": number, **body})


@routes.post("/api/members/{member_no}/points/corrections")
@require_role(Role.ORGANISER)
async def member_points_correct(request: web.Request) -> web.Response:
    """``{"points": -5, "reason": "..."}``: a correction entry in the ledger (never an edit)."""
    user = await current_user(request)
    number = request.match_info["member_no"]
    body = await read_json_object(request)
    unknown = set(body) - {"points", "reason", "session_id"}
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
    points, reason = body.get("points"), body.get("reason")
    if not isinstance(points, int) or isinstance(points, bool) or not -10_000 <= points <= 10_000:
        raise InvalidInput("points: a whole number between -10000 and 10000")
    if points == 0:
        raise InvalidInput("points: a correction of 0 changes nothing")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 1000:
        raise InvalidInput("reason: say why (up to 1000 characters)")
    session_id = body.get("session_id")
    if session_id is not None and (not isinstance(session_id, int) or isinstance(session_id, bool)):
        raise InvalidInput("session_id: a session number")
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].write() as db:
        member = await db.scalar(select(Member).where(Member.member_no == number))
        if member is None:
            raise NotFound(f"no member {number[:40]!r}")
        if session_id is not None and await db.get(StudySession, session_id) is None:
            raise NotFound(f"no study session {session_id}")
        ref = f"correction:{uuid.uuid4()}"
        await award(
            db,
            ref=ref,
            member_id=member.id,
            venue_id=None,
            unit_id=member.unit_id,
            session_id=session_id,
            kind="correction",
            points=points,
            reason=f"{reason.strip()} (by {user.actor})",
            now=now,
        )
        await record_admin_event(
            db,
            now=now,
            actor=user.actor,
            action="points_corrected",
            target=f"member:{number}",
            detail={"points": points, "reason": reason.strip(), "session_id": session_id},
        )
        body = {"member_no": number, "ref": ref, **await member_points(db, member.id)}
    return web.json_response(body, status=201)
