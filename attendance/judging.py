"""Judging one client event against the session's state: the rules of check-in, check-out,
presence answers, quiz answers, study notes and make-up viewing, applied to the rows they change.

``attendance.ingest`` loads the state a group of batches needs into a ``Context`` and calls
``judge`` for each new event in order; a ``Refused`` judgement is stored with its reason.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance import checkin, makeup, presence, quiz
from attendance.clock import as_utc
from attendance.errors import Forbidden, InvalidInput, StudycastError
from attendance.events import (
    BroadcasterStatus,
    CheckIn,
    CheckOut,
    ClientEvent,
    Heartbeat,
    MakeupPresenceAnswer,
    MakeupProgress,
    PresenceAnswer,
    QuizAnswerEvent,
    StudyNoteEvent,
    effective_time,
    is_late,
)
from attendance.journal import NewAttendanceEvent
from attendance.models import (
    AttendanceEvent,
    PresenceCheck,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    SessionCheckin,
    SessionState,
    StudyNote,
    StudySession,
)
from attendance.points import award
from attendance.sessions import AttendanceRule

log = logging.getLogger(__name__)

# How long after a question closes an answer sent before the close may still arrive.
QUIZ_ARRIVAL_GRACE_S = 3


@dataclass(frozen=True)
class Sender:
    """Who sent a batch. Members act for themselves; venues and organisers name the member."""

    kind: str  # "member" | "venue" | "organiser"
    source: str  # "member:1001", "venue:bj-1", "user:alice"
    member_id: int | None = None
    venue_id: int | None = None


@dataclass
class Outcome:
    """The answer for one event of a batch."""

    id: str | None
    status: str  # accepted | refused | duplicate | invalid
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.result:
            body["result"] = self.result
        if self.error:
            body["error"] = self.error
        return body


@dataclass
class BatchReport:
    outcomes: list[Outcome]
    # What changed, for the live event stream.
    checkins_changed: bool = False
    answered_questions: set[int] = field(default_factory=set)
    answered_checks: set[int] = field(default_factory=set)
    notes_submitted: int = 0
    suspicious: int = 0

    def as_json(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return {"results": [o.as_json() for o in self.outcomes], "counts": counts}


class Refused(StudycastError):
    """A well-formed event the server judged and refused; it is stored with the refusal."""

    code = "refused"


@dataclass
class Context:
    """What the batch's events are judged against, loaded once and kept current."""

    session: StudySession
    sender: Sender
    now: datetime
    secret: str
    venues: dict[str, int]  # slug -> id, the session's venues
    members: dict[str, int] = field(default_factory=dict)  # member number -> id
    member_units: dict[int, int] = field(default_factory=dict)
    checkins: dict[int, SessionCheckin | None] = field(default_factory=dict)
    checks: dict[int, PresenceCheck | None] = field(default_factory=dict)
    responses: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    questions: dict[int, QuizQuestion | None] = field(default_factory=dict)
    answers: dict[tuple[int, str], QuizAnswer] = field(default_factory=dict)
    report: BatchReport = field(default_factory=lambda: BatchReport([]))
    # Derived rows to link to their stored event once ids are known.
    linked: list[tuple[uuid.UUID, Any]] = field(default_factory=list)
    # The session's recorded segments by index, loaded by the first make-up report.
    segments: dict[int, makeup.Segment] | None = None
    # The presence checks in the recording by id, loaded by the first make-up answer.
    recorded_checks: dict[int, makeup.TimelineCheck] | None = None
    # Outcomes of earlier make-up answers per (check, member), loaded when first needed.
    makeup_answers: dict[tuple[int, int], list[str]] = field(default_factory=dict)


