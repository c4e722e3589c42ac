"""An edge relay in the same process as its origin, over real loopback HTTP and aiortc peers: the
edge pulls the session once with a node token, feeds its own viewers frame for frame, follows the
origin's broadcaster reconnect, passes a broadcaster's WHIP on to the origin, and hangs up once
its last viewer has gone."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from relay_support import (
    SECRET,
    Watcher,
    clip_from,
    relay_settings,
    relay_stage,
    shared_clip,
    wait_for,
)

from attendance.store import Store
from client.publisher import SignallingError, publish
from server import nodes
from server.app import create_app
from server.late_evidence import LATE_EVIDENCE
from server.record_tasks import live_counts
from server.relay import upstream
from server.tokens import TokenRole, issue_node_token
from server.whip import EDGE_FEEDS, RELAY

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_an_edge_pulls_once_and_feeds_its_viewers(
    store: Store, tmp_path: Path, now: datetime, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "LINGER_S", 1.0)
    async with relay_stage(store, tmp_path / "origin", now, codec) as origin:
        node_token = issue_node_token(SECRET, "edge-1", now=now, ttl=timedelta(hours=1))
        edge_app = create_app(
            relay_settings(tmp_path / "edge", origin_url=origin.url(""), node_token=node_token),
            store,
            clock=lambda: now,
        )
        edge = TestServer(edge_app, host="127.0.0.1")
        await edge.start_server()
        viewers: list[Watcher] = []
        try:
            # The origin alone sweeps for sessions to evaluate again (two would race).
            assert origin.app[LATE_EVIDENCE].sweeping and not edge_app[LATE_EVIDENCE].sweeping
            clip = shared_clip(codec)
            await origin.publish()
            edge_whep = str(edge.make_url(f"/whep/{origin.session_id}"))
            for _ in range(2):
                viewer = Watcher(decode=True)
                viewers.append(viewer)
                await viewer.start(origin.http, edge_whep, origin.token(TokenRole.MEMBER))
                await viewer.wait_connected()
            for viewer in viewers:
                await wait_for(lambda v=viewer: len(v.frames) >= 45, 15, "frames at the edge")
            # Frame for frame: numbers go up by one, or jump ahead to a keyframe (the publisher
            # answering a viewer's keyframe request, passed on by the edge and the origin).
            keyframes = set(clip.keyframe_indices)
            for viewer in viewers:
                numbers = [f.number for f in viewer.frames]
                assert numbers[0] in keyframes
                for a, b in itertools.pairwise(numbers):
                    assert b == a + 1 or (b > a and b in keyframes), (a, b, numbers)
            # The origin serves one pull (an edge, not a viewer seat) however many watch there.
            origin_hub = origin.hub
            assert sorted(v.kind for v in origin_hub.viewers.values()) == ["edge"]
            assert origin.app[RELAY].viewer_count == 1  # the edge's place is not counted...
            edge_hub = edge_app[RELAY].sessions[origin.session_id]
            assert len(edge_hub.viewers) == 2 and edge_hub.ingest is not None
            feeds = edge_app[EDGE_FEEDS]
            assert (feeds.connects, feeds.sessions) == (1, [origin.session_id])

            # The origin's broadcaster reconnects: the edge's viewers go on without a new pull.
            before = [len(v.frames) for v in viewers]
            resume = clip.keyframe_indices[len(clip.keyframe_indices) // 2]
            await origin.publish(clip_from(clip, resume))
            for viewer, seen in zip(viewers, before, strict=True):
                await wait_for(
                    lambda v=viewer, n=seen: any(f.number >= resume for f in v.frames[n:]),
                    15,
                    "frames of the new broadcaster at the edge",
                )
            assert feeds.connects == 1

            # The viewers leave: the edge hangs up its pull after the linger.
            for viewer in viewers:
                await viewer.hang_up(origin.http, origin.token(TokenRole.MEMBER))
            await wait_for(lambda: not origin_hub.viewers, 10, "the edge to hang up")
            await wait_for(lambda: feeds.sessions == [], 5, "the edge's feed to end")
        finally:
            for viewer in viewers:
                await viewer.close()
            await edge.close()


@SQLITE_ONLY
async def test_a_broadcaster_at_an_edge_is_passed_on_to_the_origin(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path / "origin", now, "vp8") as origin:
        node_token = issue_node_token(SECRET, "edge-1", now=now, ttl=timedelta(hours=1))
        edge_app = create_app(
            relay_settings(tmp_path / "edge", origin_url=origin.url(""), node_token=node_token),
            store,
            clock=lambda: now,
        )
        edge = TestServer(edge_app, host="127.0.0.1")
        await edge.start_server()
        try:
            publication = await publish(
                str(edge.make_url(f"/whip/{origin.session_id}")),
                origin.token(TokenRole.BROADCASTER),
                shared_clip("vp8"),
                http=origin.http,
            )
            origin.publications.append(publication)
            # The origin holds the broadcaster; the edge holds nothing of it.
            await wait_for(lambda: origin.hub.state == "live", 10, "the origin to go live")
            assert origin.hub.ingest is not None
            assert origin.session_id not in edge_app[RELAY].sessions
            assert publication.resource_url.startswith(str(edge.make_url("/whip/")))
            # Hanging up at the edge ends the broadcast at the origin.
            await publication.close()
            await wait_for(lambda: origin.hub.ingest is None, 10, "the broadcast to end")
            # A wrong token is refused at the edge already.
            with pytest.raises(SignallingError) as refused:
                await publish(
                    str(edge.make_url(f"/whip/{origin.session_id}")),
                    origin.token(TokenRole.VIEWER),
                    shared_clip("vp8"),
                    http=origin.http,
                )
            assert (refused.value.status, refused.value.code) == (403, "wrong_role")
        finally:
            await edge.close()


@SQLITE_ONLY
async def test_nodes_report_what_they_serve(
    store: Store, tmp_path: Path, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nodes, "REPORT_S", 0.2)
    async with relay_stage(store, tmp_path / "origin", now, "vp8") as origin:
        node_token = issue_node_token(SECRET, "edge-1", now=now, ttl=timedelta(hours=1))
        edge_app = create_app(
            relay_settings(tmp_path / "edge", origin_url=origin.url(""), node_token=node_token),
            store,
            clock=lambda: now,
        )
        edge = TestServer(edge_app, host="127.0.0.1")
        await edge.start_server()
        viewer = Watcher()
        try:
            csrf = await origin.log_in_organiser()
            assert csrf
            await origin.publish()
            await origin.watch()  # one viewer on the origin
            await viewer.start(
                origin.http,
                str(edge.make_url(f"/whep/{origin.session_id}")),
                origin.token(TokenRole.MEMBER),
            )
            await viewer.wait_connected()
            sid = str(origin.session_id)

            async def listed() -> dict[str, dict[str, object]] | None:
                r = await origin.client.get("/api/nodes")
                assert r.status == 200, await r.text()
                found = {n["name"]: n for n in (await r.json())["nodes"]}
                ready = (
                    set(found) == {"origin", "edge-1"}
                    and found["origin"]["viewers"] == 1
                    and found["edge-1"]["viewers"] == 1
                    # The edge's pull starts with its viewer; the origin may report before it.
                    and "edge" in found["origin"]["sessions"].get(sid, {}).get("by_kind", {})  # type: ignore[attr-defined]
                )
                return found if ready else None

            found = await wait_for_async(listed, 10, "both nodes to report")
            origin_row, edge_row = found["origin"], found["edge-1"]
            assert (origin_row["role"], origin_row["online"]) == ("origin", True)
            assert (edge_row["role"], edge_row["online"]) == ("edge", True)
            assert origin_row["sessions"][sid]["by_kind"] == {"viewer": 1, "edge": 1}  # type: ignore[index]
            assert origin_row["sessions"][sid]["source"] == "broadcaster"  # type: ignore[index]
            assert edge_row["sessions"][sid]["by_kind"] == {"member": 1}  # type: ignore[index]
            assert edge_row["sessions"][sid]["source"] == "upstream"  # type: ignore[index]
            assert edge_row["pulling"] == [origin.session_id]
            # The organiser's counts add the edge's viewers, not the edge itself.
            counts = await live_counts(
                store, origin.app[RELAY], origin.session_id, node="origin", now=now
            )
            assert counts["viewers"] == {"viewer": 1, "member": 1}
            # Staff may list nodes; a member's link and anonymous callers may not.
            async with aiohttp.ClientSession() as anonymous:
                member = {"Authorization": f"Bearer {origin.token(TokenRole.MEMBER)}"}
                statuses = [
                    (await anonymous.get(origin.url("/api/nodes"), headers=h)).status
                    for h in ({}, member)
                ]
            assert statuses == [401, 401]
        finally:
            await viewer.close()
            await edge.close()


async def wait_for_async(check, within, what):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
