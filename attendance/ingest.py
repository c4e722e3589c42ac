"""Event ingestion: a batch of client events judged, stored once, and applied.

One batch runs in one write transaction with the attendance chain locked, so events are judged
in order against the state earlier events (of this batch or before) left. Every event that
passes validation is appended to the hash-chained log together with the server's judgement
(``payload["result"]``); a retried event (same session and UUID) is not stored again and gets
the stored judgement back. Events that fail validation are not stored; their error names the
field. Derived state (current check-in, presence responses, quiz answers, study notes) is
written in the same transaction.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance import checkin, presence, quiz
from attendance.clock import as_utc
from attendance.errors import Forbidden, InvalidInput, StudycastError
from attendance.events import (
    Batch,
    CheckIn,
    CheckOut,
    ClientEvent,
    Heartbeat,
    PresenceAnswer,
    QuizAnswerEvent,
    StudyNoteEvent,
    effective_time,
    event_id_of,
    is_late,
    parse_event,
)
from attendance.journal import NewAttendanceEvent, append_attendance_events, lock_attendance_chain
from attendance.models import (
    AttendanceEvent,
    Member,
    PresenceCheck,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    SessionCheckin,
    SessionState,
    SessionVenue,
    StudyNote,
    StudySession,
    Venue,
)
from attendance.points import award

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
class _Context:
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


@dataclass(frozen=True)
class BatchJob:
    """One request's batch, for ``ingest_batches``."""

    session_id: int
    sender: Sender
    batch: Batch


async def ingest_batch(
    db: AsyncSession,
    *,
    session_id: int,
    sender: Sender,
    batch: Batch,
    now: datetime,
    secret: str,
) -> BatchReport:
    """Judge, store and apply one batch; see the module docstring."""
    (report,) = await ingest_batches(
        db, [BatchJob(session_id, sender, batch)], now=now, secret=secret
    )
    return report


_Parsed = list[tuple[ClientEvent | None, Outcome | None]]


def _parse(batch: Batch) -> _Parsed:
    parsed: _Parsed = []
    for raw in batch.events:
        try:
            parsed.append((parse_event(raw), None))
        except InvalidInput as exc:
            error = {"code": exc.code, "detail": exc.detail}
            parsed.append((None, Outcome(event_id_of(raw), "invalid", error=error)))
    return parsed


async def ingest_batches(
    db: AsyncSession, jobs: Sequence[BatchJob], *, now: datetime, secret: str
) -> list[BatchReport]:
    """Judge, store and apply several batches in order, in the caller's transaction, with a
    few queries for all of them (concurrent requests share a transaction: group commit)."""
    await lock_attendance_chain(db)
    parsed = [_parse(job.batch) for job in jobs]
    contexts: dict[int, _Context] = {}
    stored: dict[int, dict[uuid.UUID, tuple[str, dict[str, Any]]]] = {}
    for session_id in dict.fromkeys(job.session_id for job in jobs):
        session = await db.get(StudySession, session_id)
        if session is None:
            raise InvalidInput(f"no study session {session_id}")
        venue_rows = await db.execute(
            select(Venue.slug, Venue.id)
            .join(SessionVenue, SessionVenue.venue_id == Venue.id)
            .where(SessionVenue.session_id == session_id)
        )
        ctx = _Context(session, jobs[0].sender, now, secret, {s: v for s, v in venue_rows})
        contexts[session_id] = ctx
        mine = [i for i, job in enumerate(jobs) if job.session_id == session_id]
        uuids = [e.id for i in mine for e, _ in parsed[i] if e is not None]
        stored[session_id] = await _stored_results(db, session_id, uuids)
        fresh = [
            (jobs[i].sender, e)
            for i in mine
            for e, _ in parsed[i]
            if e is not None and e.id not in stored[session_id]
        ]
        await _load(db, ctx, fresh)

    new_events: list[NewAttendanceEvent] = []
    reports: list[BatchReport] = []
    seen: dict[tuple[int, uuid.UUID], Outcome] = {}
    for job, events in zip(jobs, parsed, strict=True):
        ctx = contexts[job.session_id]
        ctx.sender = job.sender
        ctx.report = BatchReport([])
        outcomes: list[Outcome] = []
        for event, failed in events:
            if event is None:
                assert failed is not None
                outcomes.append(failed)
                continue
            earlier = stored[job.session_id].get(event.id)
            if earlier is not None:
                status, result = earlier
                outcomes.append(Outcome(str(event.id), "duplicate", {**result, "first": status}))
                continue
            first = seen.get((job.session_id, event.id))
            if first is not None:  # the same event twice in the batch or the group
                outcomes.append(
                    Outcome(str(event.id), "duplicate", {**first.result, "first": first.status})
                )
                continue
            outcome, new = await _judge(db, ctx, event, job.batch.sent_at)
            seen[(job.session_id, event.id)] = outcome
            outcomes.append(outcome)
            if new is not None:
                new_events.append(new)
        ctx.report.outcomes = outcomes
        reports.append(ctx.report)
    # Judged with the chain locked against everything stored: nothing here is stored yet.
    await append_attendance_events(db, new_events, now=now, known_new=True)
    await _link_events(db, list(contexts.values()))
    return reports


