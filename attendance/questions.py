"""A session's quiz in the record store: the question bank, opening, closing and revealing
questions, live results, and quiz points. Scoring and parsing are in ``attendance.quiz``.

One question is open at a time. It closes when its timer runs out (``close_due``) or when the
organiser closes it early; at close the counted answers earn their points in the ledger.
Every organiser action is an entry of the admin audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.clock import as_utc
from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.models import (
    Member,
    QuizAnswer,
    QuizQuestion,
    SessionState,
    StudySession,
    Venue,
)
from attendance.points import award
from attendance.quiz import (
    MAX_BANK,
    MAX_TIME_LIMIT_S,
    MIN_TIME_LIMIT_S,
    QuestionDraft,
    distribution,
)


def question_state(q: QuizQuestion, now: datetime) -> str:
    if q.revealed_at is not None:
        return "revealed"
    if q.closed_at is not None or (q.closes_at is not None and as_utc(q.closes_at) <= now):
        return "closed"
    if q.opened_at is not None:
        return "open"
    return "ready"


def describe_question(q: QuizQuestion, now: datetime, *, with_answer: bool) -> dict[str, Any]:
    """A question as JSON. The correct choices only when ``with_answer`` or once revealed."""
    state = question_state(q, now)
    body: dict[str, Any] = {
        "id": q.id,
        "position": q.position,
        "prompt": q.prompt,
        "kind": q.kind,
        "choices": list(q.options.get("choices", [])),
        "points": q.points,
        "time_limit_s": q.time_limit_s,
        "state": state,
        "opened_at": _iso(q.opened_at),
        "closes_at": _iso(q.closed_at or q.closes_at),
        "revealed_at": _iso(q.revealed_at),
    }
    if with_answer or state == "revealed":
        body["correct"] = sorted(q.correct.get("choices", []))
    return body


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None


async def _session(db: AsyncSession, session_id: int) -> StudySession:
    session = await db.get(StudySession, session_id)
    if session is None:
        raise NotFound(f"no study session {session_id}")
    return session


async def add_questions(
    db: AsyncSession,
    session_id: int,
    drafts: Sequence[QuestionDraft],
    *,
    now: datetime,
    actor: str,
    source: str,
) -> list[QuizQuestion]:
    """Append questions to the session's bank (all or nothing)."""
    session = await _session(db, session_id)
    if session.state == SessionState.ENDED:
        raise Conflict("the session has ended", code="session_ended")
    count = await db.scalar(
        select(func.count()).select_from(QuizQuestion).where(QuizQuestion.session_id == session_id)
    )
    if (count or 0) + len(drafts) > MAX_BANK:
        raise InvalidInput(f"a session holds at most {MAX_BANK} questions")
    last = await db.scalar(
        select(func.max(QuizQuestion.position)).where(QuizQuestion.session_id == session_id)
    )
    rows = []
    for offset, draft in enumerate(drafts, start=1):
        row = QuizQuestion(
            session_id=session_id,
            position=(last or 0) + offset,
            prompt=draft.prompt,
            kind=draft.kind,
            options={"choices": list(draft.choices)},
            correct={"choices": sorted(draft.correct)},
            points=draft.points,
            time_limit_s=draft.time_limit_s,
            created_at=now,
        )
        db.add(row)
        rows.append(row)
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="quiz_questions_added",
        target=f"session:{session_id}",
        detail={"count": len(rows), "source": source, "ids": [r.id for r in rows]},
    )
    return rows


async def list_questions(db: AsyncSession, session_id: int) -> list[QuizQuestion]:
    await _session(db, session_id)
    return list(
        await db.scalars(
            select(QuizQuestion)
            .where(QuizQuestion.session_id == session_id)
            .order_by(QuizQuestion.position)
        )
    )


async def get_question(db: AsyncSession, session_id: int, question_id: int) -> QuizQuestion:
    question = await db.get(QuizQuestion, question_id)
    if question is None or question.session_id != session_id:
        raise NotFound(f"no question {question_id} in session {session_id}")
    return question


async def open_question(
    db: AsyncSession,
    session_id: int,
    question_id: int,
    *,
    now: datetime,
    actor: str,
    time_limit_s: int | None = None,
) -> QuizQuestion:
    """Open a question with its timer; another open question must be closed first."""
    session = await _session(db, session_id)
    if session.state == SessionState.ENDED:
        raise Conflict("the session has ended", code="session_ended")
    question = await get_question(db, session_id, question_id)
    if question.opened_at is not None:
        raise Conflict(f"question {question_id} was opened already", code="already_opened")
    for other in await list_questions(db, session_id):
        if other.id != question_id and question_state(other, now) == "open":
            raise Conflict(
                f"question {other.id} is still open: close it first", code="question_open"
            )
    if time_limit_s is not None:
        if not MIN_TIME_LIMIT_S <= time_limit_s <= MAX_TIME_LIMIT_S:
            raise InvalidInput(
                f"time_limit_s: must be between {MIN_TIME_LIMIT_S} and {MAX_TIME_LIMIT_S}"
            )
        question.time_limit_s = time_limit_s
    question.opened_at = now
    question.closes_at = now + timedelta(seconds=question.time_limit_s)
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="quiz_opened",
        target=f"question:{question_id}",
        detail={"session_id": session_id, "time_limit_s": question.time_limit_s},
    )
    return question


