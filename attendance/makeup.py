"""Make-up attendance: a member who missed the live session watches its recording afterwards.

The member's player reports what it played as ``makeup_progress`` events (a segment and a
half-open span ``[from_s, to_s)`` of that segment's media). Pure core:
- each span is placed on the session's recorded timeline (segment offset + media position),
  cut to its segment's media, and counted only while the page was visible and the rate was at
  most ``MAX_RATE``;
- the spans are merged, so a media second re-watched, or reported twice, counts once; the total
  never exceeds the recording's duration (deleted segments are not part of it);
- make-up share = make-up seconds / recorded seconds; make-up counts as qualified when that
  share meets the session rule's ``min_share``.

Presence checks are placed on the same timeline. When the session's rule asks for it
(``makeup_presence``), make-up viewing must pass them too: the player stops where a check opened
and shows the member a code of their own (``makeup_code``, an HMAC of session, check and member,
so it cannot be shared), which the member answers with a ``makeup_presence_answer`` event. A
check counts as passed when it was answered right *and* the media where it opened was watched;
the checks in the recording are the ones given, and the live rule's ``min_presence_share`` and
``min_presence_passed`` apply to them.

The ``async`` functions at the end load the events and segments from the store.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.clock import as_utc
from attendance.models import AttendanceEvent, PresenceCheck, Recording, StudySession
from attendance.rules import Verdict, presence_needed
from attendance.sessions import AttendanceRule

KIND = "makeup_progress"
ANSWER_KIND = "makeup_presence_answer"
# Wrong codes allowed per check before it is failed, as for live checks.
MAX_WRONG_TRIES = 3
_CODE_DIGITS = 4
# Watching at more than double speed does not count as watching.
MAX_RATE = 2.0
# One report covers at most this much media: players report every 10-15 s, and on pause/seek.
MAX_SPAN_S = 60.0
# A player's last position may pass the catalogued duration by a frame or a rounded second.
END_SLACK_S = 1.0
# Shares are compared after rounding to 0.1%, as the live rule does.
_SHARE_DIGITS = 3

_Pair = tuple[float, float]


@dataclass(frozen=True, slots=True)
class Segment:
    """A recorded segment on the session's timeline: ``offset_s`` after the first kept
    segment's start, ``duration_s`` of media."""

    index: int
    offset_s: float
    duration_s: float
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Progress:
    """One accepted ``makeup_progress`` report: media ``[from_s, to_s)`` of ``segment``."""

    segment: int
    from_s: float
    to_s: float
    visible: bool = True
    rate: float = 1.0


@dataclass(frozen=True, slots=True)
class TimelineCheck:
    """A presence check placed on the recorded timeline (its opening, ``at_s``)."""

    check_id: int
    at_s: float


@dataclass(frozen=True)
class MakeupAttendance:
    """One member's make-up viewing of one session's recording."""

    seconds: float  # distinct visible media seconds watched, on the recorded timeline
    recorded_s: float  # the recording's duration (kept segments)
    share: float  # seconds / recorded_s; 0.0 without a recording
    spans: tuple[_Pair, ...]  # the counted spans on the recorded timeline, merged
    checks_in_view: tuple[int, ...] = ()  # presence checks whose opening was watched
    checks_total: int = 0  # presence checks whose opening is in the recording
    checks_passed: tuple[int, ...] = ()  # answered right and watched where they opened

    @property
    def minutes(self) -> float:
        return round(self.seconds / 60, 1)


NOTHING = MakeupAttendance(seconds=0.0, recorded_s=0.0, share=0.0, spans=())


def makeup_code(secret: str, session_id: int, check_id: int, member_id: int) -> str:
    """The code one member answers for one presence check during make-up viewing: four digits,
    no leading zero, different for every member (so one member cannot pass it on to another)."""
    message = f"makeup:{session_id}:{check_id}:{member_id}".encode()
    number = int.from_bytes(hmac.new(secret.encode(), message, hashlib.sha256).digest()[:8], "big")
    low = 10 ** (_CODE_DIGITS - 1)
    return str(low + number % (10**_CODE_DIGITS - low))


def checks_in_recording(
    checks: Iterable[TimelineCheck], segments: Sequence[Segment]
) -> list[TimelineCheck]:
    """The checks whose opening falls in the media of a kept segment, in timeline order."""
    kept = [s for s in segments if not s.deleted]
    return sorted(
        (c for c in checks if any(s.offset_s <= c.at_s < s.offset_s + s.duration_s for s in kept)),
        key=lambda c: c.at_s,
    )


