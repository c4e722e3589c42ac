"""Reports over a scripted session whose figures are worked out by hand below (SQLite file and
PostgreSQL): the member report (live and from the stored results), roll-ups by unit and venue,
a member's history with points, filters, CSV/XLSX exports, the API and the CLI.

The script (minutes after T0 = 08:00 UTC; the attendance rule is the default: 85% of live time,
2 of 3 presence checks, 10 points for qualifying):

- broadcast live 0-20, paused 20-30, live 30-60, ended at 60: live time 50 min = 3000 s;
- presence checks C1 open 10-11 and C2 open 40-41;
- venue bj-a's screen connected 0-50 and 52-60 (a reconnect); bj-b's 0-60.

| member | unit | how | counted (min) | share | checks | ok |
|---|---|---|---|---|---|---|
| M1 "=1+2 王伟" | 北京/朝阳/一组 | remote 0-45, 47-60 | 0-20, 30-45, 47-60 = 48 | 96% | 2/2 | yes |
| M2 李芳 | 北京/朝阳/二组 | remote 0-60, misses C2 | 0-20, 30-40 = 30 | 60% | 1/2 | no |
| M3 张娜 | 北京/朝阳/一组 | checked in at bj-a at 2 | 2-20, 30-50, 52-60 = 46 | 92% | 2/2 | yes |
| M4 刘敏 | 北京/海淀 | checked in at bj-b at 31 | 31-60 = 29 | 58% | 1/1 | no |
| M5 陈静 | 北京/海淀 | expected, absent | 0 | 0% | 0/0 | no |
| M6 赵强 | 上海 | not expected, remote 30-60 | 30-60 = 30 | 60% | 1/1 | no |

M7 (上海, not expected, never there) is in no report. A second session, live from 61, has M1
watching 61-63 by ``now`` = 65: 120 of 240 live seconds.
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from live_record_support import PASSWORD, SECRET, log_in
from sqlalchemy import select, update
from support import FakeClock, make_settings

from attendance.evaluation import finalize_session
from attendance.exports import (
    members_table,
    to_csv,
    to_xlsx,
    units_table,
    venues_table,
)
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.models import (
    AdminEvent,
    Member,
    PresenceCheck,
    PresenceResponse,
    QuizAnswer,
    QuizQuestion,
    Role,
    SessionState,
    StudyNote,
    StudySession,
)
from attendance.points import award
from attendance.reports import (
    ReportFilter,
    member_history,
    parse_filter,
    session_report,
    unit_rollup,
    venue_rollup,
)
from attendance.sessions import create_session, end_session, parse_draft
from attendance.store import Store
from attendance.units import UnitTree, parse_unit_path
from attendance.users import add_user
from attendance.venues import add_venue
from server.app import create_app
from server.cli import main

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
END = T0 + timedelta(minutes=60)
NOW2 = T0 + timedelta(minutes=65)  # the second session is still running then
EVIL = "=1+2 王伟"
MEMBERS = {
    "M1": (EVIL, "北京/朝阳/一组"),
    "M2": ("李芳", "北京/朝阳/二组"),
    "M3": ("张娜", "北京/朝阳/一组"),
    "M4": ("刘敏", "北京/海淀"),
    "M5": ("陈静", "北京/海淀"),
    "M6": ("赵强", "上海"),
    "M7": ("孙丽", "上海"),
}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def iso(minutes: float) -> str:
    return at(minutes).isoformat()


@dataclass
class Scenario:
    session_id: int
    running_id: int
    members: dict[str, int]
    venues: dict[str, int]


class Events:
    """Builds a session's evidence as the ingestion path stores it."""

    def __init__(self, session_id: int) -> None:
        self.session_id = session_id
        self.pending: list[NewAttendanceEvent] = []

    def add(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        member: int | None = None,
        venue: int | None = None,
        when: datetime = T0,
    ) -> None:
        self.pending.append(
            NewAttendanceEvent(
                session_id=self.session_id,
                event_uuid=uuid.uuid4(),
                kind=kind,
                source="test",
                client_time=when,
                member_id=member,
                venue_id=venue,
                payload=payload,
            )
        )

    def broadcast(self, state: str, minute: float) -> None:
        self.add("broadcast", {"state": state, "at": iso(minute)}, when=at(minute))

    def media(
        self, start: float, end: float, *, member: int | None = None, venue: int | None = None
    ) -> None:
        self.add("media", {"from": iso(start), "to": iso(end)}, member=member, venue=venue)

    def beats(self, member: int, start: float, end: float) -> None:
        """Visible heartbeats every 15 s over [start, end)."""
        t = start
        while t < end:
            payload = {"status": "accepted", "happened_at": iso(t), "visible": True}
            self.add("heartbeat", payload, member=member, when=at(t))
            t += 0.25

    async def flush(self, store: Store, now: datetime = T0) -> None:
        async with store.write() as db:
            await append_attendance_events(db, self.pending, now=now)
        self.pending = []


