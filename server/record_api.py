"""The live record's HTTP API: events in, the live event stream out, attendance, check-in codes
and the personal links to hand out.

Members and venue screens call these with their session token; organisers, auditors and venue
operators with their login (``server.callers``).
"""

from __future__ import annotations

import io
import uuid
from typing import Any
from urllib.parse import quote

import segno
from aiohttp import web
from sqlalchemy import select

from attendance import checkin
from attendance.corrections import correct_attendance
from attendance.errors import InvalidInput, NotFound
from attendance.evaluation import expected_member_ids, session_attendance
from attendance.events import parse_batch
from attendance.makeup import session_makeup
from attendance.models import (
    Member,
    OrgUnit,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    SessionCheckin,
    SessionVenue,
    Venue,
)
from attendance.notes import list_notes
from attendance.points import member_points
from attendance.questions import question_state
from attendance.sessions import get_session
from server.api import id_param, public_base
from server.auth import CLOCK, SETTINGS, STORE, token_or_login
from server.callers import (
    AUDITOR,
    BROADCASTER,
    MEMBER,
    ORGANISER,
    VENUE,
    Caller,
    session_caller,
)
from server.http_errors import read_json_object
from server.ingest_queue import IngestQueue
from server.live import stream
from server.live_events import LIVE, snapshot
from server.record_tasks import DIRTY_QUESTIONS, live_counts
from server.tokens import TokenRole, issue
from server.whip import RELAY
from server.workers import WORKER

routes = web.RouteTableDef()
INGEST_QUEUE = web.AppKey("studycast.ingest_queue", IngestQueue)

ALL = frozenset({MEMBER, VENUE, ORGANISER, AUDITOR})
STAFF = frozenset({ORGANISER, AUDITOR})
SENDERS = frozenset({MEMBER, VENUE, ORGANISER, BROADCASTER})


async def caller_for(request: web.Request, audiences: frozenset[str]) -> tuple[int, Caller]:
    session_id = id_param(request, "study session")
    return session_id, await session_caller(request, session_id, audiences=audiences)


def origin_base(request: web.Request) -> str:
    """The origin's base URL, where a venue screen on an edge falls back to: the origin this
    node pulls from when it is an edge, else this node's public base."""
    settings = request.config_dict[SETTINGS]
    worker = request.config_dict.get(WORKER)
    origin = settings.origin_url
    if origin and not (worker is not None and origin == worker.private_url(0)):
        return origin
    return public_base(request).rstrip("/")


def venue_screen_links(
    request: web.Request, session_id: int, token: str, edge_url: str | None
) -> dict[str, str | None]:
    """A venue screen's link: on its edge (``o=`` names the origin to fall back to) when it has
    one, else on this node as always; ``fallback_url`` is the plain origin link (operators)."""
    fragment = f"s={session_id}&t={token}"
    if edge_url is None:
        base = public_base(request).rstrip("/")
        return {"url": f"{base}/venue.html#{fragment}", "edge_url": None, "fallback_url": None}
    origin = origin_base(request)
    # t stays last: tools cut the token off the end of a link.
    edged = f"s={session_id}&o={quote(origin, safe=':/')}&t={token}"
    return {
        "url": f"{edge_url}/venue.html#{edged}",
        "edge_url": edge_url,
        "fallback_url": f"{origin}/venue.html#{fragment}",
    }


@routes.post("/api/sessions/{id}/events")
@token_or_login
async def events_post(request: web.Request) -> web.Response:
    """A batch of up to 500 events; one result per event (see ``attendance.ingest``)."""
    session_id, caller = await caller_for(request, SENDERS)
    batch = parse_batch(await read_json_object(request))
    # Committed together with the batches of concurrent requests (group commit).
    report = await request.config_dict[INGEST_QUEUE].submit(session_id, caller.sender(), batch)
    dirty = request.config_dict[DIRTY_QUESTIONS]
    dirty.update((session_id, q) for q in report.answered_questions)
    return web.json_response(report.as_json())


