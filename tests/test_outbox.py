"""``client.outbox`` against the real server app (aiohttp test server over a SQLite record store).

Events added to the outbox are in its file at once, sent in batches and kept until the server has
answered each. A ``Hop`` stands between the outbox and the server where a test needs the network
to fail: not listening yet (a closed port), or forwarding a batch and then dropping the
connection before the answer (the server stored it; the client never heard).
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from live_record_support import SECRET, World, seed
from support import FakeClock, make_settings

from attendance.migrate import upgrade
from attendance.store import Store
from client.outbox import FlushResult, Outbox
from server.app import create_app

VENUE = "bj-a"
WAIT_S = 5.0


@pytest.fixture
async def world(tmp_path: Path, now: datetime, clock: FakeClock) -> AsyncIterator[World]:
    """The live-record world (two sessions, venues, members) served on a free port."""
    store = Store(f"sqlite:///{tmp_path}/studycast.db")
    await upgrade(store)
    session_id, other_id, member_ids, venue_ids = await seed(store, now)
    settings = make_settings(
        tmp_path, secret_key=SECRET, tick_interval_s=60, evidence_interval_s=300
    )
    app = create_app(settings, store, clock=clock)  # it closes the store on cleanup
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        yield World(client, clock, store, session_id, other_id, member_ids, venue_ids)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Hop:
    """An HTTP hop in front of the real server, on a port chosen before it listens."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.lose_answers = False
        self.forwarded = 0
        self._runner: web.AppRunner | None = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        headers = {
            k: v for k, v in request.headers.items() if k in ("Authorization", "Content-Type")
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                self.target + request.path_qs, data=await request.read(), headers=headers
            ) as r,
        ):
            body, status = await r.read(), r.status
        self.forwarded += 1
        if self.lose_answers:
            assert request.transport is not None
            request.transport.close()  # stored upstream; the client sees the connection drop
        return web.Response(body=body, status=status, content_type="application/json")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def hop(world: World) -> AsyncIterator[Hop]:
    h = Hop(str(world.client.make_url("/")))
    try:
        yield h
    finally:
        await h.stop()


def outbox_at(w: World, path: Path, *, base: str | None = None, token: str | None = None) -> Outbox:
    """A venue screen's outbox for the world's session, at ``base`` (the server by default)."""
    url = f"{base}{w.base}/events" if base else str(w.client.make_url(f"{w.base}/events"))
    return Outbox(
        path,
        events_url=url,
        token=token or w.venue_token(VENUE),
        owner=f"venue:{VENUE}",
        clock=w.clock,
    )


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT_S} s waiting for {what}")
        await asyncio.sleep(0.02)


def attempts(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT id, attempts FROM outbox"))
    finally:
        db.close()


async def test_events_are_kept_sent_and_answered(
    world: World, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    outbox = outbox_at(world, path)
    ids = [outbox.add("heartbeat", visible=True), outbox.add("heartbeat", visible=False)]
    assert [e["id"] for e in outbox.pending()] == ids  # in the file before any network
    before = await world.event_count()
    assert await outbox.flush(http) == FlushResult(answered=2, pending=0)
    assert outbox.answered() == {i: ("accepted", {"ok": True}) for i in ids}
    assert await world.event_count() == before + 2
    for event_id, visible in zip(ids, (True, False), strict=True):
        row = await world.stored(event_id)
        assert (row.kind, row.source, row.payload["visible"]) == (
            "heartbeat",
            f"venue:{VENUE}",
            visible,
        )
    assert await outbox.flush(http) == FlushResult(answered=0, pending=0)  # nothing twice
    outbox.close()
    outbox.close()  # idempotent


async def test_an_unreachable_server_keeps_events_and_they_are_sent_later(
    world: World, http: aiohttp.ClientSession, hop: Hop, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    outbox = outbox_at(world, path, base=hop.url)  # nothing listens there yet
    ids = [outbox.add("heartbeat", visible=True) for _ in range(3)]
    result = await outbox.flush(http)
    assert (result.answered, result.pending, result.error) == (0, 3, "network")
    assert outbox.answered() == {}
    assert attempts(path) == dict.fromkeys(ids, 1)
    await hop.start()
    assert await outbox.flush(http) == FlushResult(answered=3, pending=0)
    assert {i: s for i, (s, _) in outbox.answered().items()} == dict.fromkeys(ids, "accepted")
    assert attempts(path) == dict.fromkeys(ids, 2)
    outbox.close()


async def test_a_restarted_client_resends_and_a_retry_is_stored_once(
    world: World, http: aiohttp.ClientSession, hop: Hop, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    await hop.start()
    hop.lose_answers = True
    first = outbox_at(world, path, base=hop.url)
    event_id = first.add("heartbeat", visible=True)
    before = await world.event_count()
    result = await first.flush(http)
    assert (result.answered, result.pending, result.error) == (0, 1, "network")
    assert hop.forwarded == 1 and await world.event_count() == before + 1  # stored all the same
    first.close()  # the client stops here, its event still pending
    hop.lose_answers = False
    again = outbox_at(world, path, base=hop.url)  # a new client on the same file
    assert [e["id"] for e in again.pending()] == [event_id]
    assert await again.flush(http) == FlushResult(answered=1, pending=0)
    status, _ = again.answered()[event_id]
    assert status == "duplicate"
    assert await world.event_count() == before + 1  # not stored twice
    assert attempts(path) == {event_id: 2}
    again.close()


async def test_a_refused_token_is_reported_and_the_events_kept(
    world: World, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outbox = outbox_at(world, tmp_path / "outbox.db", token="not-a-token")
    ids = [outbox.add("heartbeat", visible=True) for _ in range(2)]
    result = await outbox.flush(http)
    assert (result.answered, result.pending, result.error) == (0, 2, "unauthorized")
    assert "not valid" in result.detail
    running = asyncio.create_task(outbox.run(http))
    try:
        await eventually(lambda: outbox.state == "unauthorized", "run() to give up for now")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert outbox.last_error.startswith("unauthorized: ")
    assert [e["id"] for e in outbox.pending()] == ids and outbox.answered() == {}
    outbox.close()


async def test_run_sends_an_event_as_soon_as_it_is_added(
    world: World, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    outbox = outbox_at(world, tmp_path / "outbox.db")
    running = asyncio.create_task(outbox.run(http, every_s=3600))
    try:
        await asyncio.sleep(0.1)  # the first (empty) flush is done; run() now waits
        event_id = outbox.add("heartbeat", visible=True)
        await eventually(lambda: event_id in outbox.answered(), "the event to be answered")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert outbox.answered()[event_id][0] == "accepted"
    assert outbox.state == "idle"
    outbox.close()