async def close_question(
    db: AsyncSession, session_id: int, question_id: int, *, now: datetime, actor: str
) -> QuizQuestion:
    """Close a question (early, or when its timer has run out) and award its points."""
    question = await get_question(db, session_id, question_id)
    if question.opened_at is None:
        raise Conflict(f"question {question_id} has not been opened", code="not_open")
    if question.closed_at is not None:
        raise Conflict(f"question {question_id} is closed already", code="already_closed")
    assert question.closes_at is not None
    question.closed_at = min(now, as_utc(question.closes_at))
    await _award_points(db, question, now)
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="quiz_closed",
        target=f"question:{question_id}",
        detail={"session_id": session_id, "closed_at": question.closed_at.isoformat()},
    )
    return question


async def close_due(db: AsyncSession, *, now: datetime) -> list[QuizQuestion]:
    """Close every question whose timer ran out (any session)."""
    due = list(
        await db.scalars(
            select(QuizQuestion).where(
                QuizQuestion.closed_at.is_(None),
                QuizQuestion.opened_at.is_not(None),
                QuizQuestion.closes_at <= now,
            )
        )
    )
    for question in due:
        await close_question(db, question.session_id, question.id, now=now, actor="timer")
    return due


async def reveal_question(
    db: AsyncSession, session_id: int, question_id: int, *, now: datetime, actor: str
) -> QuizQuestion:
    question = await get_question(db, session_id, question_id)
    if question.closed_at is None:
        if question.opened_at is None:
            raise Conflict(f"question {question_id} has not been opened", code="not_open")
        await close_question(db, session_id, question_id, now=now, actor=actor)
    if question.revealed_at is not None:
        raise Conflict(f"question {question_id} is revealed already", code="already_revealed")
    question.revealed_at = now
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="quiz_revealed",
        target=f"question:{question_id}",
        detail={"session_id": session_id, "correct": question.correct.get("choices", [])},
    )
    return question


async def _award_points(db: AsyncSession, question: QuizQuestion, now: datetime) -> None:
    rows = await db.execute(
        select(QuizAnswer, Member.unit_id)
        .outerjoin(Member, Member.id == QuizAnswer.member_id)
        .where(QuizAnswer.question_id == question.id, QuizAnswer.points_awarded > 0)
    )
    for answer, unit_id in rows:
        await award(
            db,
            ref=f"quiz:{question.id}:{answer.answerer}",
            member_id=answer.member_id,
            venue_id=answer.venue_id,
            unit_id=unit_id,
            session_id=question.session_id,
            kind="quiz",
            points=answer.points_awarded,
            reason=f"question {question.position} of session {question.session_id}: correct"
            + (f", speed bonus {answer.speed_bonus}" if answer.speed_bonus else ""),
            now=now,
        )


async def question_results(
    db: AsyncSession,
    question: QuizQuestion,
    *,
    expected_member_ids: set[int],
    now: datetime,
) -> dict[str, Any]:
    """The live answer distribution, who answered correctly (after close), and which
    expected members have not answered."""
    answers = list(
        await db.scalars(select(QuizAnswer).where(QuizAnswer.question_id == question.id))
    )
    members = [a for a in answers if a.member_id is not None]
    teams = [a for a in answers if a.member_id is None]
    choice_count = len(question.options.get("choices", []))
    answered_ids = {a.member_id for a in members}
    missing_ids = sorted(expected_member_ids - answered_ids)
    missing = []
    if missing_ids:
        for number, name in await db.execute(
            select(Member.member_no, Member.name)
            .where(Member.id.in_(missing_ids[:2000]))
            .order_by(Member.member_no)
        ):
            missing.append({"member_no": number, "name": name})
    venue_names = {i: slug for i, slug in await db.execute(select(Venue.id, Venue.slug))}
    state = question_state(question, now)
    body: dict[str, Any] = {
        "question": describe_question(question, now, with_answer=True),
        "answered": len(members),
        "distribution": distribution(
            choice_count, [frozenset(a.answer.get("choices", [])) for a in members]
        ),
        "teams": [
            {
                "venue": venue_names.get(a.venue_id or 0),
                "choices": a.answer.get("choices", []),
                "correct": a.correct if state in ("closed", "revealed") else None,
                "points": a.points_awarded if state in ("closed", "revealed") else None,
            }
            for a in teams
        ],
        "team_distribution": distribution(
            choice_count, [frozenset(a.answer.get("choices", [])) for a in teams]
        ),
        "not_answered": {"count": len(missing_ids), "members": missing},
    }
    if state in ("closed", "revealed"):
        body["correct_count"] = sum(1 for a in members if a.correct)
    return body