def makeup_answer_outcome(
    *, expected: str, given: str, earlier_outcomes: Sequence[str]
) -> tuple[str, str]:
    """Judge one make-up answer to a check: ``(outcome, message)`` where the outcome is one of
    ``passed``, ``replay`` (passed before), ``too_many`` (3 wrong tries) or ``wrong_code``."""
    if "passed" in earlier_outcomes:
        return "replay", "this presence check was already passed"
    if sum(1 for o in earlier_outcomes if o == "wrong_code") >= MAX_WRONG_TRIES:
        return "too_many", f"{MAX_WRONG_TRIES} wrong codes: this presence check is failed"
    if not hmac.compare_digest(expected, given.strip()):
        return "wrong_code", "the code is not right"
    return "passed", "presence confirmed"


def progress_problem(
    segment: Segment | None, *, from_s: float, to_s: float, rate: float
) -> tuple[str, str] | None:
    """Why a progress report cannot count, as ``(code, reason)``; None when it can."""
    if segment is None:
        return "no_segment", "the recording has no such segment"
    if segment.deleted:
        return "segment_deleted", f"segment {segment.index} of the recording was deleted"
    if rate > MAX_RATE:
        return "too_fast", f"played at {rate:g}x: more than {MAX_RATE:g}x does not count"
    if not from_s < to_s:
        return "out_of_range", f"from_s ({from_s:g}) must be before to_s ({to_s:g})"
    if to_s > segment.duration_s + END_SLACK_S:
        return "out_of_range", (
            f"to_s ({to_s:g}) is past the end of segment {segment.index} ({segment.duration_s:g} s)"
        )
    if to_s - from_s > MAX_SPAN_S:
        return "out_of_range", f"one report covers at most {MAX_SPAN_S:g} s of media"
    return None


def _merged(pairs: Iterable[_Pair]) -> list[_Pair]:
    out: list[_Pair] = []
    for start, end in sorted(pairs):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def makeup_attendance(
    progress: Iterable[Progress],
    segments: Sequence[Segment],
    *,
    checks: Sequence[TimelineCheck] = (),
    answered: Collection[int] = (),
) -> MakeupAttendance:
    """Count one member's make-up viewing; see the module docstring. ``answered`` names the
    checks the member answered right."""
    kept = {s.index: s for s in segments if not s.deleted}
    recorded = _merged((s.offset_s, s.offset_s + s.duration_s) for s in kept.values())
    recorded_s = sum(end - start for start, end in recorded)
    pairs: list[_Pair] = []
    for p in progress:
        segment = kept.get(p.segment)
        if segment is None or not p.visible or p.rate > MAX_RATE:
            continue
        start = max(0.0, p.from_s)
        end = min(segment.duration_s, p.to_s)
        if start < end:
            pairs.append((segment.offset_s + start, segment.offset_s + end))
    spans = _merged(pairs)
    seconds = min(recorded_s, sum(end - start for start, end in spans))
    in_view = tuple(
        c.check_id for c in checks if any(start <= c.at_s < end for start, end in spans)
    )
    given = checks_in_recording(checks, segments)
    return MakeupAttendance(
        seconds=seconds,
        recorded_s=recorded_s,
        share=min(1.0, seconds / recorded_s) if recorded_s > 0 else 0.0,
        spans=tuple(spans),
        checks_in_view=in_view,
        checks_total=len(given),
        checks_passed=tuple(
            c.check_id for c in given if c.check_id in answered and c.check_id in in_view
        ),
    )


def makeup_verdict(rule: AttendanceRule, makeup: MakeupAttendance) -> Verdict:
    """Make-up viewing qualifies when its share of the recording meets the rule's
    ``min_share`` and, where the rule asks for it (``makeup_presence``), when enough of the
    recording's presence checks were passed, by the live rule's presence thresholds."""
    if makeup.seconds <= 0:
        return Verdict(False, "no make-up viewing")
    watched = f"watched {makeup.share:.0%} of the recording"
    if round(makeup.share, _SHARE_DIGITS) < round(rule.min_share, _SHARE_DIGITS):
        return Verdict(False, f"{watched} (needs {rule.min_share:.0%})")
    if not rule.makeup_presence or makeup.checks_total == 0:
        return Verdict(True, watched)
    passed, total = len(makeup.checks_passed), makeup.checks_total
    checks = f"passed {passed} of {total} presence checks"
    needed = presence_needed(rule, total)
    if passed < needed:
        return Verdict(False, f"{watched}; {checks} (needs {needed})")
    return Verdict(True, f"{watched}; {checks}")


# --- the store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MakeupFigures:
    """A member's make-up attendance with the session rule applied, as reports show it."""

    attendance: MakeupAttendance
    verdict: Verdict

    @property
    def minutes(self) -> float:
        return self.attendance.minutes

    @property
    def share(self) -> float:
        return self.attendance.share

    @property
    def qualified(self) -> bool:
        return self.verdict.qualified