def _subject(ctx: Context, event: ClientEvent) -> tuple[int | None, str | None]:
    """The member an event is about (id, number), checked against who sent it."""
    sender = ctx.sender
    if sender.kind == "broadcaster":
        if event.member is not None:
            raise Forbidden("member: a broadcaster sends events only about its broadcast")
        return None, None
    if sender.kind == "member":
        if event.member is not None:
            raise Forbidden("member: a member sends events only for themselves")
        return sender.member_id, sender.source.removeprefix("member:")
    if event.member is None:
        return None, None
    member_id = ctx.members.get(event.member)
    if member_id is None:
        raise InvalidInput(f"member: no active member {event.member!r}")
    return member_id, event.member


async def judge(
    db: AsyncSession, ctx: Context, event: ClientEvent, sent_at: datetime | None
) -> tuple[Outcome, NewAttendanceEvent | None]:
    event_id = str(event.id)
    try:
        happened = effective_time(event.at, sent_at=sent_at, now=ctx.now)
        member_id, member_no = _subject(ctx, event)
        result = await _apply(db, ctx, event, member_id, happened)
        status = "accepted"
    except Refused as exc:
        result = {"ok": False, "code": exc.code, "detail": exc.detail}
        status = "refused"
        happened = as_utc(event.at)
        member_id, member_no = _subject_or_none(ctx, event)
    except StudycastError as exc:
        return Outcome(event_id, "invalid", error={"code": exc.code, "detail": exc.detail}), None
    fields = event.model_dump(
        mode="json", exclude={"id", "type", "at", "member"}, exclude_none=True
    )
    payload = {**fields, "happened_at": happened.isoformat(), "status": status, "result": result}
    if member_no is not None and ctx.sender.kind != "member":
        payload["for_member"] = member_no
    stored = NewAttendanceEvent(
        session_id=ctx.session.id,
        event_uuid=event.id,
        kind=event.type,
        source=ctx.sender.source,
        client_time=as_utc(event.at),
        member_id=member_id,
        venue_id=_venue_of(ctx, event, member_id),
        late=is_late(happened, ctx.now),
        payload=payload,
    )
    return Outcome(event_id, status, result), stored


def _subject_or_none(ctx: Context, event: ClientEvent) -> tuple[int | None, str | None]:
    try:
        return _subject(ctx, event)
    except StudycastError:
        return None, None


def _venue_of(ctx: Context, event: ClientEvent, member_id: int | None) -> int | None:
    if isinstance(event, CheckIn):
        return ctx.venues.get(event.venue)
    if ctx.sender.venue_id is not None:
        return ctx.sender.venue_id
    if member_id is not None:
        row = ctx.checkins.get(member_id)
        return row.venue_id if row is not None else None
    return None


async def _apply(
    db: AsyncSession,
    ctx: Context,
    event: ClientEvent,
    member_id: int | None,
    happened: datetime,
) -> dict[str, Any]:
    if (ctx.sender.kind == "broadcaster") != isinstance(event, BroadcasterStatus):
        raise Forbidden(
            "type: a broadcaster sends only broadcaster_status, and only a broadcaster sends it"
        )
    if isinstance(event, BroadcasterStatus):
        return {"ok": True}
    if isinstance(event, Heartbeat):
        if member_id is None and ctx.sender.kind != "venue":
            raise InvalidInput("member: a heartbeat names the member it is for")
        return {"ok": True}
    if isinstance(event, CheckIn):
        return _check_in(db, ctx, event, _need_member(member_id))
    if isinstance(event, CheckOut):
        return _check_out(db, ctx, _need_member(member_id))
    if isinstance(event, PresenceAnswer):
        return _presence_answer(db, ctx, event, _need_member(member_id))
    if isinstance(event, QuizAnswerEvent):
        return await _quiz_answer(db, ctx, event, member_id)
    if isinstance(event, StudyNoteEvent):
        return _study_note(db, ctx, event, _need_member(member_id), happened)
    if isinstance(event, MakeupProgress):
        return await _makeup_progress(db, ctx, event)
    if isinstance(event, MakeupPresenceAnswer):
        return await _makeup_presence_answer(db, ctx, event, _need_member(member_id))
    raise AssertionError(f"unhandled event type {event.type}")


