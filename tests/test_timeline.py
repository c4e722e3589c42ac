"""The session timeline: the pure bucketing exactly, then the scripted session of
``test_reports`` (SQLite file and PostgreSQL) minute by minute, and the API.

Counted spans in that script (minutes after T0): M1 0-20, 30-45, 47-60; M2 0-20, 30-40 (missed
the check at 40); M3 (bj-a) 2-20, 30-50, 52-60; M4 (bj-b) 31-60; M6 30-60. Screens: bj-a 0-50,
52-60; bj-b 0-60. Accepted check-ins: M3 at 2 (and again at 35), M4 at 31; M2's at 3 refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from live_record_support import SECRET, log_in
from sqlalchemy import select
from support import FakeClock, make_settings
from test_reports import END, NOW2, T0, at, build, finish

from attendance.intervals import Span
from attendance.models import PresenceCheck, QuizQuestion
from attendance.store import Store
from attendance.timeline import (
    Marker,
    bucket_count,
    bucket_step,
    cumulative_counts,
    overlap_counts,
    session_timeline,
)
from server.app import create_app

MIN = timedelta(minutes=1)


def t(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def s(start: float, end: float) -> Span:
    return Span(t(start), t(end))


# --- pure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "step_min"),
    [
        (0, 1),
        (1, 1),
        (60, 1),
        (300, 1),
        (300.5, 2),
        (600, 2),
        (601, 5),
        (1500, 5),
        (1501, 10),
        (30 * 1440, 240),
        (300 * 1440, 1440),
        (300 * 1440 + 1, 2 * 1440),
    ],
)
def test_bucket_step_keeps_at_most_300_points(minutes: float, step_min: int) -> None:
    step = bucket_step(t(0), t(minutes))
    assert step == timedelta(minutes=step_min)
    assert bucket_count(t(0), t(minutes), step) <= 300


def test_bucket_step_with_fewer_points() -> None:
    assert bucket_step(t(0), t(60), max_points=10) == timedelta(minutes=10)
    assert bucket_step(t(0), t(100), max_points=10) == timedelta(minutes=10)
    assert bucket_step(t(0), t(101), max_points=10) == timedelta(minutes=15)
    with pytest.raises(ValueError):
        bucket_step(t(0), t(1), max_points=0)


def test_bucket_count() -> None:
    assert [bucket_count(t(0), t(m), MIN) for m in (0, 0.5, 1, 1.5, 2)] == [1, 1, 1, 2, 2]
    assert bucket_count(t(0), t(60), 5 * MIN) == 12


def test_overlap_counts_half_open_edges() -> None:
    counts = overlap_counts(
        [
            [s(1, 3)],  # exactly buckets 1 and 2
            [s(0.5, 1.5), s(1.2, 1.4), s(1.6, 1.7)],  # overlapping spans count once per bucket
            [s(-5, 0.01)],  # starts before the chart
            [s(4.99, 9)],  # runs past the chart's end
            [s(2, 2)],  # empty: nothing
        ],
        start=t(0),
        step=MIN,
        count=5,
    )
    assert counts == [2, 2, 1, 0, 1]


def test_overlap_counts_with_wider_buckets() -> None:
    counts = overlap_counts([[s(0, 4)], [s(5, 6), s(14, 16)]], start=t(0), step=5 * MIN, count=4)
    assert counts == [1, 1, 1, 1]
    assert overlap_counts([], start=t(0), step=MIN, count=3) == [0, 0, 0]


def test_cumulative_counts_until_each_bucket_end() -> None:
    times = [t(2), t(-1), t(3), t(2.5), t(9)]
    assert cumulative_counts(times, start=t(0), step=MIN, count=5) == [1, 1, 3, 4, 4]
    assert cumulative_counts([], start=t(0), step=MIN, count=2) == [0, 0]


# --- the store -------------------------------------------------------------------------------


def expected_viewers() -> list[int]:
    per_range = [
        (0, 2, 2),
        (2, 20, 3),
        (20, 30, 0),
        (30, 31, 4),
        (31, 40, 5),
        (40, 45, 4),
        (45, 47, 3),
        (47, 50, 4),
        (50, 52, 3),
        (52, 60, 4),
    ]
    return [n for start, end, n in per_range for _ in range(start, end)]


async def open_quiz(store: Store, session_id: int) -> None:
    async with store.write() as db:
        question = await db.scalar(
            select(QuizQuestion).where(QuizQuestion.session_id == session_id)
        )
        assert question is not None
        question.opened_at = at(15)
        question.closes_at = at(15.5)
        question.closed_at = at(16)


async def test_timeline_of_the_scripted_session(store: Store) -> None:
    scenario = await build(store)
    await open_quiz(store, scenario.session_id)
    await finish(store, scenario)
    async with store.read() as db:
        timeline = await session_timeline(db, scenario.session_id, now=NOW2)
        checks = list(
            await db.scalars(
                select(PresenceCheck.id)
                .where(PresenceCheck.session_id == scenario.session_id)
                .order_by(PresenceCheck.id)
            )
        )
    assert (timeline.start, timeline.end, timeline.step) == (T0, END, MIN)
    assert timeline.times == [t(i) for i in range(60)]
    assert timeline.viewers == expected_viewers()
    assert timeline.screens == [2] * 50 + [1] * 2 + [2] * 8
    assert timeline.checkins == [0] * 2 + [1] * 29 + [2] * 29
    c1, c2 = checks
    assert timeline.markers == [
        Marker(t(0), "live"),
        Marker(t(10), "presence_opened", c1),
        Marker(t(11), "presence_closed", c1),
        Marker(t(15), "quiz_opened", 1, "1+1=?"),
        Marker(t(16), "quiz_closed", 1, "1+1=?"),
        Marker(t(20), "paused"),
        Marker(t(30), "live"),
        Marker(t(40), "presence_opened", c2),
        Marker(t(41), "presence_closed", c2),
        Marker(t(60), "ended"),
    ]
    body = timeline.as_json()
    assert body["step_s"] == 60
    assert body["series"]["viewers"] == expected_viewers()
    assert body["markers"][0] == {"at": T0.isoformat(), "kind": "live", "ref": None, "label": ""}


async def test_timeline_of_a_running_session_ends_now(store: Store) -> None:
    scenario = await build(store)
    async with store.read() as db:
        timeline = await session_timeline(db, scenario.running_id, now=NOW2)
    assert (timeline.start, timeline.end, timeline.step) == (t(61), NOW2, MIN)
    assert timeline.viewers == [1, 1, 0, 0]
    assert timeline.screens == [0, 0, 0, 0]
    assert timeline.checkins == [0, 0, 0, 0]
    assert timeline.markers == [Marker(t(61), "live")]


async def test_timeline_api(tmp_path: Path, store: Store) -> None:
    scenario = await build(store)
    await finish(store, scenario)
    settings = make_settings(tmp_path, secret_key=SECRET)
    app = create_app(settings, store, clock=FakeClock(NOW2))
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        auditor = await log_in(client, "aud")
        response = await client.get(
            f"/api/sessions/{scenario.session_id}/timeline", headers=auditor
        )
        assert response.status == 200
        body = await response.json()
        assert body["session"]["id"] == scenario.session_id
        assert body["series"]["viewers"] == expected_viewers()
        assert len(body["times"]) == 60
        assert datetime.fromisoformat(body["times"][1]) == datetime(2026, 11, 24, 8, 1, tzinfo=UTC)
        missing = await client.get("/api/sessions/999/timeline", headers=auditor)
        assert missing.status == 404
        anonymous = await client.get(f"/api/sessions/{scenario.session_id}/timeline")
        assert anonymous.status == 401