NO_MAKEUP = MakeupFigures(NOTHING, Verdict(False, "no make-up viewing"))


def _timeline(rows: Sequence[Recording]) -> tuple[list[Segment], datetime | None]:
    """The segments placed as the recordings catalogue places them: from the first kept
    segment's start (gaps between broadcaster connections stay gaps)."""
    kept = [r for r in rows if r.deleted_at is None]
    if not kept:
        return [Segment(r.segment_index, 0.0, 0.0, deleted=True) for r in rows], None
    origin = as_utc(min(kept, key=lambda r: r.segment_index).started_at)
    segments = []
    for r in rows:
        started = as_utc(r.started_at)
        if r.duration_s is not None:
            duration = float(r.duration_s)
        elif r.ended_at is not None:
            duration = (as_utc(r.ended_at) - started).total_seconds()
        else:
            duration = 0.0  # still being written: nothing to watch yet
        segments.append(
            Segment(
                index=r.segment_index,
                offset_s=round((started - origin).total_seconds(), 3),
                duration_s=max(0.0, duration),
                deleted=r.deleted_at is not None,
            )
        )
    return segments, origin


async def recorded_timeline(
    db: AsyncSession, session_id: int
) -> tuple[list[Segment], list[TimelineCheck]]:
    """The session's segments (deleted ones included, marked, in index order) and its presence
    checks placed on the same timeline (none without a kept segment)."""
    rows = list(
        await db.scalars(
            select(Recording)
            .where(Recording.session_id == session_id)
            .order_by(Recording.segment_index)
        )
    )
    segments, origin = _timeline(rows)
    checks: list[TimelineCheck] = []
    if origin is not None:
        for check_id, opened_at in await db.execute(
            select(PresenceCheck.id, PresenceCheck.opened_at).where(
                PresenceCheck.session_id == session_id
            )
        ):
            checks.append(TimelineCheck(check_id, (as_utc(opened_at) - origin).total_seconds()))
    return segments, checks


async def recorded_segments(db: AsyncSession, session_id: int) -> list[Segment]:
    """The session's segments, deleted ones included (marked), in index order."""
    rows = await db.scalars(
        select(Recording)
        .where(Recording.session_id == session_id)
        .order_by(Recording.segment_index)
    )
    return _timeline(list(rows))[0]


def _progress(payload: dict[str, Any]) -> Progress | None:
    try:
        return Progress(
            segment=int(payload["segment"]),
            from_s=float(payload["from_s"]),
            to_s=float(payload["to_s"]),
            visible=bool(payload["visible"]),
            rate=float(payload["rate"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


async def session_makeup(
    db: AsyncSession, session_id: int, *, member_ids: Iterable[int] | None = None
) -> dict[int, MakeupFigures]:
    """Per member who watched the recording: make-up figures with the session rule applied.
    Members without accepted make-up viewing are left out (``NO_MAKEUP``)."""
    query = select(AttendanceEvent.member_id, AttendanceEvent.payload).where(
        AttendanceEvent.session_id == session_id,
        AttendanceEvent.kind == KIND,
        AttendanceEvent.member_id.is_not(None),
    )
    if member_ids is not None:
        query = query.where(AttendanceEvent.member_id.in_(list(member_ids)))
    watched: dict[int, list[Progress]] = {}
    for member_id, payload in await db.execute(query):
        if not payload or payload.get("status") != "accepted":
            continue
        one = _progress(payload)
        if one is not None:
            watched.setdefault(member_id, []).append(one)
    if not watched:
        return {}
    answered: dict[int, set[int]] = {}
    answers = select(AttendanceEvent.member_id, AttendanceEvent.payload).where(
        AttendanceEvent.session_id == session_id,
        AttendanceEvent.kind == ANSWER_KIND,
        AttendanceEvent.member_id.in_(list(watched)),
    )
    for member_id, payload in await db.execute(answers):
        check = (payload or {}).get("check")
        if payload and payload.get("status") == "accepted" and isinstance(check, int):
            answered.setdefault(member_id, set()).add(check)
    segments, checks = await recorded_timeline(db, session_id)
    raw_rule = await db.scalar(
        select(StudySession.attendance_rule).where(StudySession.id == session_id)
    )
    rule = AttendanceRule.model_validate(raw_rule or {})
    figures: dict[int, MakeupFigures] = {}
    for member_id, progress in watched.items():
        makeup = makeup_attendance(
            progress, segments, checks=checks, answered=answered.get(member_id, ())
        )
        figures[member_id] = MakeupFigures(makeup, makeup_verdict(rule, makeup))
    return figures