def _need_member(member_id: int | None) -> int:
    if member_id is None:
        raise InvalidInput("member: this event must name the member it is for")
    return member_id


def _check_in(db: AsyncSession, ctx: Context, event: CheckIn, member_id: int) -> dict[str, Any]:
    if ctx.session.state == SessionState.ENDED:
        raise Refused("the session has ended", code="session_ended")
    venue_id = ctx.venues.get(event.venue)
    if venue_id is None:
        raise InvalidInput(f"venue: {event.venue!r} is not a venue of this session")
    sender = ctx.sender
    if sender.kind == "member":
        verdict = _checkin_verdict(ctx, event, venue_id)
        if verdict != checkin.OK:
            if verdict in checkin.SUSPICIOUS:
                ctx.report.suspicious += 1
                log.warning(
                    "session %s: suspicious check-in by %s at %s: %s",
                    ctx.session.id,
                    sender.source,
                    event.venue,
                    verdict,
                )
            raise Refused(_CHECKIN_REFUSALS[verdict], code=verdict)
    elif sender.kind == "venue" and sender.venue_id != venue_id:
        raise Forbidden("venue: a venue checks members in at itself only")
    current = ctx.checkins.get(member_id)
    result: dict[str, Any] = {"ok": True, "venue": event.venue}
    if current is not None and current.venue_id == venue_id:
        result["already"] = True
        return result
    if current is not None and current.venue_id is not None:
        result["switched_from"] = _slug(ctx, current.venue_id)
    if current is None:
        current = SessionCheckin(
            session_id=ctx.session.id, member_id=member_id, venue_id=venue_id, since=ctx.now
        )
        db.add(current)
        ctx.checkins[member_id] = current
    else:
        current.venue_id = venue_id
        current.since = ctx.now
    ctx.report.checkins_changed = True
    return result


_CHECKIN_REFUSALS = {
    checkin.EXPIRED: "the check-in code has expired: scan the screen's current code",
    checkin.FORGED: "the check-in code is not genuine",
    checkin.WRONG_CODE: "the code does not match the venue screen (codes change every 30 s)",
    checkin.OTHER_SESSION: "the check-in code belongs to another session",
    "no_code": "scan the venue's QR code or type its six-digit code",
}


def _checkin_verdict(ctx: Context, event: CheckIn, venue_id: int) -> str:
    if event.session is not None and event.session != ctx.session.id:
        return checkin.OTHER_SESSION
    if event.window is not None and event.sig is not None:
        return checkin.check_signed(
            ctx.secret, ctx.session.id, venue_id, event.window, event.sig, ctx.now
        )
    if event.code is not None:
        return checkin.check_short(ctx.secret, ctx.session.id, venue_id, event.code, ctx.now)
    return "no_code"


def _slug(ctx: Context, venue_id: int) -> str:
    return next((s for s, v in ctx.venues.items() if v == venue_id), str(venue_id))


def _check_out(db: AsyncSession, ctx: Context, member_id: int) -> dict[str, Any]:
    current = ctx.checkins.get(member_id)
    if current is None or current.venue_id is None:
        raise Refused("not checked in at a venue", code="not_checked_in")
    result = {"ok": True, "venue": _slug(ctx, current.venue_id)}
    current.venue_id = None
    current.since = ctx.now
    ctx.report.checkins_changed = True
    return result