async def check_in(
    store: Store, session_id: int, member: int, venue: int, minute: float, status: str = "accepted"
) -> None:
    """A check-in counts from its server time, so each is stored at its own moment."""
    events = Events(session_id)
    events.add("check_in", {"status": status}, member=member, venue=venue, when=at(minute))
    await events.flush(store, at(minute))


async def build(store: Store) -> Scenario:
    """The scripted world of the module docstring, the first session ended and finalized."""
    async with store.write() as db:
        tree = UnitTree(db, T0)
        units = {}
        for _, path in MEMBERS.values():
            units[path] = (await tree.ensure(parse_unit_path(path))).id
        venues = {}
        for slug, name, path in [
            ("bj-a", "朝阳第1会议室", "北京/朝阳"),
            ("bj-b", "海淀厅", "北京/海淀"),
        ]:
            info = await add_venue(db, slug=slug, name=name, unit_path=path, now=T0, actor="test")
            venues[slug] = info.id
        rows = [
            Member(
                member_no=no,
                name=name,
                unit_id=units[path],
                active=True,
                link_version=1,
                created_at=T0,
                updated_at=T0,
            )
            for no, (name, path) in MEMBERS.items()
        ]
        db.add_all(rows)
        await db.flush()
        members = {r.member_no: r.id for r in rows}
        for username, role in [("org", Role.ORGANISER), ("aud", Role.AUDITOR)]:
            await add_user(
                db, username=username, role=role, password=PASSWORD, now=T0, actor="test"
            )
        ids = []
        for title, start, slugs in [("学习会", T0, ["bj-a", "bj-b"]), ("第二场", at(120), [])]:
            draft = parse_draft(
                {
                    "title": title,
                    "scheduled_start": start,
                    "scheduled_end": start + timedelta(minutes=90),
                    "venues": slugs,
                    "expected_units": ["北京"],
                }
            )
            ids.append((await create_session(db, draft, now=T0, actor="test", user_id=None)).id)
        session_id, running_id = ids
        await db.execute(
            update(StudySession)
            .where(StudySession.id.in_(ids))
            .values(state=SessionState.LIVE, started_at=T0)
        )

        checks = [
            PresenceCheck(
                session_id=session_id,
                code="1111",
                opened_at=at(10),
                closes_at=at(11),
                announced_at=at(10),
            ),
            PresenceCheck(
                session_id=session_id,
                code="2222",
                opened_at=at(40),
                closes_at=at(41),
                announced_at=at(40),
            ),
        ]
        db.add_all(checks)
        await db.flush()
        passed = [("M1", 0), ("M1", 1), ("M2", 0), ("M3", 0), ("M3", 1), ("M4", 1), ("M6", 1)]
        for number, index in passed:
            check = checks[index]
            db.add(
                PresenceResponse(
                    check_id=check.id,
                    member_id=members[number],
                    answered_at=check.opened_at + timedelta(seconds=30),
                    code_given=check.code,
                    outcome="passed",
                )
            )
        question = QuizQuestion(
            session_id=session_id, position=1, prompt="1+1=?", points=10, created_at=T0
        )
        db.add(question)
        await db.flush()
        for number, points in [("M1", 10), ("M3", 5)]:
            db.add(
                QuizAnswer(
                    question_id=question.id,
                    answerer=f"member:{number}",
                    member_id=members[number],
                    answer={"choices": [1]},
                    answered_at=at(15),
                    correct=points == 10,
                    points_awarded=points,
                )
            )
        # M1's note was returned, then sent again: the newest row counts.
        for number, status in [
            ("M1", "returned"),
            ("M1", "submitted"),
            ("M2", "returned"),
            ("M3", "accepted"),
        ]:
            db.add(
                StudyNote(
                    session_id=session_id,
                    member_id=members[number],
                    body="笔记",
                    created_at=at(50),
                    status=status,
                )
            )
        await award(
            db,
            ref="quiz:1:member:M1",
            member_id=members["M1"],
            venue_id=None,
            unit_id=None,
            session_id=session_id,
            kind="quiz",
            points=10,
            reason="quiz",
            now=END,
        )
        await award(
            db,
            ref="correction:M1",
            member_id=members["M1"],
            venue_id=None,
            unit_id=None,
            session_id=None,
            kind="correction",
            points=-3,
            reason="typo",
            now=END,
        )

    events = Events(session_id)
    events.broadcast("live", 0)
    events.broadcast("paused", 20)
    events.broadcast("live", 30)
    m = members
    events.media(0, 45, member=m["M1"])
    events.media(47, 60, member=m["M1"])
    events.beats(m["M1"], 0, 60)
    events.media(0, 60, member=m["M2"])
    events.beats(m["M2"], 0, 60)
    events.media(30, 60, member=m["M6"])
    events.beats(m["M6"], 30, 60)
    events.media(0, 50, venue=venues["bj-a"])
    events.media(52, 60, venue=venues["bj-a"])
    events.media(0, 60, venue=venues["bj-b"])
    await events.flush(store)
    await check_in(store, session_id, m["M3"], venues["bj-a"], 2)
    await check_in(store, session_id, m["M2"], venues["bj-a"], 3, status="rejected")
    await check_in(store, session_id, m["M4"], venues["bj-b"], 31)
    await check_in(store, session_id, m["M3"], venues["bj-a"], 35)  # again: the stint goes on

    running = Events(running_id)
    running.broadcast("live", 61)
    running.media(61, 63, member=m["M1"])
    running.beats(m["M1"], 61, 63)
    await running.flush(store, at(61))
    return Scenario(session_id, running_id, members, venues)


