"""The aiohttp app over a real record store (SQLite file and PostgreSQL): health, static pages,
one JSON error shape for every failure, security headers, and the JSON API."""

from __future__ import annotations

import logging
import shutil
import socket
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from support import Client, FakeClock, make_settings

from attendance.migrate import upgrade
from attendance.models import AdminEvent, Role
from attendance.store import Store
from attendance.units import UnitTree
from attendance.users import add_user
from server.app import CONTENT_SECURITY_POLICY, create_app
from server.auth import check_access_declared, public
from server.metrics import Metrics, merge_expositions

PASSWORD = "correct horse battery staple"


@pytest.fixture
async def app(store: Store, clock: FakeClock, tmp_path: Path) -> web.Application:
    return create_app(make_settings(tmp_path), store, clock=clock)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app)) as c:
        yield c


async def add_login(store: Store, username: str, role: Role, now: datetime) -> None:
    async with store.write() as db:
        await add_user(db, username=username, role=role, password=PASSWORD, now=now, actor="test")


async def log_in(client: Client, username: str) -> str:
    """Log the client in; returns the CSRF token."""
    r = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert r.status == 200, await r.text()
    return str((await r.json())["csrf_token"])


async def error_of(r: Any) -> tuple[int, dict[str, Any]]:
    assert r.headers["Content-Type"].startswith("application/json")
    return r.status, await r.json()


# --- health -----------------------------------------------------------------------------------


async def test_healthz_ok(client: Client) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    assert await r.json() == {"status": "ok", "database": "ok"}
    assert r.headers["Cache-Control"] == "no-store"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_healthz_503_when_postgresql_is_unreachable(tmp_path: Path) -> None:
    store = Store(f"postgresql://127.0.0.1:{_closed_port()}/studycast")
    app = create_app(make_settings(tmp_path), store)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/healthz")
        assert await error_of(r) == (
            503,
            {
                "error": "store_error",
                "detail": "the record store is unavailable; try again shortly",
            },
        )
    assert store._closed, "the app closes its store on cleanup"


async def test_healthz_503_when_the_sqlite_directory_is_gone(tmp_path: Path) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    store = Store(f"sqlite:///{folder}/studycast.db")
    await upgrade(store)
    app = create_app(make_settings(tmp_path), store)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/healthz")).status == 200
        shutil.rmtree(folder)
        # Connections already open keep the unlinked file; a new one finds nothing.
        await store.read_engine.dispose()
        r = await c.get("/healthz")
        status, body = await error_of(r)
        assert (status, body["error"]) == (503, "store_error")
        assert str(folder) not in body["detail"], "paths stay in the log"


# --- static pages -----------------------------------------------------------------------------


async def test_index_and_pages_are_served(client: Client) -> None:
    r = await client.get("/")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/html")
    html = await r.text()
    assert 'href="login.html"' in html
    for path, kind in [
        ("/login.html", "text/html"),
        ("/app.css", "text/css"),
        ("/i18n.js", "javascript"),
        ("/login.js", "javascript"),
        ("/favicon.svg", "image/svg+xml"),
    ]:
        r = await client.get(path)
        assert r.status == 200, path
        assert kind in r.headers["Content-Type"], (path, r.headers["Content-Type"])
        assert r.headers["Cache-Control"] == "no-cache"


async def test_pages_carry_no_inline_code() -> None:
    # The CSP forbids inline scripts and styles; a page that used them would break silently.
    web_root = Path(__file__).parent.parent / "client" / "web"
    for page in web_root.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script>" not in text and "style=" not in text and "<style" not in text, page
        assert "http://" not in text and "https://" not in text, f"{page} loads from elsewhere"


async def test_security_headers_everywhere(client: Client) -> None:
    for path in ("/", "/login.html", "/healthz", "/api/me", "/nowhere"):
        r = await client.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path
        assert r.headers["X-Frame-Options"] == "DENY", path
        assert r.headers["Referrer-Policy"] == "no-referrer", path
        assert r.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    assert "style-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe" not in CONTENT_SECURITY_POLICY


# --- one error shape --------------------------------------------------------------------------


async def test_unknown_route_is_json_404(client: Client) -> None:
    for method, path in [
        ("GET", "/nowhere"),
        ("GET", "/missing.html"),
        ("POST", "/api/nowhere"),
        ("GET", "/.env"),
        ("GET", "/%2e%2e/pyproject.toml"),
    ]:
        r = await client.request(method, path)
        status, body = await error_of(r)
        assert status == 404 and body["error"] == "not_found", (method, path, body)
        assert body["detail"].startswith("nothing at /")