def _presence_answer(
    db: AsyncSession, ctx: Context, event: PresenceAnswer, member_id: int
) -> dict[str, Any]:
    check = ctx.checks.get(event.check)
    if check is None:
        raise InvalidInput(f"check: no presence check {event.check} in this session")
    earlier = ctx.responses.setdefault((check.id, member_id), [])
    verdict = presence.judge(
        code=check.code,
        opened_at=check.opened_at,
        closes_at=check.closes_at,
        given=event.code,
        arrived_at=ctx.now,
        earlier_outcomes=earlier,
    )
    earlier.append(verdict.outcome)
    response = PresenceResponse(
        check_id=check.id,
        member_id=member_id,
        answered_at=ctx.now,
        code_given=event.code[:16],
        outcome=verdict.outcome,
    )
    db.add(response)
    ctx.linked.append((event.id, response))
    ctx.report.answered_checks.add(check.id)
    if verdict.outcome not in (presence.PASSED, presence.LATE):
        raise Refused(verdict.message, code=verdict.outcome)
    return {"ok": True, "outcome": verdict.outcome, "detail": verdict.message}


async def _quiz_answer(
    db: AsyncSession, ctx: Context, event: QuizAnswerEvent, member_id: int | None
) -> dict[str, Any]:
    question = ctx.questions.get(event.question)
    if question is None:
        raise InvalidInput(f"question: no question {event.question} in this session")
    sender = ctx.sender
    if member_id is not None:
        answerer = f"member:{_number(ctx, member_id)}"
        venue_id = None
    elif sender.kind == "venue":
        answerer, venue_id = sender.source, sender.venue_id  # the venue answers as a team
    else:
        raise InvalidInput("member: an organiser's quiz answer must name the member")
    choices = quiz.normalise_answer(
        question.kind, len(question.options.get("choices", [])), event.choices
    )
    if question.opened_at is None:
        raise Refused("this question has not been opened", code="not_open")
    closed = question.closed_at or question.closes_at
    if closed is not None and (ctx.now - closed).total_seconds() > QUIZ_ARRIVAL_GRACE_S:
        raise Refused("this question has closed", code="closed")
    assert question.closes_at is not None
    score = quiz.score(
        correct=frozenset(question.correct.get("choices", [])),
        points=question.points,
        answer=choices,
        opened_at=question.opened_at,
        closes_at=question.closes_at,
        answered_at=min(ctx.now, closed or ctx.now),
    )
    key = (question.id, answerer)
    row = ctx.answers.get(key)
    settled = question.closed_at is not None
    if settled and row is not None:
        # After the close only an answer still in flight counts, never a change of answer.
        raise Refused("this question has closed", code="closed")
    if row is None:
        row = QuizAnswer(question_id=question.id, answerer=answerer)
        db.add(row)
        ctx.answers[key] = row
    row.member_id = member_id
    row.venue_id = venue_id
    row.answer = {"choices": sorted(choices)}
    row.answered_at = ctx.now
    row.correct = score.correct
    row.points_awarded = score.points
    row.speed_bonus = score.speed_bonus
    ctx.linked.append((event.id, row))
    ctx.report.answered_questions.add(question.id)
    if settled and score.points:
        # Its question's points were awarded at the close: award this late arrival's now.
        await award(
            db,
            ref=f"quiz:{question.id}:{answerer}",
            member_id=member_id,
            venue_id=venue_id,
            unit_id=ctx.member_units.get(member_id) if member_id is not None else None,
            session_id=ctx.session.id,
            kind="quiz",
            points=score.points,
            reason=f"question {question.position} of session {ctx.session.id}: correct"
            + (f", speed bonus {score.speed_bonus}" if score.speed_bonus else ""),
            now=ctx.now,
        )
    # Whether it was right stays hidden until the organiser reveals the answer.
    return {"ok": True, "question": question.id, "choices": sorted(choices)}


def _number(ctx: Context, member_id: int) -> str:
    if ctx.sender.member_id == member_id:
        return ctx.sender.source.removeprefix("member:")
    return next(n for n, i in ctx.members.items() if i == member_id)