async def finish(store: Store, scenario: Scenario) -> None:
    async with store.write() as db:
        await end_session(db, scenario.session_id, now=END, actor="test")
        await finalize_session(db, scenario.session_id, now=END)


def row(
    number: str,
    *,
    expected: bool = True,
    mode: str,
    venue: str | None = None,
    first: float | None,
    last: float | None,
    watched_min: float,
    passed: int,
    total: int,
    quiz: int = 0,
    notes: str = "none",
    qualified: bool,
    reason: str,
) -> dict[str, Any]:
    name, unit = MEMBERS[number]
    return {
        "member_no": number,
        "name": name,
        "unit": unit,
        "expected": expected,
        "mode": mode,
        "venue": venue,
        "first_join": iso(first) if first is not None else None,
        "last_leave": iso(last) if last is not None else None,
        "watched_s": watched_min * 60.0,
        "watched_min": float(watched_min),
        "share": round(watched_min / 50, 4),
        "presence_passed": passed,
        "presence_total": total,
        "quiz_points": quiz,
        "notes": notes,
        "qualified": qualified,
        "reason": reason,
        "makeup_minutes": 0.0,
        "makeup_share": 0.0,
        "makeup_qualified": False,
        "makeup_reason": "",
        "makeup_presence_passed": 0,
        "makeup_presence_total": 0,
    }


ROWS = [
    row(
        "M1",
        mode="remote",
        first=0,
        last=60,
        watched_min=48,
        passed=2,
        total=2,
        quiz=10,
        notes="submitted",
        qualified=True,
        reason="watched 96% of live time; passed 2 of 2 presence checks",
    ),
    row(
        "M2",
        mode="remote",
        first=0,
        last=60,
        watched_min=30,
        passed=1,
        total=2,
        notes="returned",
        qualified=False,
        reason="watched 60% of live time (needs 85%); passed 1 of 2 presence checks (needs 2)",
    ),
    row(
        "M3",
        mode="onsite",
        venue="bj-a",
        first=2,
        last=60,
        watched_min=46,
        passed=2,
        total=2,
        quiz=5,
        notes="accepted",
        qualified=True,
        reason="watched 92% of live time; passed 2 of 2 presence checks",
    ),
    row(
        "M4",
        mode="onsite",
        venue="bj-b",
        first=31,
        last=60,
        watched_min=29,
        passed=1,
        total=1,
        qualified=False,
        reason="watched 58% of live time (needs 85%)",
    ),
    row(
        "M5",
        mode="absent",
        first=None,
        last=None,
        watched_min=0,
        passed=0,
        total=0,
        qualified=False,
        reason="watched 0% of live time (needs 85%)",
    ),
    row(
        "M6",
        expected=False,
        mode="remote",
        first=30,
        last=60,
        watched_min=30,
        passed=1,
        total=1,
        qualified=False,
        reason="watched 60% of live time (needs 85%)",
    ),
]

