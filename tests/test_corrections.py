"""Corrections are new events with a reason: an attendance verdict overridden, points
corrected, and what was recorded before stays as it was."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from live_record_support import SECRET, World, log_in, seed
from sqlalchemy import select
from support import FakeClock, make_settings

from attendance.evaluation import finalize_session
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.models import AdminEvent, AttendanceEvent, PointsEntry, SessionResult
from attendance.sessions import end_session
from attendance.store import Store
from server.app import create_app


@pytest.fixture
async def world(
    store: Store, clock: FakeClock, now: datetime, tmp_path: Path
) -> AsyncIterator[World]:
    session_id, other_id, member_ids, venue_ids = await seed(store, now)
    settings = make_settings(tmp_path, secret_key=SECRET, tick_interval_s=60)
    app = create_app(settings, store, clock=clock)
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        w = World(client, clock, store, session_id, other_id, member_ids, venue_ids)
        w.organiser = await log_in(client, "org")
        w.auditor = await log_in(client, "aud")
        yield w


async def _ended_with_m1_watching_all(w: World, now: datetime) -> None:
    """Live 10 minutes; M1 watched remotely the whole time, the others not at all."""
    t = lambda s: now + timedelta(seconds=s)  # noqa: E731
    sid, m1 = w.session_id, w.member_ids["M1"]
    beats = [
        NewAttendanceEvent(
            session_id=sid,
            event_uuid=uuid.uuid4(),
            kind="heartbeat",
            source="member:M1",
            client_time=t(s),
            member_id=m1,
            payload={"status": "accepted", "happened_at": t(s).isoformat(), "visible": True},
        )
        for s in range(0, 600, 15)
    ]
    async with w.store.write() as db:
        await append_attendance_events(
            db,
            [
                NewAttendanceEvent(
                    session_id=sid,
                    event_uuid=uuid.uuid4(),
                    kind="broadcast",
                    source="relay",
                    client_time=t(0),
                    payload={"state": "live", "at": t(0).isoformat()},
                ),
                NewAttendanceEvent(
                    session_id=sid,
                    event_uuid=uuid.uuid4(),
                    kind="media",
                    source="relay",
                    client_time=t(600),
                    member_id=m1,
                    payload={"from": t(0).isoformat(), "to": t(600).isoformat()},
                ),
                *beats,
            ],
            now=t(600),
        )
        await end_session(db, sid, now=t(600), actor="test")
        await finalize_session(db, sid, now=t(600))


async def _points(w: World, number: str) -> list[tuple[str, int]]:
    async with w.store.read() as db:
        rows = await db.execute(
            select(PointsEntry.ref, PointsEntry.points)
            .where(PointsEntry.member_id == w.member_ids[number])
            .order_by(PointsEntry.id)
        )
        return [(r, p) for r, p in rows]


async def test_an_attendance_correction_is_an_event_and_adjusts_points(
    world: World, now: datetime
) -> None:
    w = world
    await _ended_with_m1_watching_all(w, now)
    sid, m1, m2 = w.session_id, w.member_ids["M1"], w.member_ids["M2"]
    assert await _points(w, "M1") == [(f"attendance:{sid}:{m1}", 10)]
    assert await _points(w, "M2") == []

    # M2 was in the room but the screen's link failed: qualified by the organiser.
    url = f"{w.base}/corrections"
    body = {"member": "M2", "qualified": True, "reason": "screen link failed; signed sheet"}
    answer = await w.post(url, w.organiser, body, status=201)
    assert answer == {
        "session_id": sid,
        "member_no": "M2",
        "qualified": True,
        "reason": "corrected by user:org: screen link failed; signed sheet (evaluated: watched "
        "0% of live time (needs 85%))",
        "evaluated": True,
    }
    # M1 is disqualified, then qualified again: each change is a new ledger entry.
    for qualified, reason in [(False, "left the room; seen by the venue"), (True, "appeal ok")]:
        await w.post(
            url, w.organiser, {"member": "M1", "qualified": qualified, "reason": reason}, status=201
        )
    assert await _points(w, "M2") == [(f"attendance:{sid}:{m2}", 10)]
    assert await _points(w, "M1") == [
        (f"attendance:{sid}:{m1}", 10),
        (f"attendance:{sid}:{m1}:adjust:1", -10),
        (f"attendance:{sid}:{m1}:adjust:2", 10),
    ]
    async with w.store.read() as db:
        results = {
            r.member_id: (r.qualified, r.reason) for r in await db.scalars(select(SessionResult))
        }
        kinds = [
            (e.kind, e.source, e.payload.get("reason"))
            for e in await db.scalars(
                select(AttendanceEvent)
                .where(AttendanceEvent.kind == "correction")
                .order_by(AttendanceEvent.id)
            )
        ]
        trail = list(
            await db.scalars(
                select(AdminEvent.action).where(AdminEvent.action == "attendance_corrected")
            )
        )
    assert results[m1] == (
        True,
        "corrected by user:org: appeal ok (evaluated: watched 100% of live time; passed 0 of 0 "
        "presence checks)",
    )
    assert results[m2][0] is True
    assert kinds == [
        ("correction", "user:org", "screen link failed; signed sheet"),
        ("correction", "user:org", "left the room; seen by the venue"),
        ("correction", "user:org", "appeal ok"),
    ]
    assert len(trail) == 3
    # Evaluating again from the log gives the same verdicts (the corrections are in it).
    async with w.store.write() as db:
        rows = {r.member_no: r.verdict for r in await finalize_session(db, sid, now=now)}
    assert rows["M1"].qualified and rows["M2"].qualified
    assert await _points(w, "M1") == [
        (f"attendance:{sid}:{m1}", 10),
        (f"attendance:{sid}:{m1}:adjust:1", -10),
        (f"attendance:{sid}:{m1}:adjust:2", 10),
    ]


async def test_corrections_refuse_bad_input_and_non_organisers(world: World) -> None:
    w = world
    url = f"{w.base}/corrections"
    for body, detail in [
        ({"member": "M1", "qualified": True}, "reason: say why, as text"),
        (
            {"member": "M1", "qualified": True, "reason": "  "},
            "reason: say why the attendance is corrected",
        ),
        ({"member": "M1", "qualified": "yes", "reason": "x"}, "qualified: true or false"),
        ({"member": "M1", "qualified": True, "reason": "x", "extra": 1}, "unknown fields: extra"),
        ({"member": "nobody", "qualified": True, "reason": "x"}, "no member 'nobody'"),
    ]:
        r = await w.client.post(url, json=body, headers=w.organiser)
        assert (r.status >= 400, (await r.json())["detail"]) == (True, detail)
    r = await w.client.post(
        url, json={"member": "M1", "qualified": True, "reason": "x"}, headers=w.auditor
    )
    assert r.status == 403


async def test_points_corrections_are_ledger_entries(world: World) -> None:
    w = world
    url = "/api/members/M3/points/corrections"
    answer = await w.post(
        url, w.organiser, {"points": 7, "reason": "helped at the venue"}, status=201
    )
    assert answer["total"] == 7 and answer["entries"][0]["kind"] == "correction"
    assert answer["entries"][0]["reason"] == "helped at the venue (by user:org)"
    for body, status in [
        ({"points": 0, "reason": "x"}, 400),
        ({"points": 5}, 400),
        ({"points": True, "reason": "x"}, 400),
        ({"points": 5, "reason": "x", "session_id": 999}, 404),
    ]:
        r = await w.client.post(url, json=body, headers=w.organiser)
        assert r.status == status, await r.text()
    r = await w.client.post(url, json={"points": 1, "reason": "x"}, headers=w.auditor)
    assert r.status == 403
    assert await _points(w, "M3") == [(answer["ref"], 7)]
