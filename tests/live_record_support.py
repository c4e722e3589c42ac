"""Helpers for the live-record API tests: a small organisation with one running session, the
callers' credentials as request headers, event builders and an SSE reader."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from sqlalchemy import func, select
from support import Client, FakeClock

from attendance.models import AttendanceEvent, Member, Role
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from attendance.units import UnitTree, parse_unit_path
from attendance.users import add_user
from attendance.venues import add_venue
from server.auth import COOKIE, CSRF_HEADER
from server.tokens import TokenRole, issue

SECRET = "s" * 48
PASSWORD = "correct horse battery staple"
UNIT = "北京/朝阳"
# Expected members of the session (unit 北京 and below), then one outside it.
MEMBERS = {"M1": "王伟", "M2": "李芳", "M3": "张娜", "M4": "刘敏"}
OUTSIDER = ("M5", "陈静")
VENUES = {"bj-a": "朝阳第1会议室", "bj-b": "朝阳第2会议室"}
OTHER_VENUE = ("sh-c", "浦东报告厅")
WAIT_S = 5.0


@dataclass
class World:
    """The running session and everything a test needs to call its API."""

    client: Client
    clock: FakeClock
    store: Store
    session_id: int
    other_session_id: int
    member_ids: dict[str, int]
    venue_ids: dict[str, int]
    organiser: dict[str, str] = field(default_factory=dict)
    auditor: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/api/sessions/{self.session_id}"

    def member_token(self, number: str, *, version: int = 1, session_id: int | None = None) -> str:
        return issue(
            SECRET,
            session_id=session_id or self.session_id,
            role=TokenRole.MEMBER,
            subject=f"member:{number}",
            now=self.clock(),
            version=version,
        )

    def venue_token(self, slug: str, *, session_id: int | None = None) -> str:
        return issue(
            SECRET,
            session_id=session_id or self.session_id,
            role=TokenRole.VENUE,
            subject=f"venue:{slug}",
            now=self.clock(),
        )

    def member(self, number: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.member_token(number)}"}

    def venue(self, slug: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.venue_token(slug)}"}

    async def send(self, headers: dict[str, str], *events: dict[str, Any]) -> dict[str, Any]:
        """POST a batch; asserts 200 and returns the report."""
        r = await self.client.post(
            f"{self.base}/events", json={"events": list(events)}, headers=headers
        )
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
        return body

    async def send_one(self, headers: dict[str, str], event: dict[str, Any]) -> dict[str, Any]:
        results = (await self.send(headers, event))["results"]
        assert len(results) == 1
        outcome: dict[str, Any] = results[0]
        return outcome

    async def get(self, path: str, headers: dict[str, str]) -> Any:
        r = await self.client.get(path, headers=headers)
        assert r.status == 200, await r.text()
        return await r.json()

    async def post(
        self, path: str, headers: dict[str, str], body: Any = None, *, status: int = 200
    ) -> Any:
        r = await self.client.post(path, json=body, headers=headers)
        assert r.status == status, await r.text()
        return await r.json()

    async def checkin_code(self, slug: str) -> dict[str, Any]:
        code: dict[str, Any] = await self.get(
            f"{self.base}/venues/{slug}/checkin-code", self.venue(slug)
        )
        return code

    async def event_count(self) -> int:
        async with self.store.read() as db:
            return int(
                await db.scalar(
                    select(func.count())
                    .select_from(AttendanceEvent)
                    .where(AttendanceEvent.session_id == self.session_id)
                )
                or 0
            )

    async def stored(self, event_id: str) -> AttendanceEvent:
        async with self.store.read() as db:
            row = await db.scalar(
                select(AttendanceEvent).where(
                    AttendanceEvent.session_id == self.session_id,
                    AttendanceEvent.event_uuid == uuid.UUID(event_id),
                )
            )
        assert row is not None, f"event {event_id} was not stored"
        return row


def event(kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    """A client event of ``kind`` with a fresh UUID."""
    return {"id": str(uuid.uuid4()), "type": kind, "at": at.isoformat(), **fields}


async def seed(store: Store, now: datetime) -> tuple[int, int, dict[str, int], dict[str, int]]:
    """Units, venues, members, logins and two sessions; returns their ids."""
    async with store.write() as db:
        tree = UnitTree(db, now)
        unit = await tree.ensure(parse_unit_path(UNIT))
        other_unit = await tree.ensure(parse_unit_path("上海/浦东"))
        venue_ids = {}
        for slug, name in [*VENUES.items(), OTHER_VENUE]:
            path = "上海/浦东" if slug == OTHER_VENUE[0] else UNIT
            info = await add_venue(db, slug=slug, name=name, unit_path=path, now=now, actor="test")
            venue_ids[slug] = info.id
        rows = []
        for number, name in [*MEMBERS.items(), OUTSIDER]:
            row = Member(
                member_no=number,
                name=name,
                unit_id=other_unit.id if number == OUTSIDER[0] else unit.id,
                active=True,
                link_version=1,
                created_at=now,
                updated_at=now,
            )
            db.add(row)
            rows.append(row)
        await db.flush()
        member_ids = {r.member_no: r.id for r in rows}
        for username, role in [("org", Role.ORGANISER), ("aud", Role.AUDITOR)]:
            await add_user(db, username=username, role=role, password=PASSWORD, now=now, actor="t")
        ids = []
        for title, venues, units in [
            ("学习会", list(VENUES), ["北京"]),
            ("另一场", [OTHER_VENUE[0]], ["上海"]),
        ]:
            draft = parse_draft(
                {
                    "title": title,
                    "scheduled_start": now,
                    "scheduled_end": now.replace(hour=now.hour + 2),
                    "venues": venues,
                    "expected_units": units,
                }
            )
            session = await create_session(db, draft, now=now, actor="test", user_id=None)
            ids.append(session.id)
    return ids[0], ids[1], member_ids, venue_ids


async def log_in(client: Client, username: str) -> dict[str, str]:
    """Log in; the headers (cookie and CSRF token) that act as that user."""
    r = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert r.status == 200, await r.text()
    csrf = (await r.json())["csrf_token"]
    return {"Cookie": f"{COOKIE}={r.cookies[COOKIE].value}", CSRF_HEADER: csrf}


@dataclass
class Sse:
    event: str
    data: Any


class SseReader:
    """Reads a text/event-stream body event by event, every read bounded in time."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> Sse:
        async with asyncio.timeout(WAIT_S):
            name = "message"
            data: list[str] = []
            while line_bytes := await self.response.content.readline():
                line = line_bytes.decode("utf-8").removesuffix("\n").removesuffix("\r")
                if line.startswith(":"):
                    continue
                if line:
                    key, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if key == "data":
                        data.append(value)
                    elif key == "event":
                        name = value
                elif data:
                    return Sse(name, json.loads("\n".join(data)))
                else:
                    name = "message"
            raise AssertionError("the stream ended")

    async def until(self, kind: str) -> tuple[list[str], Sse]:
        """Events up to the first ``kind``: the kinds skipped, and that event."""
        skipped = []
        while (sse := await self.next()).event != kind:
            skipped.append(sse.event)
        return skipped, sse
