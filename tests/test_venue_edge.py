"""A venue may play from an edge: assigned by the CLI or the API (with the admin trail), listed,
and its screen link then opens on the edge with the origin to fall back to (``o=``).

Real stores (a SQLite file and the real PostgreSQL), the real app in process, the real command
line; the failover itself runs in a real browser in ``test_web_venue_edge.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import segno
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner, Result
from sqlalchemy import select
from support import Client, FakeClock, make_settings

from attendance.errors import InvalidInput
from attendance.models import AdminEvent, Role
from attendance.store import Store
from attendance.units import UnitTree
from attendance.users import add_user
from attendance.venues import add_venue, check_edge_url
from server.app import CONTENT_SECURITY_POLICY, create_app
from server.cli import main
from server.settings import Settings
from server.tokens import TokenRole, issue_node_token, verify

PASSWORD = "correct horse battery staple"
SECRET = "s" * 40
ORIGIN = "http://studycast.example:8080"  # http: the login cookie of an https base is Secure
EDGE = "http://edge-1.example:8081"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- the URL rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("http://edge-1.example:8081", "http://edge-1.example:8081"),
        ("https://edge.example/", "https://edge.example"),
        (" https://edge.example/studycast// ", "https://edge.example/studycast"),
        ("http://10.0.0.7:8080", "http://10.0.0.7:8080"),
    ],
)
def test_an_edge_url_is_stored_as_a_base(given: str, stored: str) -> None:
    assert check_edge_url(given) == stored


@pytest.mark.parametrize(
    ("given", "detail"),
    [
        ("", "edge_url is empty"),
        ("edge.example", "edge_url must start with http:// or https://, not 'edge.example'"),
        ("ftp://edge.example", "edge_url must start with http:// or https://"),
        ("javascript:alert(1)", "edge_url must start with http:// or https://"),
        ("http://", "edge_url 'http:' has no host"),
        ("http:///path", "edge_url 'http:///path' has no host"),
        ("http://edge.example:99999", "edge_url 'http://edge.example:99999' is not a URL"),
        ("http://a:b@edge.example", "edge_url must not carry a user name or password"),
        ("http://edge.example/?x=1", "edge_url 'http://edge.example/?x=1' must be a base URL"),
        ("http://edge.example/#top", "edge_url 'http://edge.example/#top' must be a base"),
        ("http://edge example", "edge_url contains a space or control character"),
        ("http://edge.example/" + "a" * 300, "edge_url is longer than 300 characters"),
    ],
)
def test_a_bad_edge_url_is_refused_naming_the_field(given: str, detail: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_edge_url(given)
    assert caught.value.detail.startswith(detail), caught.value.detail


# -- the command line -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(f"STUDYCAST_{name.upper()}", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the repository


def studycast(database_url: str, data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(
        main, ["--database-url", database_url, "--data-dir", str(data_dir), *args]
    )


async def admin_trail(url: str, target: str) -> list[tuple[str, str, dict[str, Any]]]:
    store = Store(url)
    try:
        async with store.read() as db:
            rows = await db.scalars(
                select(AdminEvent).where(AdminEvent.target == target).order_by(AdminEvent.id)
            )
            return [(r.actor, r.action, r.detail) for r in rows]
    finally:
        await store.close()


def test_the_cli_assigns_lists_and_clears_an_edge(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"

    def ok(*args: str) -> str:
        result = studycast(database_url, data, *args)
        assert result.exit_code == 0, result.output
        return result.stdout

    def fails(code: int, message: str, *args: str) -> None:
        result = studycast(database_url, data, *args)
        assert result.exit_code == code, result.output
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.output

    ok("venue", "add", "hall", "--name", "报告厅", "--unit", "上海", "--create-unit")
    assert json.loads(ok("venue", "list", "--json"))[0]["edge_url"] is None

    assert ok("venue", "edge", "hall", EDGE + "/") == f"venue hall plays from the edge {EDGE}\n"
    listed = json.loads(ok("venue", "list", "--json"))
    assert [(v["slug"], v["edge_url"]) for v in listed] == [("hall", EDGE)]
    table = ok("venue", "list")
    assert "edge" in table and "edge-1.example" in table
    # The same edge again changes nothing, and writes nothing to the trail.
    assert json.loads(ok("venue", "edge", "hall", EDGE, "--json"))["edge_url"] == EDGE

    fails(1, "edge_url must start with http:// or https://", "venue", "edge", "hall", "ftp://x")
    fails(1, "edge_url is longer than 300 characters", "venue", "edge", "hall", EDGE + "/a" * 200)
    fails(1, "no venue 'nowhere'", "venue", "edge", "nowhere", EDGE)
    fails(2, "give the edge's URL, or --none", "venue", "edge", "hall")
    fails(2, "give the edge's URL, or --none", "venue", "edge", "hall", EDGE, "--none")
    assert json.loads(ok("venue", "list", "--json"))[0]["edge_url"] == EDGE  # untouched

    assert ok("venue", "edge", "hall", "--none") == "venue hall plays from the origin\n"
    assert json.loads(ok("venue", "list", "--json"))[0]["edge_url"] is None

    trail = asyncio.run(admin_trail(database_url, "venue:hall"))
    assert trail == [
        ("cli", "venue_added", {"name": "报告厅", "unit": "上海"}),
        ("cli", "venue_edge_set", {"edge_url": EDGE, "before": None}),
        ("cli", "venue_edge_cleared", {"edge_url": None, "before": EDGE}),
    ]


# -- the API and the links --------------------------------------------------------------------


async def log_in(client: Client, store: Store, username: str, role: Role, now: datetime) -> str:
    async with store.write() as db:
        await add_user(db, username=username, role=role, password=PASSWORD, now=now, actor="test")
    r = await client.post("/api/login", json={"username": username, "password": PASSWORD})
    assert r.status == 200, await r.text()
    return str((await r.json())["csrf_token"])


@pytest.fixture
async def venues(store: Store, now: datetime) -> None:
    async with store.write() as db:
        await UnitTree(db, now).ensure(("上海",))
        for slug in ("hall", "room-2"):
            await add_venue(db, slug=slug, name=slug.title(), unit_path="上海", now=now, actor="t")


@pytest.fixture
async def origin(
    store: Store, venues: None, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Client]:
    app = create_app(
        make_settings(tmp_path, secret_key=SECRET, public_base_url=ORIGIN), store, clock=clock
    )
    async with TestClient(TestServer(app)) as client:
        yield client


async def answer(r: Any) -> tuple[int, Any]:
    return r.status, await r.json()


async def test_the_api_assigns_and_clears_an_edge(
    origin: Client, store: Store, now: datetime
) -> None:
    csrf = {"X-CSRF-Token": await log_in(origin, store, "olga", Role.ORGANISER, now)}
    status, body = await answer(
        await origin.patch("/api/venues/hall", json={"edge_url": EDGE + "/"}, headers=csrf)
    )
    assert (status, body["slug"], body["edge_url"]) == (200, "hall", EDGE)
    listed = (await (await origin.get("/api/venues")).json())["venues"]
    assert [(v["slug"], v["edge_url"]) for v in listed] == [("hall", EDGE), ("room-2", None)]

    for sent, detail in [
        ({"edge_url": "ftp://edge.example"}, "edge_url must start with http:// or https://"),
        ({"edge_url": 8081}, "edge_url: Input should be a valid string"),
        ({"edge_url": "http://e/" + "a" * 300}, "edge_url: String should have at most 300"),
        ({"edge_url": "http://edge.example/?k=v"}, "edge_url 'http://edge.example/?k=v' must"),
        ({}, "edge_url: Field required"),
        ({"edge_url": None, "name": "Hall"}, "name: Extra inputs are not permitted"),
    ]:
        status, body = await answer(await origin.patch("/api/venues/hall", json=sent, headers=csrf))
        assert (status, body["error"]) == (400, "invalid_input"), (sent, body)
        assert body["detail"].startswith(detail), (sent, body["detail"])
    assert await answer(
        await origin.patch("/api/venues/nowhere", json={"edge_url": None}, headers=csrf)
    ) == (404, {"error": "not_found", "detail": "no venue 'nowhere'"})
    status, body = await answer(
        await origin.patch("/api/venues/" + "x" * 80, json={"edge_url": None}, headers=csrf)
    )
    assert (status, body["error"]) == (404, "not_found")

    status, body = await answer(
        await origin.patch("/api/venues/hall", json={"edge_url": None}, headers=csrf)
    )
    assert (status, body["edge_url"]) == (200, None)
    async with store.read() as db:
        trail = [
            (e.actor, e.action, e.detail)
            for e in await db.scalars(
                select(AdminEvent)
                .where(AdminEvent.target == "venue:hall", AdminEvent.action != "venue_added")
                .order_by(AdminEvent.id)
            )
        ]
    assert trail == [
        ("user:olga", "venue_edge_set", {"edge_url": EDGE, "before": None}),
        ("user:olga", "venue_edge_cleared", {"edge_url": None, "before": EDGE}),
    ]


@SQLITE_ONLY
async def test_only_organisers_assign_edges(origin: Client, store: Store, now: datetime) -> None:
    csrf = {"X-CSRF-Token": await log_in(origin, store, "audrey", Role.AUDITOR, now)}
    assert (await origin.get("/api/venues")).status == 200
    status, body = await answer(
        await origin.patch("/api/venues/hall", json={"edge_url": EDGE}, headers=csrf)
    )
    assert (status, body["error"]) == (403, "forbidden")


async def make_session(client: Client, csrf: dict[str, str]) -> int:
    r = await client.post(
        "/api/sessions",
        json={
            "title": "第十二讲",
            "scheduled_start": "2026-12-01T19:00:00+08:00",
            "scheduled_end": "2026-12-01T21:00:00+08:00",
            "venues": ["hall", "room-2"],
        },
        headers=csrf,
    )
    assert r.status == 201, await r.text()
    return int((await r.json())["id"])


def qr_svg(url: str) -> bytes:
    out = io.BytesIO()
    segno.make(url, error="m").save(out, kind="svg", scale=6, border=4)
    return out.getvalue()


async def test_the_link_of_a_venue_with_an_edge_opens_on_the_edge(
    origin: Client, store: Store, now: datetime
) -> None:
    csrf = {"X-CSRF-Token": await log_in(origin, store, "olga", Role.ORGANISER, now)}
    sid = await make_session(origin, csrf)
    plain = (await (await origin.get(f"/api/sessions/{sid}/member-links")).json())["venues"]
    r = await origin.patch("/api/venues/hall", json={"edge_url": EDGE}, headers=csrf)
    assert r.status == 200
    links = (await (await origin.get(f"/api/sessions/{sid}/member-links")).json())["venues"]

    hall, room = links
    token = hall["url"].rpartition("&t=")[2]
    claims = verify(SECRET, token, session_id=sid, roles=frozenset({TokenRole.VENUE}), now=now)
    assert claims.subject == "venue:hall"
    assert hall == {
        "slug": "hall",
        "name": "Hall",
        "url": f"{EDGE}/venue.html#s={sid}&o={ORIGIN}&t={token}",
        "edge_url": EDGE,
        "fallback_url": f"{ORIGIN}/venue.html#s={sid}&t={token}",
    }
    # A venue without an edge keeps the link it had.
    assert room == {**plain[1], "edge_url": None, "fallback_url": None}
    assert room["url"].startswith(f"{ORIGIN}/venue.html#s={sid}&t=")

    r = await origin.get(f"/api/sessions/{sid}/link-qr.svg?venue=hall")
    assert r.status == 200
    assert await r.read() == qr_svg(hall["url"])


async def test_an_edge_links_back_to_its_origin_and_may_reach_it(
    store: Store, venues: None, clock: FakeClock, now: datetime, tmp_path: Path
) -> None:
    pulled_from = "http://origin.internal:8080"
    settings = make_settings(
        tmp_path,
        secret_key=SECRET,
        origin_url=pulled_from + "/",
        node_token=issue_node_token(SECRET, "edge-1", now=now, ttl=timedelta(days=1)),
    )
    async with TestClient(TestServer(create_app(settings, store, clock=clock))) as edge:
        csrf = {"X-CSRF-Token": await log_in(edge, store, "olga", Role.ORGANISER, now)}
        sid = await make_session(edge, csrf)
        r = await edge.patch("/api/venues/hall", json={"edge_url": EDGE}, headers=csrf)
        assert r.status == 200
        hall = (await (await edge.get(f"/api/sessions/{sid}/member-links")).json())["venues"][0]
        assert hall["url"].startswith(f"{EDGE}/venue.html#s={sid}&o={pulled_from}&t=")
        assert hall["fallback_url"].startswith(f"{pulled_from}/venue.html#s={sid}&t=")

        # The edge's pages may reach the origin (WHEP and its health), nothing else more.
        page = await edge.get("/venue.html")
        policy = page.headers["Content-Security-Policy"]
        assert policy == CONTENT_SECURITY_POLICY.replace(
            "connect-src 'self'", f"connect-src 'self' {pulled_from}"
        )
        health = await edge.get("/healthz")
        assert health.headers["Access-Control-Allow-Origin"] == "*"


@SQLITE_ONLY
async def test_the_origin_answers_health_to_pages_of_its_edges(origin: Client) -> None:
    health = await origin.get("/healthz")
    assert (health.status, health.headers["Access-Control-Allow-Origin"]) == (200, "*")
    page = await origin.get("/venue.html")
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "Access-Control-Allow-Origin" not in page.headers
