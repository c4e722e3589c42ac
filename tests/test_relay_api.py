"""The relay as organisers and auditors see it: stats, links, metrics, ending a session."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from relay_support import relay_stage, wait_for

from attendance.models import Role
from attendance.sessions import end_session
from attendance.store import Store
from attendance.users import add_user
from server.auth import SETTINGS
from server.tokens import VIEWER_ROLES, TokenRole, verify
from server.whip import RELAY

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
PASSWORD = "correct horse battery staple"


@SQLITE_ONLY
async def test_stats_links_and_metrics_follow_the_broadcast(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        csrf = await stage.log_in_organiser()
        sid = stage.session_id

        # Before anyone connects: the session's own state, no broadcaster, no viewers.
        r = await stage.client.get(f"/api/sessions/{sid}/stats")
        assert r.status == 200, await r.text()
        assert await r.json() == {
            "session_id": sid,
            "state": "scheduled",
            "video_codec": "vp8",
            "broadcaster": None,
            "viewers": {"total": 0, "by_kind": {}},
        }

        # The links an organiser hands out: absolute URLs, tokens for this session and role.
        r = await stage.client.get(f"/api/sessions/{sid}/links")
        assert r.status == 200, await r.text()
        links = await r.json()
        assert links["whip_url"] == stage.url(f"/whip/{sid}")
        assert links["whep_url"] == stage.url(f"/whep/{sid}")
        secret = stage.app[SETTINGS].resolved_secret_key()
        whip = verify(
            secret,
            links["whip_token"],
            session_id=sid,
            roles=frozenset({TokenRole.BROADCASTER}),
            now=now,
        )
        whep = verify(secret, links["whep_token"], session_id=sid, roles=VIEWER_ROLES, now=now)
        assert (whip.role, whep.role) == (TokenRole.BROADCASTER, TokenRole.VIEWER)

        await stage.publish()
        await stage.watch()
        await stage.watch()
        await wait_for(
            lambda: all(v.streams["video"].packets > 30 for v in stage.hub.viewers.values()),
            10,
            "video at both viewers",
        )
        r = await stage.client.get(f"/api/sessions/{sid}/stats")
        stats = await r.json()
        assert stats["state"] == "live"
        assert stats["broadcaster"]["video_codec"] == "VP8"
        assert stats["broadcaster"]["packets_in"]["video"] > 30
        assert stats["viewers"] == {"total": 2, "by_kind": {"viewer": 2}}
        assert stats["packets_out"]["video"] >= 60
        assert [d["kind"] for d in stats["viewer_details"]] == ["viewer", "viewer"]
        assert all(not d["waiting_for_keyframe"] for d in stats["viewer_details"])

        metrics = await (await stage.client.get("/metrics")).text()
        assert 'studycast_relay_viewers{kind="viewer",node="origin"} 2.0' in metrics
        assert 'studycast_relay_broadcasters{node="origin"} 1.0' in metrics
        sent = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('studycast_relay_packets_out_total{media="video",node="origin"}')
        ]
        assert sent and sent[0] >= 60

        # Ending needs the organiser's CSRF token too; with it, everyone is disconnected.
        r = await stage.client.post(f"/api/sessions/{sid}/end")
        assert (r.status, (await r.json())["error"]) == (403, "csrf")
        r = await stage.client.post(f"/api/sessions/{sid}/end", headers={"X-CSRF-Token": csrf})
        assert (r.status, (await r.json())["state"]) == (200, "ended")
        await wait_for(
            lambda: all(w.pc.connectionState == "closed" for w in stage.watchers), 5, "closed"
        )
        metrics = await (await stage.client.get("/metrics")).text()
        assert 'studycast_relay_viewers{kind="viewer",node="origin"} 0.0' in metrics
        # Counters never go back, even though the ended session's hub is gone.
        after = [
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('studycast_relay_packets_out_total{media="video",node="origin"}')
        ]
        assert after[0] >= sent[0]


@SQLITE_ONLY
async def test_who_may_see_stats_and_links(store: Store, tmp_path: Path, now: datetime) -> None:
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        sid = stage.session_id
        r = await stage.client.get(f"/api/sessions/{sid}/stats")
        assert (r.status, (await r.json())["error"]) == (401, "not_logged_in")
        async with store.write() as db:
            await add_user(
                db, username="audrey", role=Role.AUDITOR, password=PASSWORD, now=now, actor="t"
            )
        r = await stage.client.post("/api/login", json={"username": "audrey", "password": PASSWORD})
        csrf = (await r.json())["csrf_token"]
        assert (await stage.client.get(f"/api/sessions/{sid}/stats")).status == 200
        r = await stage.client.get(f"/api/sessions/{sid}/links")
        assert (r.status, (await r.json())["error"]) == (403, "forbidden")
        r = await stage.client.post(f"/api/sessions/{sid}/end", headers={"X-CSRF-Token": csrf})
        assert (r.status, (await r.json())["error"]) == (403, "forbidden")
        r = await stage.client.get("/api/sessions/999/stats")
        assert (r.status, (await r.json())["error"]) == (404, "not_found")


@SQLITE_ONLY
async def test_a_session_ended_elsewhere_disconnects_its_viewers(
    store: Store, tmp_path: Path, now: datetime
) -> None:
    """``studycast session end`` writes the store only; the running relay follows within ~5 s."""
    async with relay_stage(store, tmp_path, now, "vp8") as stage:
        await stage.publish()
        watcher = await stage.watch()
        async with store.write() as db:
            await end_session(db, stage.session_id, now=now, actor="cli")
        await wait_for(lambda: watcher.pc.connectionState == "closed", 12, "the viewer closed")
        assert stage.session_id not in stage.app[RELAY].sessions
        r = await stage.client.post(
            f"/whep/{stage.session_id}",
            data=watcher.pc.localDescription.sdp,
            headers={
                "Authorization": f"Bearer {stage.viewer_token}",
                "Content-Type": "application/sdp",
            },
        )
        assert (r.status, (await r.json())["error"]) == (409, "session_ended")