async def _stored_results(
    db: AsyncSession, session_id: int, uuids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[str, dict[str, Any]]]:
    if not uuids:
        return {}
    rows = await db.execute(
        select(AttendanceEvent.event_uuid, AttendanceEvent.payload).where(
            AttendanceEvent.session_id == session_id,
            AttendanceEvent.event_uuid.in_(list(set(uuids))),
        )
    )
    found: dict[uuid.UUID, tuple[str, dict[str, Any]]] = {}
    for event_uuid, payload in rows:
        result = dict(payload.get("result") or {})
        found[event_uuid] = (str(payload.get("status", "accepted")), result)
    return found


async def _load(
    db: AsyncSession, ctx: _Context, events: Sequence[tuple[Sender, ClientEvent]]
) -> None:
    """Fetch, in a few queries, everything the new events refer to."""
    numbers = {e.member for _, e in events if e.member}
    sender_ids = {s.member_id for s, _ in events if s.member_id is not None}
    if numbers or sender_ids:
        rows = await db.execute(
            select(Member.id, Member.member_no, Member.unit_id, Member.active).where(
                or_(Member.member_no.in_(numbers), Member.id.in_(sender_ids))
            )
        )
        for member_id, number, unit_id, active in rows:
            if number in numbers and active:
                ctx.members[number] = member_id
            ctx.member_units[member_id] = unit_id
    member_ids = set(ctx.members.values()) | sender_ids
    if member_ids and any(isinstance(e, CheckIn | CheckOut) for _, e in events):
        for row in await db.scalars(
            select(SessionCheckin).where(
                SessionCheckin.session_id == ctx.session.id,
                SessionCheckin.member_id.in_(member_ids),
            )
        ):
            ctx.checkins[row.member_id] = row
    check_ids = {e.check for _, e in events if isinstance(e, PresenceAnswer)}
    if check_ids:
        for check in await db.scalars(
            select(PresenceCheck).where(
                PresenceCheck.id.in_(check_ids), PresenceCheck.session_id == ctx.session.id
            )
        ):
            ctx.checks[check.id] = check
        if member_ids:
            responses = await db.execute(
                select(
                    PresenceResponse.check_id, PresenceResponse.member_id, PresenceResponse.outcome
                )
                .where(
                    PresenceResponse.check_id.in_(check_ids),
                    PresenceResponse.member_id.in_(member_ids),
                )
                .order_by(PresenceResponse.id)
            )
            for check_id, member_id, outcome in responses:
                ctx.responses.setdefault((check_id, member_id), []).append(outcome)
    question_ids = {e.question for _, e in events if isinstance(e, QuizAnswerEvent)}
    if question_ids:
        for question in await db.scalars(
            select(QuizQuestion).where(
                QuizQuestion.id.in_(question_ids), QuizQuestion.session_id == ctx.session.id
            )
        ):
            ctx.questions[question.id] = question
        answerers = {f"member:{n}" for n in numbers} | {
            s.source for s, e in events if s.kind in ("member", "venue")
        }
        # Only these answerers': a question may hold thousands of answers.
        for answer in await db.scalars(
            select(QuizAnswer).where(
                QuizAnswer.question_id.in_(question_ids), QuizAnswer.answerer.in_(answerers)
            )
        ):
            ctx.answers[(answer.question_id, answer.answerer)] = answer


