"""Editing a scheduled session over ``PATCH /api/sessions/{id}``, on SQLite and PostgreSQL:
partial changes, validation like a new session, the admin trail, and the refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from support import Client, FakeClock, make_settings

from attendance.models import AdminEvent, Role, SessionState, StudySession
from attendance.store import Store
from attendance.units import UnitTree
from attendance.users import add_user
from attendance.venues import add_venue
from server.app import create_app

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def client(store: Store, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Client]:
    app: web.Application = create_app(make_settings(tmp_path), store, clock=clock)
    async with TestClient(TestServer(app)) as c:
        yield c


async def log_in(client: Client, username: str) -> dict[str, str]:
    r = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert r.status == 200, await r.text()
    return {"X-CSRF-Token": str((await r.json())["csrf_token"])}


@pytest.fixture
async def organiser(client: Client, store: Store, now: datetime) -> dict[str, str]:
    """Logins, two units with a venue each; the client is logged in as organiser "olga"."""
    async with store.write() as db:
        for name, role in (("olga", Role.ORGANISER), ("ali", Role.AUDITOR)):
            await add_user(db, username=name, role=role, password=PASSWORD, now=now, actor="t")
        tree = UnitTree(db, now)
        await tree.ensure(("上海",))
        await tree.ensure(("北京",))
        await add_venue(db, slug="hall", name="Hall", unit_path="上海", now=now, actor="t")
        await add_venue(db, slug="room", name="Room", unit_path="北京", now=now, actor="t")
    return await log_in(client, "olga")


@pytest.fixture
async def session_id(client: Client, organiser: dict[str, str]) -> int:
    body = {
        "title": "第十二讲",
        "scheduled_start": "2026-12-01T19:00:00+08:00",
        "scheduled_end": "2026-12-01T21:00:00+08:00",
        "venues": ["hall"],
        "expected_units": ["上海"],
    }
    r = await client.post("/api/sessions", json=body, headers=organiser)
    assert r.status == 201, await r.text()
    return int((await r.json())["id"])


async def patch(
    client: Client, headers: dict[str, str], session_id: int, body: Any
) -> tuple[int, dict[str, Any]]:
    r = await client.patch(f"/api/sessions/{session_id}", json=body, headers=headers)
    return r.status, await r.json()


async def trail(store: Store) -> list[dict[str, Any]]:
    async with store.read() as db:
        rows = await db.scalars(
            select(AdminEvent).where(AdminEvent.action == "session_updated").order_by(AdminEvent.id)
        )
        return [{"actor": e.actor, "target": e.target, **e.detail} for e in rows]


async def test_partial_edits_change_only_the_named_fields_and_are_logged(
    client: Client, organiser: dict[str, str], session_id: int, store: Store
) -> None:
    before = await (await client.get(f"/api/sessions/{session_id}")).json()
    status, body = await patch(
        client,
        organiser,
        session_id,
        {
            "title": " 第十三讲 ",
            "scheduled_end": "2026-12-01T21:30:00+08:00",
            "venues": ["room", "hall"],
            "expected_units": ["北京"],
            "attendance_rule": {"min_share": 0.5},
            "recording_enabled": False,
            "video_codec": "vp8",
        },
    )
    assert status == 200, body
    assert body["changed"] == [
        "attendance_rule",
        "expected_units",
        "recording_enabled",
        "scheduled_end",
        "title",
        "venues",
        "video_codec",
    ]
    shown = await (await client.get(f"/api/sessions/{session_id}")).json()
    assert {k: v for k, v in body.items() if k != "changed"} == shown
    assert shown["title"] == "第十三讲"
    assert shown["scheduled_start"] == before["scheduled_start"]
    assert shown["scheduled_end"] == "2026-12-01T13:30:00+00:00"
    assert shown["venues"] == [{"slug": "hall", "name": "Hall"}, {"slug": "room", "name": "Room"}]
    assert shown["expected_units"] == ["北京"]
    assert shown["attendance_rule"] == {**before["attendance_rule"], "min_share": 0.5}
    assert (shown["recording_enabled"], shown["video_codec"]) == (False, "vp8")
    assert shown["description"] == before["description"]

    # The same edit again changes nothing and logs nothing.
    status, body = await patch(client, organiser, session_id, {"title": "第十三讲"})
    assert (status, body["changed"]) == (200, [])

    [entry] = await trail(store)
    assert entry["actor"] == "user:olga"
    assert entry["target"] == f"session:{session_id}"
    assert entry["changes"]["title"] == {"before": "第十二讲", "after": "第十三讲"}
    assert entry["changes"]["venues"] == {"before": ["hall"], "after": ["hall", "room"]}
    assert entry["changes"]["scheduled_end"] == {
        "before": "2026-12-01T13:00:00+00:00",
        "after": "2026-12-01T13:30:00+00:00",
    }
    assert entry["changes"]["attendance_rule"]["before"]["min_share"] == 0.85
    assert entry["changes"]["attendance_rule"]["after"]["min_share"] == 0.5
    assert entry["changes"]["video_codec"] == {"before": "h264", "after": "vp8"}
    assert "scheduled_start" not in entry["changes"]


@pytest.mark.parametrize(
    ("body", "status", "code", "detail"),
    [
        ({"title": ""}, 400, "invalid_input", "title: String should have at least 1 character"),
        ({"title": None}, 400, "invalid_input", "title: Input should be a valid string"),
        ({"colour": "red"}, 400, "invalid_input", "colour: Extra inputs are not permitted"),
        ({"state": "live"}, 400, "invalid_input", "state: Extra inputs are not permitted"),
        ({"video_codec": "av1"}, 400, "invalid_input", "video_codec: Input should be"),
        (
            {"scheduled_end": "2026-12-01T18:00:00+08:00"},
            400,
            "invalid_input",
            "scheduled_end must be after scheduled_start",
        ),
        (
            {"scheduled_start": "2026-12-01T19:00:00"},
            400,
            "invalid_input",
            "scheduled_start: Input should have timezone info",
        ),
        (
            {"attendance_rule": {"min_share": 2}},
            400,
            "invalid_input",
            "attendance_rule.min_share: Input should be less than or equal to 1",
        ),
        (
            {"attendance_rule": {"bonus": 1}},
            400,
            "invalid_input",
            "attendance_rule.bonus: Extra inputs are not permitted",
        ),
        ({"venues": ["hall", "hall"]}, 400, "invalid_input", "venues: lists an entry twice"),
        ({"venues": ["nowhere"]}, 404, "not_found", "no venue 'nowhere'"),
        ({"expected_units": ["深圳"]}, 404, "not_found", "no unit at path '深圳'"),
    ],
)
async def test_bad_edits_are_refused_naming_the_field(
    client: Client,
    organiser: dict[str, str],
    session_id: int,
    store: Store,
    body: dict[str, Any],
    status: int,
    code: str,
    detail: str,
) -> None:
    before = await (await client.get(f"/api/sessions/{session_id}")).json()
    got_status, got = await patch(client, organiser, session_id, body)
    assert (got_status, got["error"]) == (status, code), got
    assert got["detail"].startswith(detail), got["detail"]
    assert await (await client.get(f"/api/sessions/{session_id}")).json() == before
    assert await trail(store) == []


async def test_body_must_be_a_json_object(
    client: Client, organiser: dict[str, str], session_id: int
) -> None:
    status, got = await patch(client, organiser, session_id, ["title"])
    assert (status, got["error"]) == (400, "invalid_input")


async def test_an_ended_session_cannot_be_edited(
    client: Client, organiser: dict[str, str], session_id: int, store: Store
) -> None:
    r = await client.post(f"/api/sessions/{session_id}/end", headers=organiser)
    assert r.status == 200, await r.text()
    status, got = await patch(client, organiser, session_id, {"title": "later"})
    assert (status, got["error"]) == (409, "session_ended"), got
    assert await trail(store) == []


async def test_the_codec_is_fixed_once_broadcast(
    client: Client, organiser: dict[str, str], session_id: int, store: Store, now: datetime
) -> None:
    async with store.write() as db:
        session = await db.get(StudySession, session_id)
        assert session is not None
        session.state = SessionState.PAUSED
        session.started_at = now
    status, got = await patch(client, organiser, session_id, {"video_codec": "vp8"})
    assert (status, got["error"]) == (409, "codec_fixed"), got
    assert "h264" in got["detail"]
    # Other fields of a paused session may still change; the same codec is no change.
    status, got = await patch(
        client, organiser, session_id, {"title": "直播中", "video_codec": "h264"}
    )
    assert (status, got["changed"], got["video_codec"]) == (200, ["title"], "h264")


async def test_only_organisers_edit(
    client: Client, organiser: dict[str, str], session_id: int, store: Store
) -> None:
    await client.post("/api/logout", headers=organiser)
    status, got = await patch(client, {}, session_id, {"title": "x"})
    assert (status, got["error"]) == (401, "not_logged_in")
    auditor = await log_in(client, "ali")
    status, got = await patch(client, auditor, session_id, {"title": "x"})
    assert (status, got["error"]) == (403, "forbidden")
    assert await trail(store) == []


async def test_unknown_session_is_404(client: Client, organiser: dict[str, str]) -> None:
    status, got = await patch(client, organiser, 77, {"title": "x"})
    assert (status, got) == (404, {"error": "not_found", "detail": "no study session 77"})
