"""The world of the auditor browser tests: the demo organisation plus one scripted, ended and
evaluated session, written straight into the SQLite store of a data directory; then the real
``studycast serve --demo`` over that directory in a subprocess.

The script (minutes after T0 = 2026-11-24 08:00 UTC; default rule: 85% of live time and every
presence check of one; expected unit 北京, 12 demo members):

- broadcast live 0-20, paused 20-25, live 25-60, ended at 60: 55 live minutes;
- presence check 10-11 (D0001 and D0003 pass it); quiz question 1 open 40-41;
- screens of bj-chaoyang-1 and sh-pudong-1 connected 0-60.

| member | how | counted (min) | share | checks | ok |
|---|---|---|---|---|---|
| D0001 王伟 北京/朝阳办公区 | remote 0-60 | 0-20, 25-60 = 55 | 100% | 1/1 | yes |
| D0002 李敏 北京/海淀办公区 | remote 0-30, misses the check | 0-10 = 10 | 18.2% | 0/1 | no |
| D0003 张洋 北京/西城办公区 | at bj-chaoyang-1 from 2 | 2-20, 25-60 = 53 | 96.4% | 1/1 | yes |
| D0004 刘军 上海/浦东办公区 | guest at sh-pudong-1 from 31 | 31-60 = 29 | 52.7% | 0/0 | no |

The nine other expected members are absent.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from attendance.demo import LOGINS_FILE, seed_demo
from attendance.evaluation import finalize_session
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.migrate import upgrade
from attendance.models import (
    Member,
    PresenceCheck,
    PresenceResponse,
    QuizQuestion,
    SessionState,
    StudySession,
    Venue,
)
from attendance.sessions import create_session, end_session, parse_draft
from attendance.store import Store
from server.settings import Settings

REPO = Path(__file__).resolve().parent.parent
STUDYCAST = REPO / ".venv" / "bin" / "studycast"
T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
END = T0 + timedelta(minutes=60)
TITLE = "十一月学习会 / November study"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@dataclass(frozen=True)
class AuditWorld:
    session_id: int
    demo_session_id: int
    auditor: tuple[str, str]  # username, password


def _event(
    session_id: int,
    kind: str,
    payload: dict[str, Any],
    *,
    member: int | None = None,
    venue: int | None = None,
    when: datetime = T0,
) -> NewAttendanceEvent:
    return NewAttendanceEvent(
        session_id=session_id,
        event_uuid=uuid.uuid4(),
        kind=kind,
        source="test",
        client_time=when,
        member_id=member,
        venue_id=venue,
        payload=payload,
    )


def _remote(session_id: int, member: int, start: float, end: float) -> list[NewAttendanceEvent]:
    """Media delivered over [start, end) and visible heartbeats every 15 s."""
    events = [
        _event(
            session_id,
            "media",
            {"from": at(start).isoformat(), "to": at(end).isoformat()},
            member=member,
        )
    ]
    minute = start
    while minute < end:
        payload = {"status": "accepted", "happened_at": at(minute).isoformat(), "visible": True}
        events.append(_event(session_id, "heartbeat", payload, member=member, when=at(minute)))
        minute += 0.25
    return events


async def _prepare(data_dir: Path) -> int:
    settings = Settings(_env_file=None, data_dir=data_dir)
    settings.ensure_data_dir()
    store = Store(settings.resolved_database_url())
    try:
        await upgrade(store)
        await seed_demo(store, data_dir=data_dir, now=T0 - timedelta(days=1))
        async with store.write() as db:
            members = {no: i for no, i in await db.execute(select(Member.member_no, Member.id))}
            venues = {slug: i for slug, i in await db.execute(select(Venue.slug, Venue.id))}
            draft = parse_draft(
                {
                    "title": TITLE,
                    "scheduled_start": T0,
                    "scheduled_end": T0 + timedelta(minutes=60),
                    "venues": ["bj-chaoyang-1", "sh-pudong-1"],
                    "expected_units": ["北京"],
                }
            )
            session_id = (await create_session(db, draft, now=T0, actor="test", user_id=None)).id
            await db.execute(
                update(StudySession)
                .where(StudySession.id == session_id)
                .values(state=SessionState.LIVE, started_at=T0)
            )
            check = PresenceCheck(
                session_id=session_id,
                code="4711",
                opened_at=at(10),
                closes_at=at(11),
                announced_at=at(10),
            )
            db.add(check)
            db.add(
                QuizQuestion(
                    session_id=session_id,
                    position=1,
                    prompt="学习的目的是什么？",
                    points=10,
                    created_at=T0,
                    opened_at=at(40),
                    closes_at=at(41),
                    closed_at=at(41),
                )
            )
            await db.flush()
            for number in ("D0001", "D0003"):
                db.add(
                    PresenceResponse(
                        check_id=check.id,
                        member_id=members[number],
                        answered_at=at(10.5),
                        code_given="4711",
                        outcome="passed",
                    )
                )
        events = [
            _event(session_id, "broadcast", {"state": state, "at": at(m).isoformat()}, when=at(m))
            for state, m in (("live", 0), ("paused", 20), ("live", 25))
        ]
        events += _remote(session_id, members["D0001"], 0, 60)
        events += _remote(session_id, members["D0002"], 0, 30)
        for slug in ("bj-chaoyang-1", "sh-pudong-1"):
            span = {"from": at(0).isoformat(), "to": at(60).isoformat()}
            events.append(_event(session_id, "media", span, venue=venues[slug]))
        async with store.write() as db:
            await append_attendance_events(db, events, now=T0)
        # A check-in counts from its server time: each is stored at its own moment.
        for number, slug, minute in (("D0003", "bj-chaoyang-1", 2), ("D0004", "sh-pudong-1", 31)):
            checkin = _event(
                session_id,
                "check_in",
                {"status": "accepted"},
                member=members[number],
                venue=venues[slug],
                when=at(minute),
            )
            async with store.write() as db:
                await append_attendance_events(db, [checkin], now=at(minute))
        async with store.write() as db:
            await end_session(db, session_id, now=END, actor="test")
            await finalize_session(db, session_id, now=END)
        return session_id
    finally:
        await store.close()


def prepare(data_dir: Path) -> AuditWorld:
    """Seed the demo and the scripted session into ``data_dir``'s SQLite store."""
    session_id = asyncio.run(_prepare(data_dir))
    logins = json.loads((data_dir / LOGINS_FILE).read_text(encoding="utf-8"))
    auditor = next(x for x in logins if x["role"] == "auditor")
    return AuditWorld(
        session_id=session_id,
        demo_session_id=1,
        auditor=(auditor["username"], auditor["password"]),
    )


@contextmanager
def serve_demo(data_dir: Path) -> Iterator[str]:
    """``studycast serve --demo`` on a free port over ``data_dir``; yields its base URL."""
    log_path = data_dir / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYCAST_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(STUDYCAST),
                "serve",
                "--demo",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--data-dir",
                str(data_dir),
            ],
            cwd=data_dir,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        try:
            yield _wait_for_url(proc, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
            assert proc.stdout is not None
            proc.stdout.close()


def _wait_for_url(proc: subprocess.Popen[bytes], log_path: Path) -> str:
    """The base URL from the server's "studycast is running at URL/" line."""
    assert proc.stdout is not None
    prefix = "studycast is running at "
    deadline = time.monotonic() + START_TIMEOUT_S
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(timeout=left):
                line = proc.stdout.readline().decode()
                if line.startswith(prefix):
                    return line[len(prefix) :].strip().rstrip("/")
                if not line:  # the server exited
                    break
    raise AssertionError(
        f"studycast serve did not start (exit code {proc.poll()}):\n"
        + log_path.read_text(errors="replace")[-4000:]
    )