def _study_note(
    db: AsyncSession, ctx: Context, event: StudyNoteEvent, member_id: int, happened: datetime
) -> dict[str, Any]:
    text = event.text.strip()
    if not text:
        raise InvalidInput("text: the note is empty")
    note = StudyNote(
        session_id=ctx.session.id,
        member_id=member_id,
        body=text,
        created_at=ctx.now,
        status="submitted",
    )
    db.add(note)
    ctx.linked.append((event.id, note))
    ctx.report.notes_submitted += 1
    return {"ok": True, "status": "submitted", "characters": len(text)}


async def _makeup_progress(db: AsyncSession, ctx: Context, event: MakeupProgress) -> dict[str, Any]:
    """Make-up viewing: a member's own report of the recording they played, once the session
    has ended. Only accepted reports count (``attendance.makeup``)."""
    if ctx.sender.kind != "member":
        raise Forbidden("type: only a member reports make-up viewing, for themselves")
    if ctx.session.state != SessionState.ENDED:
        raise Refused(
            "the session has not ended: make-up viewing opens when it ends", code="not_ended"
        )
    if ctx.segments is None:
        found = await makeup.recorded_segments(db, ctx.session.id)
        ctx.segments = {s.index: s for s in found}
    problem = makeup.progress_problem(
        ctx.segments.get(event.segment), from_s=event.from_s, to_s=event.to_s, rate=event.rate
    )
    if problem is not None:
        code, reason = problem
        raise Refused(reason, code=code)
    return {"ok": True, "segment": event.segment, "counted": event.visible}


async def _makeup_presence_answer(
    db: AsyncSession, ctx: Context, event: MakeupPresenceAnswer, member_id: int
) -> dict[str, Any]:
    """A member's answer to a presence check met during make-up viewing, judged against the
    member's own code for that check (``attendance.makeup``)."""
    if ctx.sender.kind != "member":
        raise Forbidden("type: only a member answers make-up presence checks, for themselves")
    if ctx.session.state != SessionState.ENDED:
        raise Refused(
            "the session has not ended: make-up viewing opens when it ends", code="not_ended"
        )
    if not AttendanceRule.model_validate(ctx.session.attendance_rule or {}).makeup_presence:
        raise Refused(
            "this session does not ask make-up viewers to answer presence checks",
            code="not_required",
        )
    if ctx.recorded_checks is None:
        segments, checks = await makeup.recorded_timeline(db, ctx.session.id)
        ctx.recorded_checks = {c.check_id: c for c in makeup.checks_in_recording(checks, segments)}
    if event.check not in ctx.recorded_checks:
        raise Refused(
            f"presence check {event.check} is not in this session's recording",
            code="not_in_recording",
        )
    key = (event.check, member_id)
    if key not in ctx.makeup_answers:
        ctx.makeup_answers[key] = await _earlier_makeup_outcomes(db, ctx, event.check, member_id)
    earlier = ctx.makeup_answers[key]
    expected = makeup.makeup_code(ctx.secret, ctx.session.id, event.check, member_id)
    outcome, message = makeup.makeup_answer_outcome(
        expected=expected, given=event.code, earlier_outcomes=earlier
    )
    earlier.append(outcome)
    if outcome != "passed":
        raise Refused(message, code=outcome)
    return {"ok": True, "outcome": outcome, "detail": message}


async def _earlier_makeup_outcomes(
    db: AsyncSession, ctx: Context, check_id: int, member_id: int
) -> list[str]:
    rows = await db.scalars(
        select(AttendanceEvent.payload).where(
            AttendanceEvent.session_id == ctx.session.id,
            AttendanceEvent.kind == makeup.ANSWER_KIND,
            AttendanceEvent.member_id == member_id,
        )
    )
    outcomes = []
    for payload in rows:
        if not payload or payload.get("check") != check_id:
            continue
        result = payload.get("result") or {}
        accepted = payload.get("status") == "accepted"
        outcomes.append(result.get("outcome") if accepted else result.get("code"))
    return [o for o in outcomes if isinstance(o, str)]
