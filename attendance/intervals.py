"""Attendance intervals, pure: which seconds of a live session count as a member's watched time.

All times are aware UTC and every span is half-open ``[start, end)``; overlapping or touching
evidence is merged first, so nothing is ever counted twice (reconnects, second tabs, retries).
- Remote: media delivered to the member's own WHEP connection *and* covered by a page-visible
  heartbeat (a visible beat covers ``cover`` after it; a hidden beat cuts coverage at once).
- On-site: checked in at a venue (the latest check-in wins; a check-out ends it) *and* that
  venue's screen is connected.
- Only live broadcast time counts: nothing while paused, nothing after the first "ended".
- A member present when a presence check opens who does not pass it is suspended from the
  check's opening (once its window has closed) until their next confirmation, never retroactively.
Nothing here reads a clock: callers pass ``until`` (now, or the session's end).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain
from operator import itemgetter

DEFAULT_HEARTBEAT_S = 15
# One heartbeat interval plus 5 s of tolerance for network and timer jitter.
DEFAULT_COVER = timedelta(seconds=DEFAULT_HEARTBEAT_S + 5)

BROADCAST_STATES = frozenset({"live", "paused", "ended"})

_Pair = tuple[datetime, datetime]
_ZERO = timedelta()


@dataclass(frozen=True, order=True, slots=True)
class Span:
    """A half-open time span ``[start, end)``; an empty span (start == end) is allowed."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"span ends before it starts: {self.start} > {self.end}")

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


# Internally spans are plain (start, end) tuples: cheaper to build and sort than dataclasses.


def _pairs(spans: Iterable[Span]) -> list[_Pair]:
    return [(s.start, s.end) for s in spans]


def _spans(pairs: Iterable[_Pair]) -> list[Span]:
    return [Span(start, end) for start, end in pairs]


