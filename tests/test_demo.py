"""The demo organisation: seeded into an empty store only, with logins that really work."""

from __future__ import annotations

import contextlib
import json
import re
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from attendance.chain import verify
from attendance.demo import LOGINS_FILE, VENUES, Demo, DemoLogin, seed_demo
from attendance.journal import admin_event_fields
from attendance.models import (
    AdminEvent,
    Member,
    OrgUnit,
    Role,
    SessionState,
    StudySession,
    User,
    Venue,
)
from attendance.sessions import AttendanceRule, describe, get_session
from attendance.store import Store
from attendance.units import UnitTree, parse_unit_path
from attendance.users import add_user, authenticate
from attendance.venues import add_venue

CJK = re.compile(r"^[\u4e00-\u9fff]+$")

# For behaviour that does not depend on the database kind: the SQLite file only.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def counts(store: Store) -> dict[str, int]:
    out = {}
    async with store.read() as db:
        for name, model in [
            ("units", OrgUnit),
            ("venues", Venue),
            ("members", Member),
            ("users", User),
            ("sessions", StudySession),
            ("admin_events", AdminEvent),
        ]:
            out[name] = int(await db.scalar(select(func.count()).select_from(model)) or 0)
    return out


def saved_logins(data_dir: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((data_dir / LOGINS_FILE).read_text(encoding="utf-8"))
    return data


async def test_seeds_an_empty_store(store: Store, tmp_path: Path, now: datetime) -> None:
    demo = await seed_demo(store, data_dir=tmp_path, now=now)

    assert demo.seeded_now is True
    assert demo.venues == [v[0] for v in VENUES]
    assert [(x.username, x.role) for x in demo.logins] == [
        ("organiser", "organiser"),
        ("auditor", "auditor"),
        ("venue-bj", "venue_operator"),
    ]
    assert len({x.password for x in demo.logins}) == 3
    assert all(len(x.password) >= 10 for x in demo.logins)
    assert await counts(store) == {
        "units": 12,  # 2 cities, 5 office areas, 5 rooms
        "venues": 5,
        "members": 20,
        "users": 3,
        "sessions": 1,
        # 5 venues, 3 users and the session were each logged
        "admin_events": 9,
    }

    async with store.read() as db:
        venues = list(await db.scalars(select(Venue).order_by(Venue.id)))
        members = list(await db.scalars(select(Member).order_by(Member.member_no)))
        units = list(await db.scalars(select(OrgUnit.path).order_by(OrgUnit.path)))
        operator = await db.scalar(select(User).where(User.username == "venue-bj"))
        others = list(await db.scalars(select(User.venue_id).where(User.username != "venue-bj")))
        session = describe(await get_session(db, demo.session_id or 0))
        trail = list(await db.scalars(select(AdminEvent).order_by(AdminEvent.id)))
    # Units come back in the database's collation order of paths; compare them as a set.
    assert sorted(session.pop("expected_units")) == sorted(["北京", "上海"])

    assert [(v.slug, v.name, v.capacity) for v in venues] == [(s, n, 40) for s, n, _ in VENUES]
    assert set(units) >= {"北京", "上海", "北京/朝阳办公区", "上海/徐汇办公区/报告厅"}
    assert [m.member_no for m in members] == [f"D{i:04d}" for i in range(1, 21)]
    assert all(CJK.match(m.name) for m in members), [m.name for m in members]
    assert members[0].name == "王伟"
    assert all(m.active and m.link_version == 1 for m in members)
    assert operator is not None and operator.venue_id == venues[0].id
    assert others == [None, None]

    # Tomorrow 19:30 in China (UTC+8), for 90 minutes, at every venue.
    start = datetime(2026, 11, 25, 11, 30, tzinfo=now.tzinfo)
    assert session == {
        "id": demo.session_id,
        "title": "季度学习会：安全与合规 / Quarterly study: safety and compliance",
        "description": "Demo session seeded by studycast serve --demo.",
        "state": SessionState.SCHEDULED.value,
        "scheduled_start": start.isoformat(),
        "scheduled_end": (start + timedelta(minutes=90)).isoformat(),
        "video_codec": "h264",
        "recording_enabled": True,
        "venues": [{"slug": s, "name": n} for s, n, _ in VENUES],
        "attendance_rule": AttendanceRule().model_dump(),
        "started_at": None,
        "ended_at": None,
    }

    # The admin trail records what the demo did, and its chain holds.
    assert [(e.actor, e.action) for e in trail] == (
        [("demo", "venue_added")] * 5 + [("demo", "user_added")] * 3 + [("demo", "session_created")]
    )
    assert (
        verify(
            (e.prev_hash, e.hash, admin_event_fields(e.at, e.actor, e.action, e.target, e.detail))
            for e in trail
        )
        is None
    )


async def test_logins_file_is_private_and_logins_authenticate(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    demo = await seed_demo(store, data_dir=tmp_path, now=now)
    path = tmp_path / LOGINS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert saved_logins(tmp_path) == [
        {"username": x.username, "role": x.role, "password": x.password} for x in demo.logins
    ]

    later = now + timedelta(minutes=5)
    async with store.write() as db:
        outcomes = [
            await authenticate(db, x.username, x.password, now=later, source="test")
            for x in demo.logins
        ]
        wrong = await authenticate(db, "organiser", "not-the-password", now=later, source="test")
    assert [(o.reason, o.user.username, o.user.role) for o in outcomes if o.user] == [
        ("ok", "organiser", Role.ORGANISER),
        ("ok", "auditor", Role.AUDITOR),
        ("ok", "venue-bj", Role.VENUE_OPERATOR),
    ]
    assert (wrong.reason, wrong.user) == ("wrong_password", None)
    async with store.read() as db:
        stamped = list(await db.scalars(select(User.last_login_at).order_by(User.id)))
    assert stamped == [later, later, later]


async def test_second_call_changes_nothing(store: Store, tmp_path: Path, now: datetime) -> None:
    first = await seed_demo(store, data_dir=tmp_path, now=now)
    before = await counts(store)
    file_before = (tmp_path / LOGINS_FILE).read_bytes()

    second = await seed_demo(store, data_dir=tmp_path, now=now + timedelta(days=3))

    assert second == Demo(
        session_id=None, venues=first.venues, logins=first.logins, seeded_now=False
    )
    assert await counts(store) == before
    assert (tmp_path / LOGINS_FILE).read_bytes() == file_before


@SQLITE_ONLY
async def test_second_call_without_the_logins_file(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    await seed_demo(store, data_dir=tmp_path, now=now)
    (tmp_path / LOGINS_FILE).unlink()
    again = await seed_demo(store, data_dir=tmp_path, now=now)
    assert (again.seeded_now, again.logins, again.session_id) == (False, [], None)


async def test_refuses_a_store_with_users(store: Store, tmp_path: Path, now: datetime) -> None:
    async with store.write() as db:
        await add_user(
            db,
            username="alice",
            role=Role.ORGANISER,
            password="correct horse battery",
            now=now,
            actor="test",
        )
    before = await counts(store)
    demo = await seed_demo(store, data_dir=tmp_path, now=now)
    assert demo == Demo(None, [v[0] for v in VENUES], [], seeded_now=False)
    assert await counts(store) == before
    assert not (tmp_path / LOGINS_FILE).exists()


async def test_refuses_a_store_with_members(store: Store, tmp_path: Path, now: datetime) -> None:
    async with store.write() as db:
        unit = await UnitTree(db, now).ensure(("杭州",))
        db.add(
            Member(
                member_no="M1",
                name="张三",
                unit_id=unit.id,
                active=True,
                link_version=1,
                created_at=now,
                updated_at=now,
            )
        )
    before = await counts(store)
    demo = await seed_demo(store, data_dir=tmp_path, now=now)
    assert (demo.seeded_now, demo.logins) == (False, [])
    assert await counts(store) == before


async def test_refuses_a_store_with_only_venues(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with store.write() as db:
        await UnitTree(db, now).ensure(parse_unit_path("杭州/西湖办公区"))
        await add_venue(
            db,
            slug="hz-xihu-1",
            name="西湖会议室",
            unit_path="杭州/西湖办公区",
            now=now,
            actor="cli",
        )
    before = await counts(store)
    demo = await seed_demo(store, data_dir=tmp_path, now=now)
    assert demo.seeded_now is False
    assert await counts(store) == before


@SQLITE_ONLY
async def test_logins_are_never_lost(store: Store, tmp_path: Path, now: datetime) -> None:
    data_dir = tmp_path / "not-yet"
    with contextlib.suppress(OSError):
        await seed_demo(store, data_dir=data_dir, now=now)
    seeded = (await counts(store))["users"] > 0
    assert (data_dir / LOGINS_FILE).exists() or not seeded


def test_demo_login_is_a_plain_value() -> None:
    login = DemoLogin("organiser", "organiser", "pw")
    assert login == DemoLogin("organiser", "organiser", "pw")
    with pytest.raises(AttributeError):
        login.password = "x"  # type: ignore[misc]
