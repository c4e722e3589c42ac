"""Event ingestion: batches of client events judged, stored once, and applied.

Batches run in a write transaction with the attendance chain locked, so events are judged in
order against the state earlier events (of this batch, an earlier batch of the group, or before)
left; concurrent requests share one transaction (``ingest_batches``, fed by the server's group
commit) and a few queries load what all their events refer to. Every event that passes
validation is appended to the hash-chained log together with the server's judgement
(``payload["result"]``, see ``attendance.judging``); a retried event (same session and UUID) is
not stored again and gets the stored judgement back. Events that fail validation are not stored;
their error names the field. Derived state (current check-in, presence responses, quiz answers,
study notes) is written in the same transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.errors import InvalidInput
from attendance.events import (
    Batch,
    CheckIn,
    CheckOut,
    ClientEvent,
    PresenceAnswer,
    QuizAnswerEvent,
    event_id_of,
    parse_event,
)
from attendance.journal import NewAttendanceEvent, append_attendance_events, lock_attendance_chain
from attendance.judging import BatchReport, Context, Outcome, Refused, Sender, judge
from attendance.models import (
    AttendanceEvent,
    Member,
    PresenceCheck,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    SessionCheckin,
    SessionVenue,
    StudySession,
    Venue,
)

__all__ = [
    "BatchJob",
    "BatchReport",
    "Outcome",
    "Refused",
    "Sender",
    "ingest_batch",
    "ingest_batches",
]


# How long after a question closes an answer sent before the close may still arrive.
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
    contexts: dict[int, Context] = {}
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
        ctx = Context(session, jobs[0].sender, now, secret, {s: v for s, v in venue_rows})
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
            outcome, new = await judge(db, ctx, event, job.batch.sent_at)
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
    db: AsyncSession, ctx: Context, events: Sequence[tuple[Sender, ClientEvent]]
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


async def _link_events(db: AsyncSession, contexts: Sequence[Context]) -> None:
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