@routes.get("/api/sessions/{id}/events/stream")
@token_or_login
async def events_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: session state, quiz, presence checks and live counts."""
    session_id, caller = await caller_for(request, ALL)
    store = request.config_dict[STORE]
    clock = request.config_dict[CLOCK]
    async with store.read() as db:
        await get_session(db, session_id)

    async def fresh() -> dict[str, Any]:
        async with store.read() as db:
            body = await snapshot(db, session_id, caller.audience, now=clock())
        if caller.audience != MEMBER:
            body["counts"] = await live_counts(
                store,
                request.config_dict[RELAY],
                session_id,
                node=request.config_dict[SETTINGS].resolved_node_name(),
                now=clock(),
            )
        return body

    return await stream(request, request.config_dict[LIVE], session_id, caller.audience, fresh)


@routes.get("/api/sessions/{id}/me")
@token_or_login
async def member_me(request: web.Request) -> web.Response:
    """A member's own record of the session: attendance so far, check-in, presence checks,
    quiz answers, notes and points."""
    session_id, caller = await caller_for(request, frozenset({MEMBER}))
    assert caller.member_id is not None
    now = request.config_dict[CLOCK]()
    async with request.config_dict[STORE].read() as db:
        rows = await session_attendance(db, session_id, now=now, member_ids=[caller.member_id])
        checkin_row = await db.get(SessionCheckin, (session_id, caller.member_id))
        venue = (
            await db.get(Venue, checkin_row.venue_id)
            if checkin_row and checkin_row.venue_id
            else None
        )
        responses = await db.execute(
            select(
                PresenceResponse.check_id, PresenceResponse.outcome, PresenceResponse.answered_at
            )
            .where(PresenceResponse.member_id == caller.member_id)
            .order_by(PresenceResponse.id)
        )
        answers = await db.execute(
            select(QuizAnswer, QuizQuestion)
            .join(QuizQuestion, QuizQuestion.id == QuizAnswer.question_id)
            .where(
                QuizQuestion.session_id == session_id,
                QuizAnswer.answerer == caller.actor,
            )
            .order_by(QuizQuestion.position)
        )
        quiz = []
        for answer, question in answers:
            revealed = question_state(question, now) == "revealed"
            quiz.append(
                {
                    "question": question.id,
                    "choices": answer.answer.get("choices", []),
                    "correct": answer.correct if revealed else None,
                    "points": answer.points_awarded if revealed else None,
                }
            )
        notes = await list_notes(db, session_id, member_id=caller.member_id)
        points = await member_points(db, caller.member_id)
        makeup = (await session_makeup(db, session_id, member_ids=[caller.member_id])).get(
            caller.member_id
        )
    row = rows[0].as_json() if rows else None
    return web.json_response(
        {
            "member_no": caller.member_no,
            "attendance": row,
            "checked_in": venue.slug if venue else None,
            "presence": [
                {"check": c, "outcome": o, "at": at.isoformat()} for c, o, at in responses
            ],
            "quiz": quiz,
            "notes": notes,
            "points": points["total"],
            "makeup": None
            if makeup is None
            else {
                "seconds": round(makeup.attendance.seconds, 1),
                "minutes": makeup.minutes,
                "share": round(makeup.share, 4),
                "qualified": makeup.qualified,
                "reason": makeup.verdict.reason,
                "presence_passed": len(makeup.attendance.checks_passed),
                "presence_total": makeup.attendance.checks_total,
            },
        }
    )


@routes.get("/api/sessions/{id}/attendance")
@token_or_login
async def attendance_index(request: web.Request) -> web.Response:
    """Every expected or present member's attendance so far (after the end: as evaluated).
    A venue sees the members of its own venue only."""
    session_id, caller = await caller_for(request, frozenset({ORGANISER, AUDITOR, VENUE}))
    async with request.config_dict[STORE].read() as db:
        rows = await session_attendance(db, session_id, now=request.config_dict[CLOCK]())
    lines = [r.as_json() for r in rows]
    if caller.audience == VENUE:
        lines = [r for r in lines if r["venue"] == caller.venue_slug]
    summary = {
        "members": len(lines),
        "expected": sum(1 for r in lines if r["expected"]),
        "present": sum(1 for r in lines if r["mode"] != "absent"),
        "qualified": sum(1 for r in lines if r["qualified"]),
    }
    return web.json_response({"session_id": session_id, "summary": summary, "members": lines})


@routes.get("/api/sessions/{id}/venues/{slug}/checkin-code")
@token_or_login
async def checkin_code(request: web.Request) -> web.Response:
    """The venue's current check-in code: QR URL (as SVG too), short code and its times."""
    session_id, caller = await caller_for(request, frozenset({VENUE, ORGANISER}))
    slug = request.match_info["slug"]
    if caller.audience == VENUE and caller.venue_slug != slug:
        raise NotFound(f"venue {slug!r} is not your venue")
    async with request.config_dict[STORE].read() as db:
        venue = await db.scalar(
            select(Venue)
            .join(SessionVenue, SessionVenue.venue_id == Venue.id)
            .where(Venue.slug == slug, SessionVenue.session_id == session_id)
        )
    if venue is None:
        raise NotFound(f"venue {slug!r} is not a venue of session {session_id}")
    now = request.config_dict[CLOCK]()
    code = checkin.current_code(
        request.config_dict[SETTINGS].resolved_secret_key(), session_id, venue.id, now
    )
    url = (
        f"{public_base(request).rstrip('/')}/member.html#checkin="
        f"{session_id}.{slug}.{code.window}.{code.signature}"
    )
    svg = io.BytesIO()
    segno.make(url, error="m").save(svg, kind="svg", scale=4, border=2, xmldecl=False)
    return web.json_response(
        {
            "venue": slug,
            "venue_name": venue.name,
            "url": url,
            "qr_svg": svg.getvalue().decode("utf-8"),
            "short_code": code.short_code,
            "window": code.window,
            "signature": code.signature,
            "shown_at": code.shown_at.isoformat(),
            "rotates_at": code.rotates_at.isoformat(),
            "expires_at": code.expires_at.isoformat(),
        }
    )