def _merged(pairs: Iterable[_Pair]) -> list[_Pair]:
    """Sorted, with overlapping or touching pairs joined and empty (or inverted) pairs dropped."""
    out: list[_Pair] = []
    for start, end in sorted(pairs):
        if end <= start:
            continue
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _intersect(a: list[_Pair], b: list[_Pair]) -> list[_Pair]:
    """Intersection of two merged lists; the result is merged too (the inputs have real gaps)."""
    out: list[_Pair] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def _subtract(a: list[_Pair], b: list[_Pair]) -> list[_Pair]:
    """Parts of merged ``a`` outside merged ``b``; the result is merged."""
    out: list[_Pair] = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        cursor = start
        k = j
        while k < len(b) and b[k][0] < end and cursor < end:
            if b[k][0] > cursor:
                out.append((cursor, b[k][0]))
            cursor = max(cursor, b[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def _ending_by(pairs: list[_Pair], until: datetime) -> list[_Pair]:
    """Merged pairs cut off at ``until``."""
    return [(start, min(end, until)) for start, end in pairs if start < until]


def _length(pairs: Iterable[_Pair]) -> timedelta:
    return sum((end - start for start, end in pairs), _ZERO)


def _covers(pairs: list[_Pair], at: datetime) -> bool:
    """Whether ``at`` lies inside one of the merged pairs."""
    i = bisect_right(pairs, at, key=itemgetter(0)) - 1
    return i >= 0 and at < pairs[i][1]


def merge(spans: Iterable[Span]) -> list[Span]:
    """Sorted spans with overlapping or touching ones joined and empty ones dropped."""
    return _spans(_merged(_pairs(spans)))


def intersect(a: Iterable[Span], b: Iterable[Span]) -> list[Span]:
    """The time covered by both ``a`` and ``b``, merged; inputs in any order, may overlap."""
    return _spans(_intersect(_merged(_pairs(a)), _merged(_pairs(b))))


def subtract(a: Iterable[Span], b: Iterable[Span]) -> list[Span]:
    """The time covered by ``a`` but not by ``b``, merged."""
    return _spans(_subtract(_merged(_pairs(a)), _merged(_pairs(b))))


def total_seconds(spans: Iterable[Span]) -> float:
    """Seconds covered by the spans, each instant counted once however often it is covered."""
    return _length(_merged(_pairs(spans))).total_seconds()


def clip(spans: Iterable[Span], start: datetime, end: datetime) -> list[Span]:
    """The merged spans cut to ``[start, end)``; nothing when ``end <= start``."""
    if end <= start:
        return []
    return _spans(_intersect(_merged(_pairs(spans)), [(start, end)]))


def _live(changes: Iterable[tuple[datetime, str]], until: datetime) -> list[_Pair]:
    # A stable sort: at equal times the caller's order (e.g. the journal's) decides the state.
    ordered = sorted(changes, key=itemgetter(0))
    for _, state in ordered:
        if state not in BROADCAST_STATES:
            raise ValueError(f"unknown broadcast state {state!r}")
    pairs: list[_Pair] = []
    since: datetime | None = None
    for at, state in ordered:
        if state == "live":
            if since is None:
                since = at
            continue
        if since is not None:
            pairs.append((since, at))
            since = None
        if state == "ended":
            break
    if since is not None:
        pairs.append((since, until))
    return _ending_by(_merged(pairs), until)


def live_spans(changes: Iterable[tuple[datetime, str]], until: datetime) -> list[Span]:
    """When the broadcast was live, from ``(at, state)`` changes in any order, up to ``until``.

    Live from a "live" until the next "paused" or "ended"; nothing counts after the first
    "ended". Changes at equal times apply in the order given (the sort is stable).
    """
    return _spans(_live(changes, until))


def _heartbeats(beats: Iterable[tuple[datetime, bool]], cover: timedelta) -> list[_Pair]:
    if cover < _ZERO:
        raise ValueError(f"heartbeat cover must not be negative, got {cover}")
    pairs: list[_Pair] = []
    start: datetime | None = None
    end = datetime.min  # meaningful only while start is set
    # Sorting (time, visible) puts a hidden beat before a visible one at the same instant:
    # the hidden beat cuts coverage there, then the visible one starts it again.
    for at, visible in sorted(set(beats)):
        if not visible:
            if start is not None:
                pairs.append((start, min(end, at)))
                start = None
        elif start is not None and at <= end:
            end = max(end, at + cover)
        else:
            if start is not None:
                pairs.append((start, end))
            start, end = at, at + cover
    if start is not None:
        pairs.append((start, end))
    return _merged(pairs)


def heartbeat_spans(beats: Iterable[tuple[datetime, bool]], cover: timedelta) -> list[Span]:
    """Time covered by page-visible heartbeats ``(at, visible)``, in any order, duplicates allowed.

    A visible beat at ``t`` covers ``[t, t + cover)``; a hidden beat at ``t`` ends all coverage at
    ``t``. At equal times the hidden beat applies first, so a visible beat at the same instant
    starts coverage again from ``t``.
    """
    return _spans(_heartbeats(beats, cover))


def _checkin_order(checkin: tuple[datetime, int | None]) -> tuple[datetime, bool, int]:
    at, venue = checkin
    return (at, venue is not None, venue if venue is not None else 0)


def _stints(
    checkins: Iterable[tuple[datetime, int | None]], until: datetime
) -> dict[int, list[_Pair]]:
    # At equal times a check-out sorts first, then check-ins by venue id; the last one holds.
    ordered = sorted(set(checkins), key=_checkin_order)
    raw: dict[int, list[_Pair]] = {}
    for index, (at, venue) in enumerate(ordered):
        if venue is None:
            continue
        end = ordered[index + 1][0] if index + 1 < len(ordered) else until
        raw.setdefault(venue, []).append((at, min(end, until)))
    stints: dict[int, list[_Pair]] = {}
    for venue in sorted(raw):
        merged = _merged(raw[venue])
        if merged:
            stints[venue] = merged
    return stints


def stint_spans(
    checkins: Iterable[tuple[datetime, int | None]], until: datetime
) -> dict[int, list[Span]]:
    """Per venue, when the member was checked in there, from ``(at, venue_id or None)`` events.

    A check-in lasts until the member's next check-in or check-out (or ``until``), so switching
    venue ends the first stint; checking in again at the same venue continues it. Any order;
    exact duplicates are ignored. At equal times a check-out applies first, then check-ins by
    ascending venue id, so the highest venue id holds. Venues with no time are left out.
    """
    return {venue: _spans(pairs) for venue, pairs in _stints(checkins, until).items()}


def _suspensions(
    missed: Iterable[datetime], confirmations: Iterable[datetime], until: datetime
) -> list[_Pair]:
    confirmed = sorted(confirmations)
    pairs: list[_Pair] = []
    for opened in missed:
        i = bisect_right(confirmed, opened)
        end = confirmed[i] if i < len(confirmed) else until
        pairs.append((opened, min(end, until)))
    return _merged(pairs)


def suspension_spans(
    missed: Iterable[datetime], confirmations: Iterable[datetime], until: datetime
) -> list[Span]:
    """When accrual is suspended: from each missed check's opening ``m`` until the first
    confirmation strictly after ``m``, else until ``until``."""
    return _spans(_suspensions(missed, confirmations, until))


@dataclass(frozen=True)
class MemberEvidence:
    """What the server itself observed about one member during one session."""

    delivered: Sequence[Span] = ()  # media delivered to the member's own WHEP connections
    beats: Sequence[tuple[datetime, bool]] = ()  # page heartbeats (time, visible)
    checkins: Sequence[tuple[datetime, int | None]] = ()  # venue check-ins / check-outs (None)
    passed_checks: frozenset[int] = frozenset()  # presence checks answered correctly in time
    confirmations: Sequence[datetime] = ()  # times of passed answers and late confirmations


@dataclass(frozen=True)
class PresenceWindow:
    """A presence check, open for answers over ``[opened_at, closes_at)``."""

    check_id: int
    opened_at: datetime
    closes_at: datetime


@dataclass(frozen=True)
class MemberAttendance:
    """One member's attendance in one session, as reports show it."""

    first_join: datetime | None  # start of the first present span (before live/suspension)
    last_leave: datetime | None  # end of the last present span
    watched_s: float  # counted seconds
    live_s: float  # live seconds of the session up to `until`
    share: float  # watched_s / live_s; 0.0 when nothing was live
    venue_id: int | None  # main venue when on-site time >= remote time and > 0
    onsite_s: float
    remote_s: float  # watched_s - onsite_s
    presence_passed: int
    presence_total: int  # checks this member was challenged by
    spans: tuple[Span, ...]  # the counted spans


def attend(
    evidence: MemberEvidence,
    *,
    live: Sequence[Span],
    screens: Mapping[int, Sequence[Span]],
    checks: Sequence[PresenceWindow],
    cover: timedelta,
    until: datetime,
) -> MemberAttendance:
    """Count one member's watched time up to ``until`` from the server's own evidence.

    Present = remote (delivered ∩ visible heartbeats) ∪ on-site (stint ∩ that venue's screen).
    A check challenges the member if it opened while they were present or if they passed it;
    an unpassed challenge whose window has closed by ``until`` is missed and suspends accrual.
    Counted = present ∩ live − suspensions.
    """
    remote = _intersect(_merged(_pairs(evidence.delivered)), _heartbeats(evidence.beats, cover))
    onsite_by_venue: dict[int, list[_Pair]] = {}
    for venue, stint in _stints(evidence.checkins, until).items():
        onsite_by_venue[venue] = _intersect(stint, _merged(_pairs(screens.get(venue, ()))))
    onsite = _merged(chain.from_iterable(onsite_by_venue.values()))
    present = _ending_by(_merged(chain(remote, onsite)), until)

    passed = evidence.passed_checks
    challenged = [c for c in checks if c.check_id in passed or _covers(present, c.opened_at)]
    # A check still open at `until` is not missed yet: the member may still answer in time.
    missed = [c.opened_at for c in challenged if c.check_id not in passed and c.closes_at <= until]
    suspended = _suspensions(missed, evidence.confirmations, until)
    live_pairs = _ending_by(_merged(_pairs(live)), until)
    counted = _subtract(_intersect(present, live_pairs), suspended)

    watched = _length(counted)
    # Stints never overlap, so the venues' on-site times add up without double counting.
    by_venue = {v: _length(_intersect(counted, pairs)) for v, pairs in onsite_by_venue.items()}
    onsite_time = sum(by_venue.values(), _ZERO)
    remote_time = watched - onsite_time
    venue_id: int | None = None
    if onsite_time > _ZERO and onsite_time >= remote_time:
        # The venue with the most counted time; the lowest id on a tie.
        venue_id = max(by_venue, key=lambda v: (by_venue[v], -v))

    watched_s = watched.total_seconds()
    live_s = _length(live_pairs).total_seconds()
    return MemberAttendance(
        first_join=present[0][0] if present else None,
        last_leave=present[-1][1] if present else None,
        watched_s=watched_s,
        live_s=live_s,
        share=min(1.0, watched_s / live_s) if live_s > 0 else 0.0,
        venue_id=venue_id,
        onsite_s=onsite_time.total_seconds(),
        remote_s=remote_time.total_seconds(),
        presence_passed=sum(1 for c in challenged if c.check_id in passed),
        presence_total=len(challenged),
        spans=tuple(_spans(counted)),
    )
