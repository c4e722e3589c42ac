"""Auditors are read-only everywhere, enforced on the server: every write endpoint of the app,
found by walking its routes (so a new one cannot be forgotten), answers 403 to an auditor's
login. Their logins are in the admin trail, and they can read what they audit."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from live_record_support import SECRET, World, log_in, seed
from sqlalchemy import select
from support import FakeClock, make_settings

from attendance.models import AdminEvent
from attendance.store import Store
from server.app import create_app
from server.auth import PUBLIC, SELF_SERVICE, access_of

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Writes open to anyone by design, each for a reason an auditor does not change:
NOT_AUDITOR_WRITES = {
    "POST /api/login": "logging in (how an auditor starts)",
    "POST /api/logout": "ends the caller's own login",
}
MEDIA_PREFIXES = ("/whip/", "/whep/")  # authenticated by media tokens, never by a login


@pytest.fixture
async def world(
    store: Store, clock: FakeClock, now: datetime, tmp_path: Path
) -> AsyncIterator[World]:
    session_id, other_id, member_ids, venue_ids = await seed(store, now)
    app = create_app(make_settings(tmp_path, secret_key=SECRET), store, clock=clock)
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        w = World(client, clock, store, session_id, other_id, member_ids, venue_ids)
        w.organiser = await log_in(client, "org")
        w.auditor = await log_in(client, "aud")
        yield w


def _writes(app: web.Application) -> list[tuple[str, str, object]]:
    found = []
    for route in app.router.routes():
        if route.method not in UNSAFE or route.resource is None:
            continue
        found.append((route.method, route.resource.canonical, access_of(route.handler)))
    return sorted(found, key=lambda r: (r[1], r[0]))


def _concrete(path: str, w: World) -> str:
    values = {"id": str(w.session_id), "member_no": "M1", "slug": "bj-a"}
    return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: values.get(m.group(1), "1"), path)


async def test_every_write_endpoint_refuses_an_auditor(world: World) -> None:
    w = world
    app = w.client.app
    assert app is not None
    writes = _writes(app)
    assert len(writes) >= 20, "the app's write endpoints were not found"
    checked = []
    for method, path, access in writes:
        key = f"{method} {path}"
        if key in NOT_AUDITOR_WRITES or path.startswith(MEDIA_PREFIXES):
            assert access in (PUBLIC, SELF_SERVICE), f"{key} is exempt but not public"
            continue
        assert access not in (PUBLIC, SELF_SERVICE), f"{key} is open to anyone: say why here"
        r = await w.client.request(method, _concrete(path, w), json={}, headers=w.auditor)
        body = await r.json()
        assert (r.status, body["error"]) == (403, "forbidden"), f"{key}: {r.status} {body}"
        checked.append(key)
    # The same requests from the organiser are not refused for who they are.
    for key in checked:
        method, path = key.split(" ", 1)
        r = await w.client.request(method, _concrete(path, w), json={}, headers=w.organiser)
        assert r.status != 403 or (await r.json())["error"] != "forbidden", key


async def test_auditor_logins_are_logged_and_reads_allowed(world: World) -> None:
    w = world
    async with w.store.read() as db:
        logins = [
            (a.actor, a.detail["role"])
            for a in await db.scalars(select(AdminEvent).where(AdminEvent.action == "login"))
        ]
    assert ("user:aud", "auditor") in logins
    for path in (
        "/api/sessions",
        f"/api/sessions/{w.session_id}",
        f"/api/sessions/{w.session_id}/attendance",
        f"/api/sessions/{w.session_id}/questions",
        f"/api/sessions/{w.session_id}/presence-checks",
        f"/api/sessions/{w.session_id}/notes",
        "/api/leaderboard?by=unit",
    ):
        r = await w.client.get(path, headers=w.auditor)
        assert r.status == 200, f"{path}: {r.status} {await r.text()}"
