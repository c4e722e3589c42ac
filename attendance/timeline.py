"""A session's timeline for a chart: members watching, venue screens connected and check-ins
over time, with markers for broadcast state changes, quiz questions and presence checks.

The bucketing is pure (``bucket_step``, ``overlap_counts``, ``cumulative_counts``); only
``session_timeline`` reads the store. A bucket ``i`` is the half-open span
``[start + i*step, start + (i+1)*step)``:
- ``viewers``: members with a *counted* attendance span (``intervals.attend``: remote or on-site,
  live time only) overlapping the bucket;
- ``screens``: venues whose screen had media overlapping the bucket (live or not);
- ``checkins``: distinct members with an accepted check-in before the bucket's end.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.clock import as_utc
from attendance.evaluation import session_attendance
from attendance.intervals import Span
from attendance.models import AttendanceEvent, PresenceCheck, QuizQuestion
from attendance.sessions import get_session

MAX_POINTS = 300
# Bucket sizes a reader can take in at a glance, smallest first.
NICE_STEPS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 240, 360, 720, 1440)
MARKER_ORDER = (
    "live",
    "paused",
    "ended",
    "quiz_opened",
    "quiz_closed",
    "presence_opened",
    "presence_closed",
)


# --- pure bucketing ---------------------------------------------------------------------------


def bucket_step(start: datetime, end: datetime, *, max_points: int = MAX_POINTS) -> timedelta:
    """One minute, or the smallest nice step that keeps ``[start, end)`` within ``max_points``
    buckets (a whole number of days beyond the nice steps)."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    minutes = max(0.0, (end - start).total_seconds() / 60)
    for step in NICE_STEPS_MIN:
        if math.ceil(minutes / step) <= max_points:
            return timedelta(minutes=step)
    days = math.ceil(minutes / 1440 / max_points)
    return timedelta(days=days)


def bucket_count(start: datetime, end: datetime, step: timedelta) -> int:
    """How many buckets of ``step`` cover ``[start, end)``: at least one."""
    return max(1, math.ceil((end - start) / step))


def overlap_counts(
    spans_by_key: Iterable[Sequence[Span]], *, start: datetime, step: timedelta, count: int
) -> list[int]:
    """For each bucket, how many keys (members, venues) have a non-empty span overlapping it;
    a key's overlapping or repeated spans count once per bucket."""
    totals = [0] * count
    for spans in spans_by_key:
        hit = [False] * count
        for span in spans:
            if span.end <= span.start:
                continue
            # Buckets i with b_i < span.end and b_i + step > span.start.
            first = max(0, math.floor((span.start - start) / step))
            last = min(count - 1, math.ceil((span.end - start) / step) - 1)
            for i in range(first, last + 1):
                hit[i] = True
        for i, was in enumerate(hit):
            totals[i] += was
    return totals


def cumulative_counts(
    times: Iterable[datetime], *, start: datetime, step: timedelta, count: int
) -> list[int]:
    """For each bucket, how many of ``times`` fall before its end (earlier ones included)."""
    ordered = sorted(times)
    return [bisect_left(ordered, start + (i + 1) * step) for i in range(count)]


def floor_minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


# --- the session's timeline -------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    """A moment to mark on the chart: ``kind`` is one of ``MARKER_ORDER``; ``ref`` says which
    question (its position) or presence check (its id); ``label`` is the question's prompt."""

    at: datetime
    kind: str
    ref: int | None = None
    label: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "kind": self.kind, "ref": self.ref, "label": self.label}


@dataclass(frozen=True)
class Timeline:
    session_id: int
    title: str
    state: str
    start: datetime
    end: datetime
    step: timedelta
    viewers: list[int]
    screens: list[int]
    checkins: list[int]
    markers: list[Marker]
    generated_at: datetime

    @property
    def times(self) -> list[datetime]:
        """Each bucket's start."""
        return [self.start + i * self.step for i in range(len(self.viewers))]

    def as_json(self) -> dict[str, Any]:
        return {
            "session": {"id": self.session_id, "title": self.title, "state": self.state},
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "step_s": int(self.step.total_seconds()),
            "times": [t.isoformat() for t in self.times],
            "series": {
                "viewers": self.viewers,
                "screens": self.screens,
                "checkins": self.checkins,
            },
            "markers": [m.as_json() for m in self.markers],
            "generated_at": self.generated_at.isoformat(),
        }


