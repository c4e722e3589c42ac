"""What the live event stream carries: the events published on organiser actions and timers,
and the snapshot a client gets when it (re)connects without a resumable id.

Audiences see different things: presence codes go to the organiser and the venue screens (the
screens show them), never to members (a member must read the code off a screen; the remote
player shows it as an image); correct answers reach members only when revealed; the live answer
distribution is for the organiser and auditors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.clock import as_utc
from attendance.models import PresenceCheck, QuizQuestion, SessionState
from attendance.presence_checks import current_check, describe_check
from attendance.questions import describe_question, list_questions, question_state
from attendance.sessions import get_session
from server.live import LiveHub

LIVE = web.AppKey("studycast.live", LiveHub)
STAFF = ("organiser", "auditor")
SCREENS = ("organiser", "auditor", "venue")
EVERYONE = ("organiser", "auditor", "venue", "member")


def code_image_path(check: PresenceCheck) -> str:
    return f"/api/sessions/{check.session_id}/presence-checks/{check.id}/code.png"


def check_for(check: PresenceCheck, now: datetime, audience: str) -> dict[str, Any]:
    """A presence check as ``audience`` may see it."""
    body = describe_check(check, now, with_code=audience in SCREENS)
    if audience == "member":
        body["code_image"] = code_image_path(check)
    return body


def publish_presence_check(hub: LiveHub, check: PresenceCheck, now: datetime) -> None:
    hub.publish(
        check.session_id, "presence_check", check_for(check, now, "venue"), audience=SCREENS
    )
    hub.publish(
        check.session_id, "presence_check", check_for(check, now, "member"), audience=("member",)
    )


def publish_question(hub: LiveHub, question: QuizQuestion, now: datetime) -> None:
    """The question's current state: opened, closed or revealed."""
    state = question_state(question, now)
    kind = {"open": "quiz_opened", "closed": "quiz_closed", "revealed": "quiz_revealed"}[state]
    hub.publish(
        question.session_id,
        kind,
        describe_question(question, now, with_answer=True),
        audience=STAFF,
    )
    hub.publish(
        question.session_id,
        kind,
        describe_question(question, now, with_answer=False),
        audience=("venue", "member"),
    )


def publish_session_state(hub: LiveHub, session_id: int, state: str) -> None:
    hub.publish(session_id, "session_state", {"state": state}, audience=EVERYONE)


async def due_work(db: AsyncSession, *, now: datetime) -> bool:
    """Whether a scheduled check is due or a question's timer has run out (cheap, read-only)."""
    check = await db.scalar(
        select(PresenceCheck.id)
        .where(PresenceCheck.announced_at.is_(None), PresenceCheck.opened_at <= now)
        .limit(1)
    )
    if check is not None:
        return True
    question = await db.scalar(
        select(QuizQuestion.id)
        .where(
            QuizQuestion.closed_at.is_(None),
            QuizQuestion.opened_at.is_not(None),
            QuizQuestion.closes_at <= now,
        )
        .limit(1)
    )
    return question is not None


async def snapshot(
    db: AsyncSession, session_id: int, audience: str, *, now: datetime
) -> dict[str, Any]:
    """Everything a page needs to draw the session's live state from scratch."""
    session = await get_session(db, session_id)
    questions = await list_questions(db, session_id)
    current = next(
        (q for q in reversed(questions) if q.opened_at is not None and q.revealed_at is None),
        None,
    )
    check = await current_check(db, session_id, now=now)
    body: dict[str, Any] = {
        "session": {
            "id": session.id,
            "title": session.title,
            "state": session.state.value,
            "scheduled_start": as_utc(session.scheduled_start).isoformat(),
            "scheduled_end": as_utc(session.scheduled_end).isoformat(),
            "ended": session.state == SessionState.ENDED,
            "venues": [{"slug": v.slug, "name": v.name} for v in session.venues],
        },
        "question": None
        if current is None
        else describe_question(current, now, with_answer=audience in STAFF),
        "presence_check": None if check is None else check_for(check, now, audience),
        "server_time": now.isoformat(),
    }
    return body
