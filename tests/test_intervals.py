"""Attendance intervals, pure: exact results on fixed times, and a stateful model of one member's
session checked step by step against a brute-force per-second oracle."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from attendance.intervals import (
    DEFAULT_COVER,
    DEFAULT_HEARTBEAT_S,
    MemberAttendance,
    MemberEvidence,
    PresenceWindow,
    Span,
    attend,
    clip,
    heartbeat_spans,
    intersect,
    live_spans,
    merge,
    stint_spans,
    subtract,
    suspension_spans,
    total_seconds,
)

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
COVER = timedelta(seconds=20)

E = TypeVar("E")


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def s(start: float, end: float) -> Span:
    return Span(t(start), t(end))


def shuffled(items: list[E], seed: int = 7) -> list[E]:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


# --- Span, merge, intersect, subtract, total_seconds, clip -------------------------------------


def test_constants() -> None:
    assert DEFAULT_HEARTBEAT_S == 15
    assert DEFAULT_COVER.total_seconds() == 20.0


def test_span_rejects_end_before_start_and_measures_seconds() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        s(1, 0)
    assert s(0, 0).seconds == 0.0
    assert Span(t(0), t(0) + timedelta(milliseconds=1500)).seconds == 1.5
    assert sorted([s(5, 6), s(0, 9), s(0, 3)]) == [s(0, 3), s(0, 9), s(5, 6)]


def test_merge_sorts_joins_overlapping_and_touching_and_drops_empty() -> None:
    assert merge([]) == []
    assert merge([s(5, 10), s(0, 3), s(3, 4), s(8, 12), s(20, 20), s(6, 7), s(30, 31)]) == [
        s(0, 4),
        s(5, 12),
        s(30, 31),
    ]
    assert merge([s(0, 10), s(2, 3), s(0, 10)]) == [s(0, 10)]
    assert merge([s(4, 4)]) == []


def test_intersect() -> None:
    assert intersect([s(0, 10), s(20, 30)], [s(5, 25)]) == [s(5, 10), s(20, 25)]
    assert intersect([s(0, 10)], [s(10, 20)]) == []  # touching is not overlapping
    assert intersect([s(0, 10)], []) == []
    # Inputs in any order, overlapping among themselves: merged first, result merged.
    assert intersect([s(5, 15), s(0, 8)], [s(14, 30), s(7, 9), s(8, 12)]) == [
        s(7, 12),
        s(14, 15),
    ]
    assert intersect([s(0, 5), s(5, 10)], [s(3, 7)]) == [s(3, 7)]


def test_subtract() -> None:
    assert subtract([s(0, 100)], [s(30, 40), s(10, 20)]) == [s(0, 10), s(20, 30), s(40, 100)]
    assert subtract([s(0, 10), s(20, 30)], [s(0, 5), s(8, 22), s(30, 40)]) == [s(5, 8), s(22, 30)]
    assert subtract([s(0, 10)], [s(-5, 15)]) == []
    assert subtract([s(10, 20), s(0, 12)], []) == [s(0, 20)]
    assert subtract([s(10, 20)], [s(0, 10), s(20, 30)]) == [s(10, 20)]  # touching removes nothing
    assert subtract([s(0, 10), s(20, 30)], [s(5, 25)]) == [s(0, 5), s(25, 30)]


def test_total_seconds_never_double_counts() -> None:
    assert total_seconds([]) == 0.0
    assert total_seconds([s(0, 10), s(5, 15), s(5, 15), s(20, 21)]) == 16.0


def test_clip() -> None:
    assert clip([s(20, 30), s(0, 10)], t(5), t(25)) == [s(5, 10), s(20, 25)]
    assert clip([s(0, 10)], t(10), t(20)) == []
    assert clip([s(0, 10)], t(5), t(5)) == []
    assert clip([s(0, 10)], t(8), t(2)) == []


# --- live_spans ---------------------------------------------------------------------------------


def test_live_with_pause_resume_and_end() -> None:
    changes = [
        (t(0), "live"),
        (t(100), "paused"),
        (t(160), "live"),
        (t(300), "ended"),
        (t(400), "live"),  # nothing counts after the first "ended"
    ]
    assert live_spans(changes, until=t(600)) == [s(0, 100), s(160, 300)]
    assert live_spans(shuffled(changes), until=t(600)) == [s(0, 100), s(160, 300)]
    # Still live at `until`: the span ends there; later changes are not looked at.
    assert live_spans(changes, until=t(200)) == [s(0, 100), s(160, 200)]
    assert live_spans(changes, until=t(50)) == [s(0, 50)]


def test_live_duplicates_and_repeated_states() -> None:
    changes = [(t(160), "live"), (t(0), "live"), (t(100), "paused"), (t(0), "live")]
    changes += [(t(100), "paused"), (t(120), "paused"), (t(130), "live"), (t(130), "live")]
    assert live_spans(changes, until=t(200)) == [s(0, 100), s(130, 200)]
    assert live_spans([], until=t(200)) == []
    assert live_spans([(t(0), "paused"), (t(10), "ended")], until=t(200)) == []


def test_live_equal_times_keep_the_given_order() -> None:
    resumed = [(t(0), "live"), (t(100), "paused"), (t(100), "live")]
    assert live_spans(resumed, until=t(200)) == [s(0, 200)]
    paused = [(t(0), "live"), (t(100), "live"), (t(100), "paused")]
    assert live_spans(paused, until=t(200)) == [s(0, 100)]
    ended = [(t(0), "live"), (t(50), "ended"), (t(50), "live")]
    assert live_spans(ended, until=t(200)) == [s(0, 50)]


def test_live_rejects_unknown_states() -> None:
    with pytest.raises(ValueError, match="unknown broadcast state 'stopped'"):
        live_spans([(t(0), "live"), (t(5), "ended"), (t(9), "stopped")], until=t(10))


# --- heartbeat_spans ----------------------------------------------------------------------------


def test_heartbeats_cover_and_gaps_longer_than_cover() -> None:
    beats = [(t(0), True), (t(15), True), (t(30), True), (t(100), True), (t(115), True)]
    assert heartbeat_spans(beats, COVER) == [s(0, 50), s(100, 135)]
    assert heartbeat_spans([(t(0), True), (t(20), True)], COVER) == [s(0, 40)]  # touching
    assert heartbeat_spans([(t(0), True), (t(21), True)], COVER) == [s(0, 20), s(21, 41)]
    assert heartbeat_spans([], COVER) == []


def test_hidden_beats_cut_coverage() -> None:
    beats = [(t(0), True), (t(10), False), (t(15), True), (t(40), False), (t(60), False)]
    assert heartbeat_spans(beats, COVER) == [s(0, 10), s(15, 35)]
    assert heartbeat_spans([(t(5), False)], COVER) == []
    # A hidden beat at the same instant as a visible one cuts, then the visible one restarts.
    both = [(t(0), True), (t(15), True), (t(20), True), (t(20), False)]
    assert heartbeat_spans(both, COVER) == [s(0, 40)]
    assert heartbeat_spans([(t(0), True), (t(15), True), (t(20), False)], COVER) == [s(0, 20)]
    assert heartbeat_spans([(t(20), False), (t(20), True)], COVER) == [s(20, 40)]


def test_heartbeats_ignore_order_and_duplicates() -> None:
    beats = [(t(0), True), (t(10), False), (t(15), True), (t(30), True), (t(90), True)]
    expected = [s(0, 10), s(15, 50), s(90, 110)]
    assert heartbeat_spans(beats, COVER) == expected
    assert heartbeat_spans(shuffled(beats + beats), COVER) == expected


def test_heartbeat_cover_must_not_be_negative() -> None:
    assert heartbeat_spans([(t(0), True)], timedelta()) == []
    with pytest.raises(ValueError, match="must not be negative"):
        heartbeat_spans([(t(0), True)], timedelta(seconds=-1))


# --- stint_spans, suspension_spans --------------------------------------------------------------


def test_stints_switch_between_venues_and_check_out() -> None:
    checkins: list[tuple[datetime, int | None]] = [
        (t(0), 1),
        (t(100), 2),
        (t(250), None),
        (t(300), 1),
    ]
    expected = {1: [s(0, 100), s(300, 400)], 2: [s(100, 250)]}
    assert stint_spans(checkins, until=t(400)) == expected
    assert stint_spans(shuffled(checkins + checkins[:2]), until=t(400)) == expected
    assert stint_spans(checkins, until=t(200)) == {1: [s(0, 100)], 2: [s(100, 200)]}
    assert stint_spans([], until=t(400)) == {}
    assert stint_spans([(t(500), 1)], until=t(400)) == {}


def test_checking_in_again_at_the_same_venue_continues() -> None:
    assert stint_spans([(t(0), 1), (t(100), 1), (t(150), 1)], until=t(200)) == {1: [s(0, 200)]}


def test_stints_at_equal_times_check_out_first_then_ascending_venue() -> None:
    checkins: list[tuple[datetime, int | None]] = [(t(0), 1), (t(100), 2), (t(100), None)]
    assert stint_spans(checkins, until=t(200)) == {1: [s(0, 100)], 2: [s(100, 200)]}
    assert stint_spans([(t(100), 3), (t(100), 2)], until=t(200)) == {3: [s(100, 200)]}


def test_suspensions() -> None:
    missed = [t(300), t(100)]
    confirmations = [t(50), t(100), t(250)]
    assert suspension_spans(missed, confirmations, until=t(400)) == [s(100, 250), s(300, 400)]
    assert suspension_spans([t(100), t(120)], [t(150)], until=t(400)) == [s(100, 150)]
    assert suspension_spans([t(100)], [], until=t(80)) == []
    assert suspension_spans([], [t(10)], until=t(80)) == []


# --- attend -------------------------------------------------------------------------------------

LIVE = [s(0, 600)]
SCREENS: dict[int, list[Span]] = {1: [s(0, 600)], 2: [s(0, 600)], 3: [s(0, 600)]}


def watching(start: int, end: int) -> MemberEvidence:
    """A remote member with media delivered and a visible page every 15 s over [start, end)."""
    beats = [(t(x), True) for x in range(start, end, DEFAULT_HEARTBEAT_S)]
    return MemberEvidence(delivered=(s(start, end),), beats=tuple(beats))


def result(
    *,
    first_join: float | None,
    last_leave: float | None,
    spans: list[Span],
    live_s: float = 600.0,
    venue_id: int | None = None,
    onsite_s: float = 0.0,
    presence_passed: int = 0,
    presence_total: int = 0,
) -> MemberAttendance:
    watched_s = total_seconds(spans)
    return MemberAttendance(
        first_join=None if first_join is None else t(first_join),
        last_leave=None if last_leave is None else t(last_leave),
        watched_s=watched_s,
        live_s=live_s,
        share=watched_s / live_s if live_s else 0.0,
        venue_id=venue_id,
        onsite_s=onsite_s,
        remote_s=watched_s - onsite_s,
        presence_passed=presence_passed,
        presence_total=presence_total,
        spans=tuple(spans),
    )


def test_remote_member_watching_throughout() -> None:
    got = attend(watching(0, 600), live=LIVE, screens={}, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=600, spans=[s(0, 600)])
    assert got.share == 1.0


def test_heartbeat_gaps_and_hidden_page_stop_accrual() -> None:
    beats = [(t(0), True), (t(15), True), (t(30), True), (t(100), True), (t(115), True)]
    beats += [(t(120), False), (t(200), True)]
    evidence = MemberEvidence(delivered=(s(0, 210), s(205, 300)), beats=tuple(beats))
    got = attend(evidence, live=LIVE, screens={}, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=220, spans=[s(0, 50), s(100, 120), s(200, 220)])
    assert got.watched_s == 90.0


def test_media_without_a_visible_page_or_a_page_without_media_counts_nothing() -> None:
    no_page = MemberEvidence(delivered=(s(0, 600),))
    no_media = MemberEvidence(beats=tuple(watching(0, 600).beats))
    for evidence in (no_page, no_media):
        got = attend(evidence, live=LIVE, screens={}, checks=(), cover=COVER, until=t(600))
        assert got == result(first_join=None, last_leave=None, spans=[])


def test_only_live_time_counts_with_pause_resume_and_end() -> None:
    changes = [(t(0), "live"), (t(100), "paused"), (t(160), "live"), (t(300), "ended")]
    live = live_spans(changes, until=t(600))
    got = attend(watching(0, 600), live=live, screens={}, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=600, spans=[s(0, 100), s(160, 300)], live_s=240)
    assert got.share == 1.0  # present longer than live: the share is capped by construction


def test_until_cuts_present_and_live() -> None:
    got = attend(watching(0, 600), live=LIVE, screens={}, checks=(), cover=COVER, until=t(200))
    assert got == result(first_join=0, last_leave=200, spans=[s(0, 200)], live_s=200)


def test_onsite_while_the_screen_drops() -> None:
    evidence = MemberEvidence(checkins=((t(0), 1),))
    screens = {1: [s(360, 600), s(0, 300)]}
    got = attend(evidence, live=LIVE, screens=screens, checks=(), cover=COVER, until=t(600))
    assert got == result(
        first_join=0, last_leave=600, spans=[s(0, 300), s(360, 600)], venue_id=1, onsite_s=540
    )


def test_checked_in_at_a_venue_without_a_screen_counts_nothing() -> None:
    evidence = MemberEvidence(checkins=((t(0), 4),))
    got = attend(evidence, live=LIVE, screens=SCREENS, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=None, last_leave=None, spans=[])


def test_checkin_switch_between_venues() -> None:
    checkins: tuple[tuple[datetime, int | None], ...] = ((t(0), 1), (t(150), 2), (t(400), None))
    evidence = MemberEvidence(checkins=checkins)
    got = attend(evidence, live=LIVE, screens=SCREENS, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=400, spans=[s(0, 400)], venue_id=2, onsite_s=400)
    tied = MemberEvidence(checkins=((t(0), 2), (t(200), 1), (t(400), None)))
    got = attend(tied, live=LIVE, screens=SCREENS, checks=(), cover=COVER, until=t(600))
    assert got.venue_id == 1  # equal on-site time: the lowest venue id


def test_remote_and_onsite_overlap_counts_once_as_onsite() -> None:
    remote = watching(0, 300)
    evidence = replace(remote, checkins=((t(200), 3), (t(400), None)))
    got = attend(evidence, live=LIVE, screens=SCREENS, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=400, spans=[s(0, 400)], venue_id=3, onsite_s=200)
    mostly_remote = replace(remote, checkins=((t(250), 3), (t(400), None)))
    got = attend(mostly_remote, live=LIVE, screens=SCREENS, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=400, spans=[s(0, 400)], onsite_s=150)


CHECK = PresenceWindow(check_id=1, opened_at=t(100), closes_at=t(160))


def test_missed_check_then_late_confirmation_restores_accrual_from_then_only() -> None:
    evidence = replace(watching(0, 600), confirmations=(t(250),))
    got = attend(evidence, live=LIVE, screens={}, checks=[CHECK], cover=COVER, until=t(600))
    assert got == result(
        first_join=0, last_leave=600, spans=[s(0, 100), s(250, 600)], presence_total=1
    )
    # Without a confirmation the suspension lasts to `until`.
    got = attend(watching(0, 600), live=LIVE, screens={}, checks=[CHECK], cover=COVER, until=t(600))
    assert got == result(first_join=0, last_leave=600, spans=[s(0, 100)], presence_total=1)


def test_a_check_still_open_at_until_is_not_missed_yet() -> None:
    got = attend(watching(0, 600), live=LIVE, screens={}, checks=[CHECK], cover=COVER, until=t(130))
    assert got == result(
        first_join=0, last_leave=130, spans=[s(0, 130)], live_s=130, presence_total=1
    )
    got = attend(watching(0, 600), live=LIVE, screens={}, checks=[CHECK], cover=COVER, until=t(160))
    assert got == result(
        first_join=0, last_leave=160, spans=[s(0, 100)], live_s=160, presence_total=1
    )


def test_passed_check() -> None:
    evidence = replace(watching(0, 600), passed_checks=frozenset({1}), confirmations=(t(120),))
    got = attend(evidence, live=LIVE, screens={}, checks=[CHECK], cover=COVER, until=t(600))
    assert got == result(
        first_join=0, last_leave=600, spans=[s(0, 600)], presence_passed=1, presence_total=1
    )


def test_member_not_present_at_a_check_is_not_challenged() -> None:
    later = PresenceWindow(check_id=2, opened_at=t(300), closes_at=t(360))
    got = attend(
        watching(200, 600), live=LIVE, screens={}, checks=[CHECK, later], cover=COVER, until=t(600)
    )
    assert got == result(first_join=200, last_leave=600, spans=[s(200, 300)], presence_total=1)
    # A passed check always counts as a challenge, present or not.
    passed = replace(watching(200, 600), passed_checks=frozenset({1, 2}))
    got = attend(passed, live=LIVE, screens={}, checks=[CHECK, later], cover=COVER, until=t(600))
    assert got == result(
        first_join=200, last_leave=600, spans=[s(200, 600)], presence_passed=2, presence_total=2
    )


def test_absent_member() -> None:
    got = attend(
        MemberEvidence(), live=LIVE, screens=SCREENS, checks=[CHECK], cover=COVER, until=t(600)
    )
    assert got == MemberAttendance(
        first_join=None,
        last_leave=None,
        watched_s=0.0,
        live_s=600.0,
        share=0.0,
        venue_id=None,
        onsite_s=0.0,
        remote_s=0.0,
        presence_passed=0,
        presence_total=0,
        spans=(),
    )
    got = attend(MemberEvidence(), live=[], screens={}, checks=(), cover=COVER, until=t(600))
    assert got == result(first_join=None, last_leave=None, spans=[], live_s=0.0)


# --- A member's session as a state machine, against a per-second oracle -------------------------

VENUES = (1, 2, 3)
WINDOW_S = 60
COVER_S = int(DEFAULT_COVER.total_seconds())
DT = st.integers(0, 8)


class MemberSession(RuleBasedStateMachine):
    """One member and the session around them; times are whole seconds after T0.

    Every rule first moves the cursor forward by ``dt`` (possibly 0, so events share instants)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.changes: list[tuple[int, str]] = [(0, "live")]
        self.open_conns: list[int] = []
        self.delivered: list[tuple[int, int]] = []
        self.visible = True
        self.beats: list[tuple[int, bool]] = []
        self.checkins: list[tuple[int, int | None]] = []
        self.screen_since: dict[int, int | None] = {1: 0, 2: 0, 3: None}
        self.screen_spans: dict[int, list[tuple[int, int]]] = {v: [] for v in VENUES}
        self.checks: list[tuple[int, int]] = []  # (opened, closes); the check id is the index
        self.passed: set[int] = set()
        self.confirmations: list[int] = []

    def advance(self, dt: int) -> None:
        self.now += dt

    # Media and page.
    @rule(dt=DT)
    def join(self, dt: int) -> None:
        self.advance(dt)
        self.open_conns.append(self.now)

    @rule(dt=DT, which=st.integers(0, 5))
    def drop(self, dt: int, which: int) -> None:
        self.advance(dt)
        if not self.open_conns:
            return
        start = self.open_conns.pop(which % len(self.open_conns))
        self.delivered.append((start, self.now))

    @rule(dt=DT, gap=st.integers(0, 30))
    def reconnect(self, dt: int, gap: int) -> None:
        self.drop(dt, 0)
        self.join(gap)

    @rule(dt=st.integers(0, 20))
    def heartbeat(self, dt: int) -> None:
        self.advance(dt)
        self.beats.append((self.now, self.visible))

    @rule(dt=DT)
    def hide(self, dt: int) -> None:
        self.advance(dt)
        self.visible = False
        self.beats.append((self.now, False))

    @rule(dt=DT)
    def show(self, dt: int) -> None:
        self.advance(dt)
        self.visible = True
        self.beats.append((self.now, True))

    @rule(dt=st.integers(1, 45))
    def wait(self, dt: int) -> None:
        self.advance(dt)

    # Broadcast (session-wide, recorded in order; never shuffled).
    @rule(dt=DT, end=st.integers(0, 9))
    def pause(self, dt: int, end: int) -> None:
        self.advance(dt)
        self.changes.append((self.now, "ended" if end == 0 else "paused"))

    @rule(dt=DT)
    def resume(self, dt: int) -> None:
        self.advance(dt)
        self.changes.append((self.now, "live"))

    # Venues.
    @rule(dt=DT, venue=st.sampled_from(VENUES))
    def check_in(self, dt: int, venue: int) -> None:
        self.advance(dt)
        self.checkins.append((self.now, venue))

    @rule(dt=DT)
    def check_out(self, dt: int) -> None:
        self.advance(dt)
        self.checkins.append((self.now, None))

    @rule(dt=DT, venue=st.sampled_from(VENUES))
    def toggle_screen(self, dt: int, venue: int) -> None:
        self.advance(dt)
        since = self.screen_since[venue]
        if since is None:
            self.screen_since[venue] = self.now
        else:
            self.screen_spans[venue].append((since, self.now))
            self.screen_since[venue] = None

    # Presence checks.
    @rule(dt=DT)
    def open_check(self, dt: int) -> None:
        """A check the member will miss unless a later rule passes it."""
        self.advance(dt)
        self.checks.append((self.now, self.now + WINDOW_S))

    @rule(dt=st.integers(0, 70), which=st.integers(0, 5))
    def pass_check(self, dt: int, which: int) -> None:
        self.advance(dt)
        open_ids = [
            i
            for i, (opened, closes) in enumerate(self.checks)
            if opened <= self.now < closes and i not in self.passed
        ]
        if open_ids:
            self.passed.add(open_ids[which % len(open_ids)])
            self.confirmations.append(self.now)

    @rule(dt=DT)
    def confirm(self, dt: int) -> None:
        """A late confirmation of presence (or a stray one)."""
        self.advance(dt)
        self.confirmations.append(self.now)

    # Delivery of the evidence itself.
    @rule(kind=st.integers(0, 3), which=st.integers(0, 1000))
    def retry(self, kind: int, which: int) -> None:
        """The same event reported twice (client retry, relay re-report)."""
        if kind == 0 and self.beats:
            self.beats.append(self.beats[which % len(self.beats)])
        elif kind == 1 and self.checkins:
            self.checkins.append(self.checkins[which % len(self.checkins)])
        elif kind == 2 and self.confirmations:
            self.confirmations.append(self.confirmations[which % len(self.confirmations)])
        elif kind == 3 and self.delivered:
            self.delivered.append(self.delivered[which % len(self.delivered)])

    @rule(seed=st.integers(0, 2**32))
    def reorder(self, seed: int) -> None:
        rng = random.Random(seed)
        for events in (self.beats, self.checkins, self.confirmations, self.delivered):
            rng.shuffle(events)

    # What attend sees.
    def evidence(self) -> MemberEvidence:
        delivered = self.delivered + [(start, self.now) for start in self.open_conns]
        return MemberEvidence(
            delivered=tuple(s(a, b) for a, b in delivered),
            beats=tuple((t(x), visible) for x, visible in self.beats),
            checkins=tuple((t(x), venue) for x, venue in self.checkins),
            passed_checks=frozenset(self.passed),
            confirmations=tuple(t(x) for x in self.confirmations),
        )

    def screens(self) -> dict[int, list[tuple[int, int]]]:
        out = {v: list(spans) for v, spans in self.screen_spans.items()}
        for v, since in self.screen_since.items():
            if since is not None:
                out[v].append((since, self.now))
        return out

    def windows(self) -> list[PresenceWindow]:
        return [PresenceWindow(i, t(o), t(c)) for i, (o, c) in enumerate(self.checks)]

    def run(self, evidence: MemberEvidence) -> MemberAttendance:
        return attend(
            evidence,
            live=live_spans([(t(x), state) for x, state in self.changes], until=t(self.now)),
            screens={v: [s(a, b) for a, b in spans] for v, spans in self.screens().items()},
            checks=self.windows(),
            cover=DEFAULT_COVER,
            until=t(self.now),
        )

    def oracle(self) -> tuple[MemberAttendance, list[bool], list[bool]]:
        """Step through every whole second, keeping state as a client and the relay would.

        Returns the expected attendance and, per second, whether it was live and suspended."""
        n = self.now
        changes_at: dict[int, list[str]] = defaultdict(list)
        for x, state in self.changes:  # already in time order: the cursor only moves forward
            changes_at[x].append(state)
        beats_at: dict[int, list[bool]] = defaultdict(list)
        for x, visible in self.beats:
            beats_at[x].append(visible)
        checkins_at: dict[int, list[int | None]] = defaultdict(list)
        for x, where in self.checkins:
            checkins_at[x].append(where)
        delivered = self.delivered + [(start, n) for start in self.open_conns]
        screens = self.screens()

        live = [False] * n
        remote = [False] * n
        at_venue: list[int | None] = [None] * n
        onsite = [False] * n
        is_live = ended = False
        covered_until = -1
        venue: int | None = None
        for x in range(n):
            for state in changes_at[x]:
                if ended:
                    break
                ended = state == "ended"
                is_live = state == "live"
            live[x] = is_live
            for visible in sorted(beats_at[x]):  # hidden first at the same instant
                covered_until = max(covered_until, x + COVER_S) if visible else x
            media = any(a <= x < b for a, b in delivered)
            remote[x] = media and x < covered_until
            # Check-out first, then check-ins by venue id; the last one holds.
            for v in sorted(checkins_at[x], key=lambda v: -1 if v is None else v):
                venue = v
            if venue is not None and any(a <= x < b for a, b in screens[venue]):
                at_venue[x] = venue
                onsite[x] = True
        present = [r or o for r, o in zip(remote, onsite, strict=True)]

        challenged = [
            (i, o, c)
            for i, (o, c) in enumerate(self.checks)
            if i in self.passed or (o < n and present[o])
        ]
        missed = {o for i, o, c in challenged if i not in self.passed and c <= n}
        confirmed = set(self.confirmations)
        suspended = [False] * n
        is_suspended = False
        for x in range(n):
            if x in confirmed:
                is_suspended = False
            if x in missed:
                is_suspended = True
            suspended[x] = is_suspended

        counted = [p and lv and not sp for p, lv, sp in zip(present, live, suspended, strict=True)]
        watched = sum(counted)
        per_venue = {v: sum(1 for x in range(n) if counted[x] and at_venue[x] == v) for v in VENUES}
        onsite_s = sum(per_venue.values())
        main_venue = None
        if onsite_s > 0 and onsite_s >= watched - onsite_s:
            main_venue = max(VENUES, key=lambda v: (per_venue[v], -v))
        runs: list[tuple[int, int]] = []
        for x in range(n):
            if counted[x]:
                if runs and runs[-1][1] == x:
                    runs[-1] = (runs[-1][0], x + 1)
                else:
                    runs.append((x, x + 1))
        present_at = [x for x in range(n) if present[x]]
        live_s = sum(live)
        expected = MemberAttendance(
            first_join=t(present_at[0]) if present_at else None,
            last_leave=t(present_at[-1] + 1) if present_at else None,
            watched_s=float(watched),
            live_s=float(live_s),
            share=watched / live_s if live_s else 0.0,
            venue_id=main_venue,
            onsite_s=float(onsite_s),
            remote_s=float(watched - onsite_s),
            presence_passed=sum(1 for i, _, _ in challenged if i in self.passed),
            presence_total=len(challenged),
            spans=tuple(s(a, b) for a, b in runs),
        )
        return expected, live, suspended

    @invariant()
    def matches_the_oracle_and_holds_its_invariants(self) -> None:
        evidence = self.evidence()
        got = self.run(evidence)
        expected, live, suspended = self.oracle()
        assert got == expected

        assert got.watched_s <= got.live_s
        assert got.watched_s <= self.now
        assert got.onsite_s + got.remote_s == got.watched_s
        assert 0.0 <= got.share <= 1.0
        live_now = live_spans([(t(x), st) for x, st in self.changes], until=t(self.now))
        for earlier, later in zip(got.spans, got.spans[1:], strict=False):
            assert earlier.end < later.start  # disjoint, sorted, merged
        for span in got.spans:
            assert any(lv.start <= span.start and span.end <= lv.end for lv in live_now)
            first = int((span.start - T0).total_seconds())
            last = int((span.end - T0).total_seconds())
            assert all(live[x] and not suspended[x] for x in range(first, last))

        twice = MemberEvidence(
            delivered=tuple(shuffled([*evidence.delivered, *evidence.delivered], self.now)),
            beats=tuple(shuffled([*evidence.beats, *evidence.beats], self.now + 1)),
            checkins=tuple(shuffled([*evidence.checkins, *evidence.checkins], self.now + 2)),
            passed_checks=evidence.passed_checks,
            confirmations=tuple(
                shuffled([*evidence.confirmations, *evidence.confirmations], self.now + 3)
            ),
        )
        assert self.run(twice) == got


MemberSession.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestMemberSession = MemberSession.TestCase