async def test_wrong_method_is_json_405(client: Client) -> None:
    r = await client.delete("/healthz")
    assert await error_of(r) == (
        405,
        {
            "error": "method_not_allowed",
            "detail": "DELETE is not allowed on /healthz; allowed: GET, HEAD",
        },
    )
    assert r.headers["Allow"] == "GET,HEAD"


async def test_oversized_body_is_json_413(store: Store, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, max_body_bytes=4096), store)
    async with TestClient(TestServer(app)) as c:
        body = b'{"username": "' + b"a" * 5000 + b'", "password": "x"}'
        r = await c.post("/api/login", data=body, headers={"Content-Type": "application/json"})
        assert await error_of(r) == (
            413,
            {
                "error": "body_too_large",
                "detail": "the request body is larger than the limit of 4096 bytes",
            },
        )


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            b"{",
            "request body is not valid JSON: Expecting property name enclosed in double quotes "
            "at line 1 column 2",
        ),
        (b"", "request body is empty; expected a JSON object"),
        (b'{"a": NaN}', "request body is not valid JSON: NaN is not a JSON number"),
        (b'\xff{"a": 1}', "request body is not valid UTF-8"),
        (b"[" * 100_000, "request body is not valid JSON: nested too deeply"),
    ],
)
async def test_malformed_json_is_400(client: Client, body: bytes, detail: str) -> None:
    r = await client.post("/api/login", data=body, headers={"Content-Type": "application/json"})
    assert await error_of(r) == (400, {"error": "invalid_json", "detail": detail})


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "an array"), (b'"x"', "a string"), (b"3", "a number"), (b"null", "null")],
)
async def test_json_body_must_be_an_object(client: Client, body: bytes, kind: str) -> None:
    r = await client.post("/api/login", data=body, headers={"Content-Type": "application/json"})
    assert await error_of(r) == (
        400,
        {"error": "invalid_input", "detail": f"request body must be a JSON object, not {kind}"},
    )


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        (
            "text/plain",
            "this endpoint reads JSON: send Content-Type: application/json (got text/plain)",
        ),
        (None, "this endpoint reads JSON: send Content-Type: application/json (got none)"),
        ("application/json; charset=latin-1", "JSON bodies must be UTF-8 (got charset latin-1)"),
    ],
)
async def test_json_endpoints_want_json(
    client: Client, content_type: str | None, detail: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = await client.post(
        "/api/login",
        data=b'{"username": "a", "password": "b"}',
        headers=headers,
        skip_auto_headers=["Content-Type"],
    )
    assert await error_of(r) == (415, {"error": "unsupported_media_type", "detail": detail})


async def test_unexpected_errors_are_500_and_logged(
    app: web.Application, caplog: pytest.LogCaptureFixture
) -> None:
    @public
    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("connection string postgresql://secret@db")

    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app)) as c:
        with caplog.at_level(logging.ERROR, logger="server.http_errors"):
            r = await c.get("/broken")
        status, body = await error_of(r)
    assert (status, body["error"]) == (500, "internal_error")
    assert "secret" not in body["detail"] and "RuntimeError" not in body["detail"]
    reference = body["detail"].rsplit("reference ", 1)[1].rstrip(")")
    [record] = [r for r in caplog.records if reference in r.getMessage()]
    assert record.exc_info is not None and "secret@db" in str(record.exc_info[1])


async def test_every_route_must_declare_access(app: web.Application) -> None:
    check_access_declared(app)  # the real app passes

    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/api/undeclared", undeclared)
    with pytest.raises(RuntimeError, match=r"POST /api/undeclared"):
        check_access_declared(app)


async def test_metrics_count_requests(client: Client) -> None:
    await client.get("/healthz")
    await client.get("/nowhere")
    text = await (await client.get("/metrics")).text()
    requests = 'studycast_http_requests_total{method="GET",node="origin"'
    assert f'{requests},route="/healthz",status="200"}} 1.0' in text
    assert (
        'studycast_http_requests_total{method="GET",node="origin",route="unmatched",status="404"}'
        " 1.0" in text
    )
    # Every series names the node, the process collector's too.
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('node="origin"' in line for line in samples)