UNITS = [
    {
        "unit": "上海",
        "depth": 1,
        "expected": 0,
        "present": 1,
        "guests": 1,
        "qualified": 0,
        "rate": None,
    },
    {
        "unit": "北京",
        "depth": 1,
        "expected": 5,
        "present": 4,
        "guests": 0,
        "qualified": 2,
        "rate": 0.4,
    },
    {
        "unit": "北京/朝阳",
        "depth": 2,
        "expected": 3,
        "present": 3,
        "guests": 0,
        "qualified": 2,
        "rate": 0.6667,
    },
    {
        "unit": "北京/朝阳/一组",
        "depth": 3,
        "expected": 2,
        "present": 2,
        "guests": 0,
        "qualified": 2,
        "rate": 1.0,
    },
    {
        "unit": "北京/朝阳/二组",
        "depth": 3,
        "expected": 1,
        "present": 1,
        "guests": 0,
        "qualified": 0,
        "rate": 0.0,
    },
    {
        "unit": "北京/海淀",
        "depth": 2,
        "expected": 2,
        "present": 1,
        "guests": 0,
        "qualified": 0,
        "rate": 0.0,
    },
]

VENUES = [
    # bj-a: screen 0-50, 52-60 within live 0-20, 30-60 = 48 min.
    {
        "venue": "bj-a",
        "name": "朝阳第1会议室",
        "uptime_s": 2880.0,
        "live_s": 3000.0,
        "uptime_share": 0.96,
        "checkins": 1,
        "onsite": 1,
    },
    {
        "venue": "bj-b",
        "name": "海淀厅",
        "uptime_s": 3000.0,
        "live_s": 3000.0,
        "uptime_share": 1.0,
        "checkins": 1,
        "onsite": 1,
    },
]


@pytest.fixture
async def scenario(store: Store) -> Scenario:
    return await build(store)


# --- the reports themselves -------------------------------------------------------------------


async def test_live_report_then_the_stored_one_after_the_end(
    store: Store, scenario: Scenario
) -> None:
    async with store.read() as db:
        live = await session_report(db, scenario.session_id, now=END)
    assert (live.final, live.state, live.live_s) == (False, "live", 3000.0)
    assert [r.as_json() for r in live.rows] == ROWS

    await finish(store, scenario)
    async with store.read() as db:
        stored = await session_report(db, scenario.session_id, now=NOW2)
    assert stored.as_json() == {
        "session": {"id": scenario.session_id, "title": "学习会", "state": "ended"},
        "final": True,
        "live_s": 3000.0,
        "generated_at": NOW2.isoformat(),
        "filter": {},
        "rows": ROWS,
    }


async def test_unit_and_venue_rollups(store: Store, scenario: Scenario) -> None:
    await finish(store, scenario)
    async with store.read() as db:
        report = await session_report(db, scenario.session_id, now=NOW2)
        venues = await venue_rollup(db, scenario.session_id, now=NOW2, rows=report.rows)
    assert [u.as_json() for u in unit_rollup(report.rows)] == UNITS
    assert [u.as_json() for u in unit_rollup(report.rows, under="北京/朝阳")] == UNITS[2:5]
    assert [v.as_json() for v in venues] == VENUES


