"""Presence checks in the record store: triggered now or scheduled at random times, announced
when due, and their pass rates. Judging an answer is ``attendance.presence.judge``; answers
arrive as events (``attendance.ingest``)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance import presence
from attendance.clock import as_utc
from attendance.errors import Conflict, InvalidInput, NotFound
from attendance.journal import record_admin_event
from attendance.models import PresenceCheck, PresenceResponse, SessionState, StudySession


def _window(window_s: int) -> timedelta:
    if not presence.MIN_WINDOW_S <= window_s <= presence.MAX_WINDOW_S:
        raise InvalidInput(
            f"window_s: must be between {presence.MIN_WINDOW_S} and {presence.MAX_WINDOW_S}"
        )
    return timedelta(seconds=window_s)


async def _running_session(db: AsyncSession, session_id: int) -> StudySession:
    session = await db.get(StudySession, session_id)
    if session is None:
        raise NotFound(f"no study session {session_id}")
    if session.state == SessionState.ENDED:
        raise Conflict("the session has ended", code="session_ended")
    return session


async def trigger_check(
    db: AsyncSession,
    session_id: int,
    *,
    now: datetime,
    rng: random.Random,
    window_s: int = presence.DEFAULT_WINDOW_S,
    actor: str,
    user_id: int | None,
) -> PresenceCheck:
    """Open a presence check now. Refused while another check of the session is open."""
    window = _window(window_s)
    await _running_session(db, session_id)
    open_now = await db.scalar(
        select(PresenceCheck.id).where(
            PresenceCheck.session_id == session_id,
            PresenceCheck.opened_at <= now,
            PresenceCheck.closes_at > now,
        )
    )
    if open_now is not None:
        raise Conflict(f"presence check {open_now} is still open", code="check_open")
    check = PresenceCheck(
        session_id=session_id,
        code=presence.new_code(rng),
        opened_at=now,
        closes_at=now + window,
        created_by=user_id,
        announced_at=now,
    )
    db.add(check)
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="presence_check_opened",
        target=f"session:{session_id}",
        detail={"check_id": check.id, "window_s": window_s},
    )
    return check


async def schedule_checks(
    db: AsyncSession,
    session_id: int,
    *,
    count: int,
    within_s: int,
    now: datetime,
    rng: random.Random,
    window_s: int = presence.DEFAULT_WINDOW_S,
    actor: str,
    user_id: int | None,
) -> list[PresenceCheck]:
    """Schedule ``count`` checks at random times in the next ``within_s`` seconds."""
    if not 1 <= count <= presence.MAX_SCHEDULED:
        raise InvalidInput(f"count: must be between 1 and {presence.MAX_SCHEDULED}")
    if not 60 <= within_s <= 24 * 3600:
        raise InvalidInput("within_s: must be between 60 and 86400")
    window = _window(window_s)
    await _running_session(db, session_id)
    try:
        times = presence.schedule(rng, count, now, timedelta(seconds=within_s), window)
    except ValueError as exc:
        raise InvalidInput(f"count: {exc}") from exc
    checks = [
        PresenceCheck(
            session_id=session_id,
            code=presence.new_code(rng),
            opened_at=at,
            closes_at=at + window,
            created_by=user_id,
            announced_at=None,
        )
        for at in times
    ]
    db.add_all(checks)
    await db.flush()
    await record_admin_event(
        db,
        now=now,
        actor=actor,
        action="presence_checks_scheduled",
        target=f"session:{session_id}",
        detail={"check_ids": [c.id for c in checks], "window_s": window_s},
    )
    return checks


async def announce_due(db: AsyncSession, *, now: datetime) -> list[PresenceCheck]:
    """Scheduled checks whose time has come (in sessions still running): mark them announced.
    A check whose session ended before its time is dropped from the schedule."""
    due = list(
        await db.scalars(
            select(PresenceCheck).where(
                PresenceCheck.announced_at.is_(None), PresenceCheck.opened_at <= now
            )
        )
    )
    announced = []
    for check in due:
        session = await db.get(StudySession, check.session_id)
        if session is None or session.state == SessionState.ENDED:
            continue
        check.announced_at = now
        announced.append(check)
    return announced


def describe_check(check: PresenceCheck, now: datetime, *, with_code: bool) -> dict[str, Any]:
    opened = as_utc(check.opened_at)
    closes = as_utc(check.closes_at)
    if check.announced_at is None:
        state = "scheduled"
    elif now < closes:
        state = "open"
    else:
        state = "closed"
    body: dict[str, Any] = {
        "id": check.id,
        "state": state,
        "opened_at": opened.isoformat(),
        "closes_at": closes.isoformat(),
        "window_s": round((closes - opened).total_seconds()),
    }
    if with_code and state != "scheduled":
        body["code"] = check.code
    return body


async def list_checks(db: AsyncSession, session_id: int, *, now: datetime) -> list[dict[str, Any]]:
    """The session's checks, with answers counted by outcome (organiser view)."""
    checks = list(
        await db.scalars(
            select(PresenceCheck)
            .where(PresenceCheck.session_id == session_id)
            .order_by(PresenceCheck.opened_at)
        )
    )
    counts: dict[int, dict[str, int]] = {c.id: {} for c in checks}
    if checks:
        rows = await db.execute(
            select(
                PresenceResponse.check_id,
                PresenceResponse.outcome,
                func.count(func.distinct(PresenceResponse.member_id)),
            )
            .where(PresenceResponse.check_id.in_(list(counts)))
            .group_by(PresenceResponse.check_id, PresenceResponse.outcome)
        )
        for check_id, outcome, n in rows:
            counts[check_id][outcome] = int(n)
    return [{**describe_check(c, now, with_code=True), "answers": counts[c.id]} for c in checks]


async def current_check(
    db: AsyncSession, session_id: int, *, now: datetime
) -> PresenceCheck | None:
    """The most recent announced check of the session (open, or the last one closed)."""
    check: PresenceCheck | None = await db.scalar(
        select(PresenceCheck)
        .where(
            PresenceCheck.session_id == session_id,
            PresenceCheck.announced_at.is_not(None),
            PresenceCheck.opened_at <= now,
        )
        .order_by(PresenceCheck.opened_at.desc(), PresenceCheck.id.desc())
        .limit(1)
    )
    return check
