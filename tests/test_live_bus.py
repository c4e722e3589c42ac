"""Live events across nodes: two apps on one PostgreSQL store (an origin and an edge, as two
nodes run them) share their events through LISTEN/NOTIFY. A quiz opened on the origin reaches a
member's stream on the edge; an answer taken in on the edge reaches the organiser's stream on the
origin as live results; a node never hears its own events twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from live_record_support import SECRET, SseReader, World, event, log_in, seed
from support import FakeClock, make_settings

from attendance.store import Store
from server.app import create_app
from server.live_events import LIVE
from server.tokens import issue_node_token

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
async def nodes(
    store: Store, clock: FakeClock, now: datetime, tmp_path: Path
) -> AsyncIterator[tuple[World, TestClient]]:  # type: ignore[type-arg]
    session_id, other_id, member_ids, venue_ids = await seed(store, now)
    url = store.url.render_as_string(hide_password=False)
    origin_app = create_app(
        make_settings(tmp_path / "o", secret_key=SECRET, tick_interval_s=0.2, database_url=url),
        store,
        clock=clock,
    )
    async with TestClient(TestServer(origin_app), cookie_jar=DummyCookieJar()) as origin:
        edge_store = Store(store.url)
        edge_app = create_app(
            make_settings(
                tmp_path / "e",
                secret_key=SECRET,
                tick_interval_s=0.2,
                database_url=url,
                origin_url=str(origin.make_url("")),
                node_token=issue_node_token(SECRET, "edge-1", now=now, ttl=timedelta(hours=1)),
            ),
            edge_store,
            clock=clock,
        )
        async with TestClient(TestServer(edge_app), cookie_jar=DummyCookieJar()) as edge:
            w = World(origin, clock, store, session_id, other_id, member_ids, venue_ids)
            w.organiser = await log_in(origin, "org")
            yield w, edge


@POSTGRES_ONLY
async def test_a_quiz_opened_on_the_origin_reaches_members_on_an_edge(
    nodes: tuple[World, TestClient],  # type: ignore[type-arg]
) -> None:
    w, edge = nodes
    body = {"prompt": "1+1=?", "kind": "single", "choices": ["1", "2", "3"], "correct": [1]}
    question = (await w.post(f"{w.base}/questions", w.organiser, body, status=201))["questions"][0]
    member = await edge.get(f"{w.base}/events/stream?token={w.member_token('M1')}")
    organiser = await w.client.get(f"{w.base}/events/stream", headers=w.organiser)
    try:
        assert (member.status, organiser.status) == (200, 200)
        member_sse, organiser_sse = SseReader(member), SseReader(organiser)
        await member_sse.until("snapshot")
        await organiser_sse.until("snapshot")

        await w.post(f"{w.base}/questions/{question['id']}/open", w.organiser, {})
        skipped, opened = await member_sse.until("quiz_opened")
        assert skipped == [] and opened.data["id"] == question["id"]
        assert "correct" not in opened.data  # the member's share of it, as on the origin

        # The member answers through the edge: the organiser sees the live result on the origin.
        answer = event("quiz_answer", w.clock(), question=question["id"], choices=[1])
        r = await edge.post(
            f"{w.base}/events",
            json={"events": [answer]},
            headers={"Authorization": f"Bearer {w.member_token('M1')}"},
        )
        assert r.status == 200, await r.text()
        assert (await r.json())["results"][0]["status"] == "accepted"
        _, results = await organiser_sse.until("quiz_results")
        assert results.data["question"]["id"] == question["id"] and results.data["answered"] == 1
    finally:
        member.close()
        organiser.close()
    # Both hubs hold the same events, each once (no node hears its own events back): the
    # question opened (for members, and with its answer for staff), counts and results.
    histories = [
        sorted((e.type, tuple(sorted(e.audience))) for e in node.app[LIVE].replay_all(w.session_id))
        for node in (w.client, edge)
    ]
    assert histories[0] == histories[1]
    assert [kind for kind, _ in histories[0]].count("quiz_opened") == 2, histories[0]