async def test_filters(store: Store, scenario: Scenario) -> None:
    await finish(store, scenario)

    async def numbers(**raw: str) -> list[str]:
        async with store.read() as db:
            found = await session_report(
                db, scenario.session_id, now=NOW2, filters=parse_filter(**raw)
            )
        return [r.member_no for r in found.rows]

    assert await numbers(unit="北京/朝阳") == ["M1", "M2", "M3"]
    assert await numbers(unit=" 北京/朝阳/ ") == ["M1", "M2", "M3"]
    assert await numbers(unit="北京/朝") == []  # whole segments only
    assert await numbers(venue="bj-a") == ["M3"]
    assert await numbers(mode="absent") == ["M5"]
    assert await numbers(mode="remote") == ["M1", "M2", "M6"]
    assert await numbers(qualified="yes") == ["M1", "M3"]
    assert await numbers(qualified="no", unit="北京") == ["M2", "M4", "M5"]
    assert parse_filter(unit="北京", qualified="no").as_json() == {
        "unit": "北京",
        "qualified": False,
    }
    for raw, message in [
        ({"mode": "online"}, "mode: must be one of onsite, remote, absent"),
        ({"qualified": "maybe"}, "qualified: must be yes or no"),
        ({"venue": "Bad Slug"}, "venue: 'Bad Slug' is not a venue slug"),
        ({"unit": "北京//朝阳"}, "unit: unit path"),
    ]:
        with pytest.raises(Exception, match=message):
            parse_filter(**raw)


async def test_member_history_with_points(store: Store, scenario: Scenario) -> None:
    await finish(store, scenario)
    async with store.read() as db:
        history = await member_history(db, "M1", now=NOW2)
        absent = await member_history(db, "M7", now=NOW2)
    first = {k: v for k, v in ROWS[0].items() if k not in ("member_no", "name", "unit")}
    running = {
        **first,
        "first_join": iso(61),
        "last_leave": iso(63),
        "watched_s": 120.0,
        "watched_min": 2.0,
        "share": 0.5,
        "presence_passed": 0,
        "presence_total": 0,
        "quiz_points": 0,
        "notes": "none",
        "qualified": False,
        "reason": "watched 50% of live time (needs 85%)",
    }
    assert history.as_json() == {
        "member_no": "M1",
        "name": EVIL,
        "unit": "北京/朝阳/一组",
        "total_points": 17,  # attendance 10 + quiz 10 + a correction of -3
        "generated_at": NOW2.isoformat(),
        "sessions": [
            {
                "session_id": scenario.running_id,
                "title": "第二场",
                "state": "live",
                "scheduled_start": iso(120),
                "final": False,
                **running,
                "points": 0,
            },
            {
                "session_id": scenario.session_id,
                "title": "学习会",
                "state": "ended",
                "scheduled_start": iso(0),
                "final": True,
                **first,
                "points": 20,
            },
        ],
    }
    assert (absent.total_points, absent.sessions) == (0, [])


# --- exports ----------------------------------------------------------------------------------


def csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def read_csv(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "\n" not in text.replace("\r\n", "")
    return list(csv.reader(io.StringIO(text, newline="")))


async def test_csv_and_xlsx_exports_match_the_json_rows(store: Store, scenario: Scenario) -> None:
    await finish(store, scenario)
    async with store.read() as db:
        report = await session_report(
            db, scenario.session_id, now=NOW2, filters=ReportFilter(unit="北京")
        )
        venues = await venue_rollup(db, scenario.session_id, now=NOW2, rows=report.rows)
    table = members_table(report)
    keys = [c.key for c in table.columns]

    lines = read_csv(to_csv(table))
    assert lines[0] == [
        "报告 / Report",
        f"会议出勤 / Session attendance: 学习会 (#{scenario.session_id})",
    ]
    assert lines[1] == ["筛选 / Filter", f"session={scenario.session_id}; unit=北京"]
    assert lines[2] == ["生成时间 / Generated (UTC)", NOW2.isoformat(), "2026-11-24 09:05:00 UTC"]
    assert lines[3] == []
    assert lines[4][:2] == ["工号 / Member no.", "姓名 / Name"]
    expected = [[csv_cell(r[k]) for k in keys] for r in ROWS[:5]]
    expected[0][1] = "'" + EVIL  # defused: a spreadsheet shows it, never runs it
    assert lines[5:] == expected

    book = openpyxl.load_workbook(io.BytesIO(to_xlsx(table)), read_only=True)
    cells = [[v for v in r if v is not None] for r in book.active.iter_rows(values_only=True)]
    assert cells[:5] == lines[:5]  # the same header lines and headings
    got = [line[: len(keys)] for line in book.active.iter_rows(min_row=6, values_only=True)]

    def xlsx_cell(value: Any) -> Any:
        return csv_cell(value) if isinstance(value, bool) else value

    assert got == [tuple(xlsx_cell(r[k]) for k in keys) for r in ROWS[:5]]
    assert got[0][1] == EVIL  # a text cell in XLSX, no formula

    units = read_csv(to_csv(units_table(report, unit_rollup(report.rows))))
    assert units[5:] == [
        [
            csv_cell(u[k])
            for k in ("unit", "depth", "expected", "present", "guests", "qualified", "rate")
        ]
        for u in UNITS[1:]
    ]
    venue_lines = read_csv(to_csv(venues_table(report, venues)))
    assert venue_lines[5:] == [[csv_cell(v[k]) for k in v] for v in VENUES]


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
async def client(
    store: Store, scenario: Scenario, tmp_path: Path
) -> AsyncIterator[TestClient[Any, Any]]:
    await finish(store, scenario)
    app = create_app(make_settings(tmp_path, secret_key=SECRET), store, clock=FakeClock(NOW2))
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as c:
        yield c


async def test_api_reports_for_organiser_and_auditor(
    client: TestClient[Any, Any], store: Store, scenario: Scenario
) -> None:
    organiser, auditor = await log_in(client, "org"), await log_in(client, "aud")
    base = f"/api/sessions/{scenario.session_id}/report"
    for who in (organiser, auditor):
        r = await client.get(base, headers=who)
        assert r.status == 200, await r.text()
        assert (await r.json())["rows"] == ROWS
        r = await client.get(base + "?unit=北京/朝阳&qualified=yes", headers=who)
        body = await r.json()
        assert body["filter"] == {"unit": "北京/朝阳", "qualified": True}
        assert [x["member_no"] for x in body["rows"]] == ["M1", "M3"]
        r = await client.get(base + "/units", headers=who)
        assert (await r.json())["units"] == UNITS
        r = await client.get(base + "/venues", headers=who)
        assert (await r.json())["venues"] == VENUES
        r = await client.get("/api/members/M1/history", headers=who)
        assert [(s["session_id"], s["points"]) for s in (await r.json())["sessions"]] == [
            (scenario.running_id, 0),
            (scenario.session_id, 20),
        ]
    r = await client.get(base)
    assert r.status == 401
    r = await client.get("/api/members/nobody/history", headers=organiser)
    assert r.status == 404

    for query, name in [
        ("mode=online", "mode"),
        ("qualified=2", "qualified"),
        ("format=pdf", "format"),
        ("venue=A%20B", "venue"),
    ]:
        r = await client.get(f"{base}?{query}", headers=auditor)
        assert r.status == 400
        body = await r.json()
        assert body["error"] == "invalid_input"
        assert body["detail"].startswith(f"{name}: ")


async def test_api_exports_are_downloads_and_logged(
    client: TestClient[Any, Any], store: Store, scenario: Scenario
) -> None:
    auditor, organiser = await log_in(client, "aud"), await log_in(client, "org")
    base = f"/api/sessions/{scenario.session_id}/report"
    stamp = "20261124T090500Z"

    r = await client.get(base + "?format=csv&mode=onsite", headers=auditor)
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Disposition"] == (
        f'attachment; filename="studycast-session-{scenario.session_id}-members-{stamp}.csv"; '
        f"filename*=UTF-8''%E5%AD%A6%E4%B9%A0%E4%BC%9A-members-{stamp}.csv"
    )
    lines = read_csv(await r.read())
    assert [line[0] for line in lines[5:]] == ["M3", "M4"]

    r = await client.get(base + "/units?format=xlsx", headers=organiser)
    assert r.status == 200
    assert (
        r.headers["Content-Type"]
        == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    book = openpyxl.load_workbook(io.BytesIO(await r.read()), read_only=True)
    cells = list(book.active.iter_rows(values_only=True))
    assert [c[0] for c in cells[5:]] == [u["unit"] for u in UNITS]

    r = await client.get(base + "/venues?format=csv", headers=auditor)
    assert r.status == 200
    r = await client.get("/api/members/M1/history?format=csv", headers=auditor)
    assert r.status == 200
    assert "studycast-member-M1-history-" in r.headers["Content-Disposition"]
    r = await client.get(base + "?format=json", headers=auditor)  # JSON is no export
    assert r.status == 200

    async with store.read() as db:
        logged = [
            (e.actor, e.target, e.detail)
            for e in await db.scalars(
                select(AdminEvent)
                .where(AdminEvent.action == "report_exported")
                .order_by(AdminEvent.id)
            )
        ]
    sid = scenario.session_id
    assert logged == [
        (
            "user:aud",
            f"session:{sid}",
            {"report": "members", "format": "csv", "filter": {"session": sid, "mode": "onsite"}},
        ),
        (
            "user:org",
            f"session:{sid}",
            {"report": "units", "format": "xlsx", "filter": {"session": sid}},
        ),
        (
            "user:aud",
            f"session:{sid}",
            {"report": "venues", "format": "csv", "filter": {"session": sid}},
        ),
        (
            "user:aud",
            "member:M1",
            {"report": "history", "format": "csv", "filter": {"member_no": "M1"}},
        ),
    ]


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_world(database_url: str) -> Iterator[tuple[str, Scenario]]:
    async def go() -> Scenario:
        store = Store(database_url)
        try:
            from attendance.migrate import upgrade

            await upgrade(store)
            world = await build(store)
            await finish(store, world)
            return world
        finally:
            await store.close()

    yield database_url, asyncio.run(go())


def invoke(url: str, tmp_path: Path, *args: str) -> Any:
    result = CliRunner().invoke(
        main,
        ["--database-url", url, "--data-dir", str(tmp_path / "data"), "report", *args],
        prog_name="studycast",
    )
    return result


def test_cli_reports_and_exports(
    cli_world: tuple[str, Scenario], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    monkeypatch.chdir(tmp_path)
    url, world = cli_world
    sid = str(world.session_id)
    result = invoke(url, tmp_path, "session", sid, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == ROWS

    result = invoke(url, tmp_path, "session", sid, "--mode", "absent")
    assert result.exit_code == 0, result.output
    assert "M5" in result.stdout and "陈静" in result.stdout and "M1" not in result.stdout

    result = invoke(url, tmp_path, "units", sid, "--format", "json")
    assert json.loads(result.stdout)["units"] == UNITS
    result = invoke(url, tmp_path, "venues", sid, "--format", "json")
    assert json.loads(result.stdout)["venues"] == VENUES
    result = invoke(url, tmp_path, "member", "M1", "--format", "json")
    assert json.loads(result.stdout)["total_points"] == 17

    result = invoke(url, tmp_path, "session", sid, "--format", "csv", "--qualified", "yes")
    assert result.exit_code == 0, result.output
    lines = read_csv(result.stdout_bytes)
    assert [line[0] for line in lines[5:]] == ["M1", "M3"]
    out = tmp_path / "units.xlsx"
    result = invoke(url, tmp_path, "units", sid, "--format", "xlsx", "--output", str(out))
    assert result.exit_code == 0, result.output
    cells = list(openpyxl.load_workbook(out, read_only=True).active.iter_rows(values_only=True))
    assert [c[0] for c in cells[5:]] == [u["unit"] for u in UNITS]

    result = invoke(url, tmp_path, "venues", sid, "--format", "xlsx")
    assert result.exit_code == 2 and "--output" in result.stderr
    result = invoke(url, tmp_path, "session", sid, "--venue", "Bad Slug")
    assert result.exit_code == 1 and "venue: 'Bad Slug' is not a venue slug" in result.stderr

    async def exports() -> list[tuple[str, str | None, dict[str, Any]]]:
        store = Store(url)
        try:
            async with store.read() as db:
                return [
                    (e.actor, e.target, e.detail)
                    for e in await db.scalars(
                        select(AdminEvent)
                        .where(AdminEvent.action == "report_exported")
                        .order_by(AdminEvent.id)
                    )
                ]
        finally:
            await store.close()

    assert asyncio.run(exports()) == [
        (
            "cli",
            f"session:{sid}",
            {
                "report": "members",
                "format": "csv",
                "filter": {"session": world.session_id, "qualified": True},
                "output": "stdout",
            },
        ),
        (
            "cli",
            f"session:{sid}",
            {
                "report": "units",
                "format": "xlsx",
                "filter": {"session": world.session_id},
                "output": str(out),
            },
        ),
    ]