@routes.get("/api/sessions/{id}/member-links")
@token_or_login
async def member_links(request: web.Request) -> web.Response:
    """Personal join links of the expected members and the venue screen links."""
    session_id, _ = await caller_for(request, frozenset({ORGANISER}))
    settings = request.config_dict[SETTINGS]
    secret = settings.resolved_secret_key()
    now = request.config_dict[CLOCK]()
    base = public_base(request).rstrip("/")
    async with request.config_dict[STORE].read() as db:
        session = await get_session(db, session_id)
        ids = await expected_member_ids(db, session)
        members = (
            await db.execute(
                select(Member.member_no, Member.name, Member.link_version, OrgUnit.path)
                .join(OrgUnit, OrgUnit.id == Member.unit_id)
                .where(Member.id.in_(sorted(ids)))
                .order_by(Member.member_no)
            )
            if ids
            else None
        )
        member_rows = list(members) if members is not None else []
        venues = [(v.slug, v.name, v.edge_url) for v in session.venues]
    body = {
        "session_id": session_id,
        "members": [
            {
                "member_no": number,
                "name": name,
                "unit": path,
                "url": f"{base}/member.html#s={session_id}&t="
                + issue(
                    secret,
                    session_id=session_id,
                    role=TokenRole.MEMBER,
                    subject=f"member:{number}",
                    now=now,
                    version=version,
                ),
            }
            for number, name, version, path in member_rows
        ],
        "venues": [
            {
                "slug": slug,
                "name": name,
                **venue_screen_links(
                    request,
                    session_id,
                    issue(
                        secret,
                        session_id=session_id,
                        role=TokenRole.VENUE,
                        subject=f"venue:{slug}",
                        now=now,
                    ),
                    edge_url,
                ),
            }
            for slug, name, edge_url in venues
        ],
    }
    return web.json_response(body)


@routes.post("/api/sessions/{id}/corrections")
@token_or_login
async def attendance_correct(request: web.Request) -> web.Response:
    """``{"member": "1001", "qualified": true, "reason": "..."}``: override a member's verdict
    (a new event with the reason; what was recorded stays)."""
    session_id, caller = await caller_for(request, frozenset({ORGANISER}))
    body = await read_json_object(request)
    unknown = set(body) - {"member", "qualified", "reason"}
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
    member, qualified, reason = body.get("member"), body.get("qualified"), body.get("reason")
    if not isinstance(member, str) or not member:
        raise InvalidInput("member: the member number, as text")
    if not isinstance(qualified, bool):
        raise InvalidInput("qualified: true or false")
    if not isinstance(reason, str):
        raise InvalidInput("reason: say why, as text")
    async with request.config_dict[STORE].write() as db:
        answer = await correct_attendance(
            db,
            session_id,
            member_no=member,
            qualified=qualified,
            reason=reason,
            now=request.config_dict[CLOCK](),
            actor=caller.actor,
            event_id=uuid.uuid4(),
        )
    return web.json_response(answer, status=201)


@routes.get("/api/sessions/{id}/link-qr.svg")
@token_or_login
async def link_qr(request: web.Request) -> web.Response:
    """A personal link (``?member=NO``) or venue screen link (``?venue=SLUG``) as a QR code to
    print or show; organisers only."""
    session_id, _ = await caller_for(request, frozenset({ORGANISER}))
    member, venue = request.query.get("member"), request.query.get("venue")
    if (member is None) == (venue is None):
        raise InvalidInput("give member=NUMBER or venue=SLUG")
    settings = request.config_dict[SETTINGS]
    now = request.config_dict[CLOCK]()
    base = public_base(request).rstrip("/")
    async with request.config_dict[STORE].read() as db:
        session = await get_session(db, session_id)
        if member is not None:
            row = await db.scalar(select(Member).where(Member.member_no == member))
            if row is None or not row.active:
                raise NotFound(f"no active member {member[:40]!r}")
            token = issue(
                settings.resolved_secret_key(),
                session_id=session_id,
                role=TokenRole.MEMBER,
                subject=f"member:{member}",
                now=now,
                version=row.link_version,
            )
            url = f"{base}/member.html#s={session_id}&t={token}"
        else:
            room = next((v for v in session.venues if v.slug == venue), None)
            if room is None:
                raise NotFound(f"venue {str(venue)[:40]!r} is not a venue of this session")
            token = issue(
                settings.resolved_secret_key(),
                session_id=session_id,
                role=TokenRole.VENUE,
                subject=f"venue:{venue}",
                now=now,
            )
            url = str(venue_screen_links(request, session_id, token, room.edge_url)["url"])
    svg = io.BytesIO()
    segno.make(url, error="m").save(svg, kind="svg", scale=6, border=4)
    return web.Response(
        body=svg.getvalue(), content_type="image/svg+xml", headers={"Cache-Control": "no-store"}
    )