def test_worker_expositions_merge_into_one_family_each() -> None:
    first, second = Metrics("origin"), Metrics("origin-w1")
    first.login_throttled.inc()
    second.login_throttled.inc(2)
    second.loop_lag.observe(0.3)
    merged = merge_expositions(
        [first.render().decode(), second.render().decode()], unanswered=("origin", 1)
    ).decode()
    families = list(text_string_to_metric_families(merged))
    names = [f.name for f in families]
    assert len(names) == len(set(names))  # each family once, with both workers' samples
    values = {
        (s.name, s.labels.get("node"), s.labels.get("le")): s.value
        for f in families
        for s in f.samples
    }
    assert values[("studycast_login_throttled_total", "origin", None)] == 1
    assert values[("studycast_login_throttled_total", "origin-w1", None)] == 2
    assert values[("studycast_event_loop_stalls_total", "origin-w1", None)] == 1
    assert values[("studycast_event_loop_stalls_total", "origin", None)] == 0
    assert values[("studycast_event_loop_lag_seconds_bucket", "origin-w1", "0.5")] == 1
    assert values[("studycast_workers_unanswered", "origin", None)] == 1
    assert merged.count("# TYPE studycast_login_throttled_total counter") == 1


# --- the JSON API -----------------------------------------------------------------------------


@pytest.fixture
async def organiser(client: Client, store: Store, now: datetime) -> str:
    """Log the client in as organiser "olga"; returns the CSRF token. Makes a unit tree too."""
    await add_login(store, "olga", Role.ORGANISER, now)
    async with store.write() as db:
        tree = UnitTree(db, now)
        await tree.ensure(("北京", "朝阳"))
        await tree.ensure(("上海",))
    return await log_in(client, "olga")


async def test_units_listed(client: Client, organiser: str) -> None:
    r = await client.get("/api/units")
    assert r.status == 200
    units = (await r.json())["units"]
    assert [(u["path"], u["depth"], u["venues"]) for u in units] == [
        ("上海", 1, 0),
        ("北京", 1, 0),
        ("北京/朝阳", 2, 0),
    ]


async def test_venue_created_and_listed(client: Client, organiser: str, store: Store) -> None:
    headers = {"X-CSRF-Token": organiser}
    r = await client.post(
        "/api/venues",
        headers=headers,
        json={"slug": "room-2", "name": "第2会议室", "unit_path": "北京/朝阳", "capacity": 40},
    )
    assert r.status == 201, await r.text()
    created = await r.json()
    assert {k: created[k] for k in ("slug", "name", "unit_path", "capacity")} == {
        "slug": "room-2",
        "name": "第2会议室",
        "unit_path": "北京/朝阳",
        "capacity": 40,
    }
    r = await client.get("/api/venues")
    assert [v["slug"] for v in (await r.json())["venues"]] == ["room-2"]
    async with store.read() as db:
        event = await db.scalar(select(AdminEvent).where(AdminEvent.action == "venue_added"))
    assert event is not None and event.actor == "user:olga"


@pytest.mark.parametrize(
    ("body", "status", "code", "detail"),
    [
        (
            {"slug": "r", "name": "R", "unit_path": "深圳"},
            404,
            "not_found",
            "no unit at path '深圳'",
        ),
        (
            {"slug": "Bad Slug", "name": "R", "unit_path": "上海"},
            400,
            "invalid_input",
            "venue slug 'Bad Slug' must be",
        ),
        (
            {"slug": "r", "name": "R", "unit_path": "上海", "floor": 3},
            400,
            "invalid_input",
            "floor: Extra inputs are not permitted",
        ),
        (
            {"slug": "r", "name": "R", "unit_path": "上海", "capacity": "40"},
            400,
            "invalid_input",
            "capacity: Input should be a valid integer",
        ),
        ({"name": "R", "unit_path": "上海"}, 400, "invalid_input", "slug: Field required"),
    ],
)
async def test_venue_validation(
    client: Client,
    organiser: str,
    body: dict[str, Any],
    status: int,
    code: str,
    detail: str,
) -> None:
    r = await client.post("/api/venues", json=body, headers={"X-CSRF-Token": organiser})
    got_status, got = await error_of(r)
    assert (got_status, got["error"]) == (status, code), got
    assert got["detail"].startswith(detail), got["detail"]