def _subject(ctx: _Context, event: ClientEvent) -> tuple[int | None, str | None]:
    """The member an event is about (id, number), checked against who sent it."""
    sender = ctx.sender
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


async def _judge(
    db: AsyncSession, ctx: _Context, event: ClientEvent, sent_at: datetime | None
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


def _subject_or_none(ctx: _Context, event: ClientEvent) -> tuple[int | None, str | None]:
    try:
        return _subject(ctx, event)
    except StudycastError:
        return None, None


def _venue_of(ctx: _Context, event: ClientEvent, member_id: int | None) -> int | None:
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
    ctx: _Context,
    event: ClientEvent,
    member_id: int | None,
    happened: datetime,
) -> dict[str, Any]:
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
    raise AssertionError(f"unhandled event type {event.type}")


def _need_member(member_id: int | None) -> int:
    if member_id is None:
        raise InvalidInput("member: this event must name the member it is for")
    return member_id


def _check_in(db: AsyncSession, ctx: _Context, event: CheckIn, member_id: int) -> dict[str, Any]:
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


def _checkin_verdict(ctx: _Context, event: CheckIn, venue_id: int) -> str:
    if event.session is not None and event.session != ctx.session.id:
        return checkin.OTHER_SESSION
    if event.window is not None and event.sig is not None:
        return checkin.check_signed(
            ctx.secret, ctx.session.id, venue_id, event.window, event.sig, ctx.now
        )
    if event.code is not None:
        return checkin.check_short(ctx.secret, ctx.session.id, venue_id, event.code, ctx.now)
    return "no_code"


def _slug(ctx: _Context, venue_id: int) -> str:
    return next((s for s, v in ctx.venues.items() if v == venue_id), str(venue_id))


def _check_out(db: AsyncSession, ctx: _Context, member_id: int) -> dict[str, Any]:
    current = ctx.checkins.get(member_id)
    if current is None or current.venue_id is None:
        raise Refused("not checked in at a venue", code="not_checked_in")
    result = {"ok": True, "venue": _slug(ctx, current.venue_id)}
    current.venue_id = None
    current.since = ctx.now
    ctx.report.checkins_changed = True
    return result


def _presence_answer(
    db: AsyncSession, ctx: _Context, event: PresenceAnswer, member_id: int
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
    db: AsyncSession, ctx: _Context, event: QuizAnswerEvent, member_id: int | None
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


def _number(ctx: _Context, member_id: int) -> str:
    if ctx.sender.member_id == member_id:
        return ctx.sender.source.removeprefix("member:")
    return next(n for n, i in ctx.members.items() if i == member_id)


def _study_note(
    db: AsyncSession, ctx: _Context, event: StudyNoteEvent, member_id: int, happened: datetime
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


async def _link_events(db: AsyncSession, contexts: Sequence[_Context]) -> None:
    """Point derived rows at the log entries they came from, then write them."""
    for ctx in contexts:
        if not ctx.linked:
            continue
        uuids = list({u for u, _ in ctx.linked})
        rows = await db.execute(
            select(AttendanceEvent.event_uuid, AttendanceEvent.id).where(
                AttendanceEvent.session_id == ctx.session.id,
                AttendanceEvent.event_uuid.in_(uuids),
            )
        )
        ids = {event_uuid: event_id for event_uuid, event_id in rows}
        for event_uuid, row in ctx.linked:
            row.event_id = ids.get(event_uuid)
    await db.flush()