def sort_markers(markers: Iterable[Marker]) -> list[Marker]:
    return sorted(markers, key=lambda m: (m.at, MARKER_ORDER.index(m.kind), m.ref or 0))


async def session_timeline(
    db: AsyncSession, session_id: int, *, now: datetime, max_points: int = MAX_POINTS
) -> Timeline:
    """The session's chart from its start (the first broadcast change, else its recorded or
    scheduled start) to its end (or ``now`` while it runs), in at most ``max_points`` buckets."""
    session = await get_session(db, session_id)
    until = as_utc(session.ended_at) if session.ended_at else now

    markers: list[Marker] = []
    screens: dict[int, list[Span]] = defaultdict(list)
    first_checkin: dict[int, datetime] = {}
    p = AttendanceEvent.payload
    query = (
        select(
            AttendanceEvent.kind,
            AttendanceEvent.member_id,
            AttendanceEvent.venue_id,
            AttendanceEvent.server_time,
            p["status"].as_string(),
            p["from"].as_string(),
            p["to"].as_string(),
            p["at"].as_string(),
            p["state"].as_string(),
        )
        .where(
            AttendanceEvent.session_id == session_id,
            AttendanceEvent.pruned_at.is_(None),
            AttendanceEvent.kind.in_(("broadcast", "media", "check_in")),
        )
        .order_by(AttendanceEvent.id)
    )
    for kind, member_id, venue_id, server_time, status, start, end, at, state in await db.execute(
        query
    ):
        if kind == "broadcast":
            if state in MARKER_ORDER[:3]:
                markers.append(Marker(_time(at), str(state)))
        elif kind == "media":
            if member_id is None and venue_id is not None:
                screens[venue_id].append(Span(_time(start), _time(end)))
        elif member_id is not None and status == "accepted":
            when = as_utc(server_time)
            if member_id not in first_checkin or when < first_checkin[member_id]:
                first_checkin[member_id] = when

    for q in await db.scalars(
        select(QuizQuestion).where(
            QuizQuestion.session_id == session_id, QuizQuestion.opened_at.is_not(None)
        )
    ):
        assert q.opened_at is not None
        markers.append(Marker(as_utc(q.opened_at), "quiz_opened", q.position, q.prompt))
        closed = q.closed_at or q.closes_at
        if closed is not None and as_utc(closed) <= until:
            markers.append(Marker(as_utc(closed), "quiz_closed", q.position, q.prompt))
    for c in await db.scalars(
        select(PresenceCheck).where(
            PresenceCheck.session_id == session_id, PresenceCheck.announced_at.is_not(None)
        )
    ):
        markers.append(Marker(as_utc(c.opened_at), "presence_opened", c.id))
        if as_utc(c.closes_at) <= until:
            markers.append(Marker(as_utc(c.closes_at), "presence_closed", c.id))

    changes = [m.at for m in markers if m.kind in ("live", "paused", "ended")]
    if changes:
        begin = min(changes)
    elif session.started_at:
        begin = as_utc(session.started_at)
    else:
        begin = as_utc(session.scheduled_start)
    begin = floor_minute(min(begin, until))
    step = bucket_step(begin, until, max_points=max_points)
    count = bucket_count(begin, until, step)

    members = await session_attendance(db, session_id, now=now)
    return Timeline(
        session_id=session.id,
        title=session.title,
        state=session.state.value,
        start=begin,
        end=until,
        step=step,
        viewers=overlap_counts(
            (m.attendance.spans for m in members), start=begin, step=step, count=count
        ),
        screens=overlap_counts(screens.values(), start=begin, step=step, count=count),
        checkins=cumulative_counts(first_checkin.values(), start=begin, step=step, count=count),
        markers=sort_markers(markers),
        generated_at=now,
    )


def _time(raw: Any) -> datetime:
    return as_utc(datetime.fromisoformat(str(raw)))