async def test_duplicate_venue_is_409(client: Client, organiser: str) -> None:
    body = {"slug": "hall", "name": "Hall", "unit_path": "上海"}
    headers = {"X-CSRF-Token": organiser}
    assert (await client.post("/api/venues", json=body, headers=headers)).status == 201
    r = await client.post("/api/venues", json=body, headers=headers)
    assert await error_of(r) == (
        409,
        {"error": "conflict", "detail": "venue 'hall' exists already"},
    )


def session_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "title": "第十二讲",
        "scheduled_start": "2026-12-01T19:00:00+08:00",
        "scheduled_end": "2026-12-01T21:00:00+08:00",
        "venues": ["hall"],
        "expected_units": ["上海"],
    }
    body.update(overrides)
    return body


async def test_session_created_listed_and_shown(
    client: Client, organiser: str, store: Store
) -> None:
    headers = {"X-CSRF-Token": organiser}
    await client.post(
        "/api/venues", json={"slug": "hall", "name": "Hall", "unit_path": "上海"}, headers=headers
    )
    r = await client.post("/api/sessions", json=session_body(), headers=headers)
    assert r.status == 201, await r.text()
    created = await r.json()
    assert r.headers["Location"] == f"/api/sessions/{created['id']}"
    assert created["title"] == "第十二讲"
    assert created["state"] == "scheduled"
    assert created["scheduled_start"] == "2026-12-01T11:00:00+00:00"
    assert created["venues"] == [{"slug": "hall", "name": "Hall"}]
    assert created["expected_units"] == ["上海"]

    listed = await (await client.get("/api/sessions")).json()
    assert listed == {"sessions": [created]}
    assert await (await client.get(f"/api/sessions/{created['id']}")).json() == created
    assert await (await client.get("/api/sessions?state=live")).json() == {"sessions": []}
    async with store.read() as db:
        event = await db.scalar(select(AdminEvent).where(AdminEvent.action == "session_created"))
    assert event is not None and event.actor == "user:olga"


@pytest.mark.parametrize(
    ("overrides", "status", "code", "detail"),
    [
        (
            {"scheduled_end": "2026-12-01T18:00:00+08:00"},
            400,
            "invalid_input",
            "scheduled_end must be after scheduled_start",
        ),
        ({"venues": ["nowhere"]}, 404, "not_found", "no venue 'nowhere'"),
        (
            {"scheduled_start": "2026-12-01T19:00:00"},
            400,
            "invalid_input",
            "scheduled_start: Input should have timezone info",
        ),
        ({"colour": "red"}, 400, "invalid_input", "colour: Extra inputs are not permitted"),
        ({"title": ""}, 400, "invalid_input", "title: String should have at least 1 character"),
        ({"video_codec": "av1"}, 400, "invalid_input", "video_codec: Input should be"),
    ],
)
async def test_session_validation(
    client: Client,
    organiser: str,
    overrides: dict[str, Any],
    status: int,
    code: str,
    detail: str,
) -> None:
    headers = {"X-CSRF-Token": organiser}
    await client.post(
        "/api/venues", json={"slug": "hall", "name": "Hall", "unit_path": "上海"}, headers=headers
    )
    r = await client.post("/api/sessions", json=session_body(**overrides), headers=headers)
    got_status, got = await error_of(r)
    assert (got_status, got["error"]) == (status, code), got
    assert got["detail"].startswith(detail), got["detail"]
    assert await (await client.get("/api/sessions")).json() == {"sessions": []}


async def test_session_ids(client: Client, organiser: str) -> None:
    for raw, status, detail in [
        ("abc", 400, "id must be a positive integer, not 'abc'"),
        ("-1", 400, "id must be a positive integer, not '-1'"),
        ("1.0", 400, "id must be a positive integer, not '1.0'"),
        ("٣", 400, "id must be a positive integer, not '٣'"),
        ("0", 404, "no study session 0"),
        ("99999999999", 404, "no study session 99999999999"),
        ("7", 404, "no study session 7"),
    ]:
        r = await client.get(f"/api/sessions/{raw}")
        got_status, got = await error_of(r)
        assert (got_status, got["detail"]) == (status, detail), raw


async def test_session_state_filter_is_checked(client: Client, organiser: str) -> None:
    r = await client.get("/api/sessions?state=running")
    status, body = await error_of(r)
    assert status == 400
    assert body["detail"] == "state must be one of scheduled, live, paused, ended, not 'running'"
