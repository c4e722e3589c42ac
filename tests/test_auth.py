"""Logins over the real app and record store: cookie sessions, failures counted, the brute-force
brake, CSRF, logout, and who may call what."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from support import Client, FakeClock, make_settings

from attendance.models import AdminEvent, LoginSession, Role, User
from attendance.store import Store
from attendance.users import add_user
from server.app import create_app
from server.auth import COOKIE, LoginBrake, require_role
from server.http_errors import TooManyAttempts

PASSWORD = "correct horse battery staple"
BAD_CREDENTIALS = {"error": "bad_credentials", "detail": "wrong username or password"}


@pytest.fixture
async def client(store: Store, clock: FakeClock, tmp_path: Path) -> AsyncIterator[Client]:
    app = create_app(make_settings(tmp_path), store, clock=clock)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def users(store: Store, now: datetime) -> None:
    """olga the organiser, aldo the auditor, vera the venue operator."""
    async with store.write() as db:
        for username, role in [
            ("olga", Role.ORGANISER),
            ("aldo", Role.AUDITOR),
            ("vera", Role.VENUE_OPERATOR),
        ]:
            await add_user(
                db,
                username=username,
                role=role,
                password=PASSWORD,
                now=now,
                actor="test",
                display_name=username.title(),
            )


async def log_in(client: Client, username: str, password: str = PASSWORD) -> Any:
    return await client.post("/api/login", json={"username": username, "password": password})


async def csrf_of(client: Client, username: str) -> str:
    r = await log_in(client, username)
    assert r.status == 200, await r.text()
    return str((await r.json())["csrf_token"])


async def answer(r: Any) -> tuple[int, Any]:
    return r.status, await r.json()


async def user_row(store: Store, username: str) -> User:
    async with store.read() as db:
        user = await db.scalar(select(User).where(User.username == username))
    assert user is not None
    return user


async def admin_trail(store: Store) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    async with store.read() as db:
        rows = await db.scalars(select(AdminEvent).order_by(AdminEvent.id))
        return [(e.actor, e.action, e.target, e.detail) for e in rows if e.action != "user_added"]


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- logging in -------------------------------------------------------------------------------


async def test_login_sets_a_session_cookie(
    client: Client, users: None, store: Store, now: datetime
) -> None:
    r = await log_in(client, "olga")
    status, body = await answer(r)
    assert status == 200
    csrf = body["csrf_token"]
    assert body == {
        "user": {
            "id": 1,
            "username": "olga",
            "role": "organiser",
            "display_name": "Olga",
            "venue_id": None,
        },
        "csrf_token": csrf,
    }
    cookie = r.cookies[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert not cookie["secure"], "plain http base URL: a Secure cookie would never come back"
    assert cookie["max-age"] == str(12 * 3600)

    # The store keeps only a hash of the cookie token.
    async with store.read() as db:
        [row] = (await db.scalars(select(LoginSession))).all()
    assert row.token_hash == hashlib.sha256(cookie.value.encode()).hexdigest()
    assert cookie.value not in (row.token_hash, row.csrf_token)
    assert (row.csrf_token, row.created_at, row.expires_at, row.revoked_at) == (
        csrf,
        now,
        now + timedelta(hours=12),
        None,
    )

    assert await answer(await client.get("/api/me")) == (200, body)
    assert (await user_row(store, "olga")).last_login_at == now
    assert await admin_trail(store) == [
        ("user:olga", "login", "user:olga", {"role": "organiser", "source": "http:127.0.0.1"})
    ]


async def test_cookie_is_secure_behind_https(store: Store, users: None, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, public_base_url="https://study.example.org"), store)
    async with TestClient(TestServer(app)) as c:
        r = await log_in(c, "olga")
        assert r.status == 200
        assert r.cookies[COOKIE]["secure"] is True


async def test_me_needs_a_login(client: Client) -> None:
    assert await answer(await client.get("/api/me")) == (
        401,
        {"error": "not_logged_in", "detail": "not logged in, or the login has expired"},
    )
    client.session.cookie_jar.update_cookies({COOKIE: "forged-token"})
    assert (await client.get("/api/me")).status == 401


async def test_login_expires(client: Client, users: None, clock: FakeClock) -> None:
    assert (await log_in(client, "olga")).status == 200
    clock.advance(hours=11, minutes=59)
    assert (await client.get("/api/me")).status == 200
    clock.advance(minutes=1)
    assert (await client.get("/api/me")).status == 401


async def test_wrong_password_is_refused_and_counted(
    client: Client, users: None, store: Store
) -> None:
    before = metric(
        await (await client.get("/metrics")).text(),
        'studycast_login_failures_total{node="origin",reason="wrong_password"}',
    )
    assert await answer(await log_in(client, "olga", "not the password")) == (401, BAD_CREDENTIALS)
    assert COOKIE not in client.session.cookie_jar.filter_cookies(client.make_url("/"))

    assert (await user_row(store, "olga")).failed_logins == 1
    assert await admin_trail(store) == [
        ("http:127.0.0.1", "login_failed", "user:olga", {"reason": "wrong_password"})
    ]
    after = metric(
        await (await client.get("/metrics")).text(),
        'studycast_login_failures_total{node="origin",reason="wrong_password"}',
    )
    assert (before, after) == (0.0, 1.0)
    async with store.read() as db:
        assert (await db.scalars(select(LoginSession))).all() == []


async def test_unknown_user_gets_the_same_answer(client: Client, users: None, store: Store) -> None:
    assert await answer(await log_in(client, "ghost", "whatever it is")) == (401, BAD_CREDENTIALS)
    assert await admin_trail(store) == [
        ("http:127.0.0.1", "login_failed", "user:ghost", {"reason": "unknown_user"})
    ]
    text = await (await client.get("/metrics")).text()
    unknown = 'studycast_login_failures_total{node="origin",reason="unknown_user"}'
    assert metric(text, unknown) == 1.0


async def test_inactive_user_is_refused_and_loses_its_login(
    client: Client, users: None, store: Store
) -> None:
    assert (await log_in(client, "olga")).status == 200
    async with store.write() as db:
        user = await db.scalar(select(User).where(User.username == "olga"))
        assert user is not None
        user.active = False
    assert (await client.get("/api/me")).status == 401
    assert await answer(await log_in(client, "olga")) == (401, BAD_CREDENTIALS)


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"username": "olga"}, "password: Field required"),
        ({"username": "olga", "password": 12345678901}, "password: Input should be a valid string"),
        (
            {"username": "olga", "password": PASSWORD, "remember": True},
            "remember: Extra inputs are not permitted",
        ),
        ({"username": " ", "password": PASSWORD}, "username: is empty"),
        ({"username": "olga", "password": ""}, "password: is empty"),
    ],
)
async def test_login_body_is_checked(client: Client, body: dict[str, Any], detail: str) -> None:
    r = await client.post("/api/login", json=body)
    assert await answer(r) == (400, {"error": "invalid_input", "detail": detail})


async def test_login_refuses_other_origins(client: Client, users: None) -> None:
    own = str(client.make_url("/")).rstrip("/")
    r = await client.post(
        "/api/login",
        json={"username": "olga", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert await answer(r) == (
        403,
        {
            "error": "cross_origin",
            "detail": "cross-origin request from https://evil.example refused",
        },
    )
    r = await client.post(
        "/api/login",
        json={"username": "olga", "password": PASSWORD},
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert r.status == 403
    r = await client.post(
        "/api/login",
        json={"username": "olga", "password": PASSWORD},
        headers={"Origin": own, "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status == 200


async def test_a_new_login_replaces_the_old_one(client: Client, users: None, store: Store) -> None:
    assert (await log_in(client, "olga")).status == 200
    assert (await log_in(client, "aldo")).status == 200
    async with store.read() as db:
        rows = (await db.scalars(select(LoginSession).order_by(LoginSession.id))).all()
    assert [(r.user_id, r.revoked_at is None) for r in rows] == [(1, False), (2, True)]
    assert (await (await client.get("/api/me")).json())["user"]["username"] == "aldo"


# --- the brute-force brake --------------------------------------------------------------------


def test_brake_counts_failures_in_a_sliding_window(now: datetime) -> None:
    brake = LoginBrake(limit=3, window=timedelta(minutes=15))
    seen = []
    for minute in (0, 1, 2, 3, 15, 16, 17, 18):
        at = now + timedelta(minutes=minute)
        try:
            brake.admit("Olga", at)
            seen.append((minute, "admitted"))
        except TooManyAttempts as exc:
            seen.append((minute, f"wait {exc.retry_after}"))
    # 0, 1, 2 fill the window; at 3 the oldest (0) frees up at 15; later ones slide along.
    assert seen == [
        (0, "admitted"),
        (1, "admitted"),
        (2, "admitted"),
        (3, "wait 720"),
        (15, "admitted"),
        (16, "admitted"),
        (17, "admitted"),
        (18, "wait 720"),
    ]
    assert brake.retry_after("olga", now + timedelta(minutes=18)) == 720, "names fold case"
    brake.succeeded("OLGA")
    assert brake.retry_after("olga", now + timedelta(minutes=18)) is None


def test_brake_forgets_idle_names(now: datetime) -> None:
    brake = LoginBrake(limit=3, max_names=2)
    for name in ("a", "b", "c"):
        brake.admit(name, now)
    brake.admit("d", now + timedelta(minutes=20))  # over max_names: the stale ones are swept
    assert brake.retry_after("a", now + timedelta(minutes=20)) is None
    assert sorted(brake._attempts) == ["d"]


def test_brake_memory_stays_bounded_under_a_spray_of_names(now: datetime) -> None:
    brake = LoginBrake(limit=3, max_names=100)
    for i in range(1000):
        brake.admit(f"name{i}", now)
    assert len(brake._attempts) <= 100
    assert "name999" in brake._attempts, "the newest names are kept"


async def test_too_many_failures_answer_429(
    client: Client, users: None, store: Store, clock: FakeClock
) -> None:
    for _ in range(10):
        clock.advance(seconds=30)
        assert (await log_in(client, "olga", "guess guess guess")).status == 401
    # Within 15 minutes of the first failure even the right password waits.
    clock.advance(seconds=30)
    r = await log_in(client, "olga")
    assert await answer(r) == (
        429,
        {
            "error": "too_many_attempts",
            "detail": "too many failed logins for this username; try again in 600 seconds",
        },
    )
    assert r.headers["Retry-After"] == "600"
    r = await log_in(client, "OLGA ", "guess guess guess")
    assert r.status == 429, "case and spaces do not reset the brake"
    assert (await user_row(store, "olga")).failed_logins == 10, "refused before checking"
    text = await (await client.get("/metrics")).text()
    assert metric(text, 'studycast_login_throttled_total{node="origin"}') == 2.0
    wrong = 'studycast_login_failures_total{node="origin",reason="wrong_password"}'
    assert metric(text, wrong) == 10.0

    # Other usernames are not affected.
    assert (await log_in(client, "aldo")).status == 200
    # Once the oldest failure is 15 minutes old, one more attempt is allowed.
    clock.advance(seconds=600)
    assert (await log_in(client, "olga")).status == 200


# --- CSRF and logout --------------------------------------------------------------------------


VENUE = {"slug": "hall", "name": "Hall", "unit_path": "上海"}


@pytest.fixture
async def unit(store: Store, now: datetime) -> None:
    from attendance.units import UnitTree

    async with store.write() as db:
        await UnitTree(db, now).ensure(("上海",))


async def test_writes_need_the_csrf_token(client: Client, users: None, unit: None) -> None:
    csrf = await csrf_of(client, "olga")
    csrf_error = {
        "error": "csrf",
        "detail": "missing or wrong X-CSRF-Token header; reload the page and try again",
    }
    assert await answer(await client.post("/api/venues", json=VENUE)) == (403, csrf_error)
    r = await client.post("/api/venues", json=VENUE, headers={"X-CSRF-Token": csrf[:-1] + "x"})
    assert await answer(r) == (403, csrf_error)
    r = await client.post("/api/venues", json=VENUE, headers={"X-CSRF-Token": "令牌"})
    assert await answer(r) == (403, csrf_error)
    r = await client.post("/api/venues", json=VENUE, headers={"X-CSRF-Token": csrf})
    assert r.status == 201
    # Reads need no token.
    assert (await client.get("/api/venues")).status == 200


async def test_logout_revokes_the_login(
    client: Client, users: None, store: Store, now: datetime
) -> None:
    csrf = await csrf_of(client, "olga")
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/"))[COOKIE].value
    assert (await client.post("/api/logout")).status == 403, "logout needs the CSRF token too"

    r = await client.post("/api/logout", headers={"X-CSRF-Token": csrf})
    assert await answer(r) == (200, {"logged_out": True})
    assert r.cookies[COOKIE].value == ""
    assert (await client.get("/api/me")).status == 401

    # The old cookie, replayed, is worth nothing.
    client.session.cookie_jar.update_cookies({COOKIE: cookie})
    assert (await client.get("/api/me")).status == 401
    assert (await client.post("/api/logout", headers={"X-CSRF-Token": csrf})).status == 401
    async with store.read() as db:
        [row] = (await db.scalars(select(LoginSession))).all()
    assert row.revoked_at == now
    assert [a for _, a, _, _ in await admin_trail(store)] == ["login", "logout"]


# --- roles ------------------------------------------------------------------------------------


async def test_not_logged_in_gets_401_everywhere(client: Client) -> None:
    for method, path in [
        ("GET", "/api/units"),
        ("GET", "/api/venues"),
        ("POST", "/api/venues"),
        ("GET", "/api/sessions"),
        ("POST", "/api/sessions"),
        ("GET", "/api/sessions/1"),
        ("POST", "/api/logout"),
    ]:
        r = await client.request(method, path, json={})
        assert (r.status, (await r.json())["error"]) == (401, "not_logged_in"), (method, path)


async def test_auditor_reads_but_never_writes(client: Client, users: None, unit: None) -> None:
    csrf = await csrf_of(client, "aldo")
    for path in ("/api/units", "/api/venues", "/api/sessions"):
        assert (await client.get(path)).status == 200, path
    r = await client.post("/api/venues", json=VENUE, headers={"X-CSRF-Token": csrf})
    assert await answer(r) == (
        403,
        {"error": "forbidden", "detail": "the role auditor may not POST /api/venues"},
    )
    r = await client.post("/api/sessions", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status == 403
    # Ending one's own login is not a write to the record.
    assert (await client.post("/api/logout", headers={"X-CSRF-Token": csrf})).status == 200


async def test_auditor_is_refused_writes_even_where_listed(
    store: Store, users: None, tmp_path: Path
) -> None:
    app = create_app(make_settings(tmp_path), store)

    @require_role(Role.ORGANISER, Role.AUDITOR)
    async def annotate(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_route("*", "/api/annotate", annotate)
    async with TestClient(TestServer(app)) as c:
        csrf = await csrf_of(c, "aldo")
        assert (await c.get("/api/annotate")).status == 200
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            r = await c.request(method, "/api/annotate", headers={"X-CSRF-Token": csrf})
            assert await answer(r) == (
                403,
                {"error": "forbidden", "detail": "auditors have read-only access"},
            ), method
        await c.post("/api/logout", headers={"X-CSRF-Token": csrf})
        csrf = await csrf_of(c, "olga")
        assert (await c.delete("/api/annotate", headers={"X-CSRF-Token": csrf})).status == 200


async def test_venue_operator_sees_venues_only(client: Client, users: None) -> None:
    await csrf_of(client, "vera")
    assert (await client.get("/api/venues")).status == 200
    for path in ("/api/sessions", "/api/units", "/api/sessions/1"):
        r = await client.get(path)
        assert await answer(r) == (
            403,
            {"error": "forbidden", "detail": f"the role venue_operator may not GET {path}"},
        )


async def test_organiser_may_create(client: Client, users: None, unit: None) -> None:
    csrf = await csrf_of(client, "olga")
    r = await client.post("/api/venues", json=VENUE, headers={"X-CSRF-Token": csrf})
    assert r.status == 201
