"""The server's own evidence of watching: media the relay delivered to a member's and a venue
screen's WHEP connection becomes ``media`` spans in the log, and with the member's heartbeats
it becomes watched time; broadcast states become live time. Real aiortc peers over loopback."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from relay_support import SECRET, Stage, Watcher, relay_stage, wait_for
from sqlalchemy import select

from attendance.clock import utcnow
from attendance.evaluation import finalize_session, session_attendance
from attendance.models import AttendanceEvent, Member, SessionResult, SessionVenue
from attendance.sessions import end_session
from attendance.store import Store
from attendance.units import UnitTree
from attendance.venues import add_venue
from server.app import STATE_RECORDER
from server.late_evidence import LATE_EVIDENCE, LateEvidence
from server.record_tasks import EvidenceSampler
from server.tokens import TokenRole, issue
from server.whip import RELAY


async def _member_and_venue(store: Store, session_id: int, now: datetime) -> None:
    async with store.write() as db:
        unit = await UnitTree(db, now).ensure(("北京", "朝阳"))
        db.add(
            Member(
                member_no="1001",
                name="张三",
                unit_id=unit.id,
                active=True,
                link_version=1,
                created_at=now,
                updated_at=now,
            )
        )
        venue = await add_venue(
            db,
            slug="bj-1",
            name="朝阳会议室",
            unit_path="北京/朝阳",
            capacity=None,
            now=now,
            actor="test",
        )
        db.add(SessionVenue(session_id=session_id, venue_id=venue.id))


async def test_delivered_media_and_heartbeats_become_watched_time(
    store: Store, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    async with relay_stage(store, tmp_path, now, "vp8", clock=utcnow) as stage:
        await _member_and_venue(store, stage.session_id, now)
        sid = stage.session_id
        member_token = issue(
            SECRET, session_id=sid, role=TokenRole.MEMBER, subject="member:1001", now=now, version=1
        )
        venue_token = issue(
            SECRET, session_id=sid, role=TokenRole.VENUE, subject="venue:bj-1", now=now
        )
        member_view, venue_view = Watcher(), Watcher()
        stage.watchers += [member_view, venue_view]
        await member_view.start(stage.http, stage.url(f"/whep/{sid}"), member_token)
        await venue_view.start(stage.http, stage.url(f"/whep/{sid}"), venue_token)
        await member_view.wait_connected()
        await venue_view.wait_connected()

        sampler = EvidenceSampler(store, stage.app[RELAY], utcnow)
        assert await sampler.sample() == 0, "nothing delivered before the broadcast"
        await stage.publish()
        started = utcnow()
        await wait_for(lambda: len(member_view.of("video")) >= 10, 10, "member video")
        await wait_for(lambda: len(venue_view.of("video")) >= 10, 10, "venue video")

        # Heartbeats from the member's page while media flows; evidence sampled along.
        beats = []
        for _ in range(3):
            beat = {"id": str(uuid.uuid4()), "type": "heartbeat", "at": utcnow().isoformat()}
            beats.append(beat)
            r = await stage.http.post(
                stage.url(f"/api/sessions/{sid}/events"),
                json={"events": [beat]},
                headers={"Authorization": f"Bearer {member_token}"},
            )
            assert r.status == 200, await r.text()
            assert (await r.json())["results"][0]["status"] == "accepted"
            await asyncio.sleep(0.5)
            assert await sampler.sample() == 2  # one span for the member, one for the screen
        await stage.app[STATE_RECORDER].idle.wait()
        finished = utcnow()

        async with store.read() as db:
            rows = list(
                await db.execute(
                    select(
                        AttendanceEvent.kind, AttendanceEvent.member_id, AttendanceEvent.venue_id
                    )
                    .where(AttendanceEvent.session_id == sid)
                    .order_by(AttendanceEvent.id)
                )
            )
            kinds = [k for k, _, _ in rows]
            assert kinds.count("broadcast") == 1  # live
            media = [(m, v) for k, m, v in rows if k == "media"]
            assert len(media) == 6
            assert sum(1 for m, v in media if m is not None and v is None) == 3
            assert sum(1 for m, v in media if m is None and v is not None) == 3
            attendance = await session_attendance(db, sid, now=finished)

        (row,) = attendance
        assert row.member_no == "1001"
        a = row.attendance
        assert a.first_join is not None and a.venue_id is None
        # Watched: from the first span of delivered media to the last sample, within what ran.
        assert 0.9 <= a.watched_s <= (finished - started).total_seconds() + 0.5
        assert a.watched_s <= a.live_s
        assert a.remote_s == a.watched_s and a.onsite_s == 0

        # Hanging up: the next round writes what each viewer received since the last one, up to
        # its leaving (not to the round); then the sampler has forgotten them.
        await member_view.hang_up(stage.http, member_token)
        await venue_view.hang_up(stage.http, venue_token)
        hung_up = utcnow()
        await asyncio.sleep(0.3)
        assert await sampler.sample() <= 2  # a viewer with nothing new since the round has no span
        async with store.read() as db:
            last = list(
                await db.scalars(
                    select(AttendanceEvent.payload)
                    .where(AttendanceEvent.session_id == sid, AttendanceEvent.kind == "media")
                    .order_by(AttendanceEvent.id.desc())
                    .limit(2)
                )
            )
        assert all(datetime.fromisoformat(p["to"]) <= hung_up for p in last)
        assert await sampler.sample() == 0


async def _watch_then_hang_up(stage: Stage, store: Store, now: datetime) -> EvidenceSampler:
    """Member 1001 watches with heartbeats every 0.5 s, evidence sampled along, then hangs up
    1 s after the last sample: that last second is delivered but not yet recorded."""
    await _member_and_venue(store, stage.session_id, now)
    sid = stage.session_id
    token = issue(
        SECRET, session_id=sid, role=TokenRole.MEMBER, subject="member:1001", now=now, version=1
    )
    view = Watcher()
    stage.watchers.append(view)
    await view.start(stage.http, stage.url(f"/whep/{sid}"), token)
    await view.wait_connected()
    sampler = EvidenceSampler(store, stage.app[RELAY], utcnow)
    await stage.publish()
    await wait_for(lambda: len(view.of("video")) >= 10, 10, "member video")
    for _ in range(4):
        beat = {"id": str(uuid.uuid4()), "type": "heartbeat", "at": utcnow().isoformat()}
        r = await stage.http.post(
            stage.url(f"/api/sessions/{sid}/events"),
            json={"events": [beat]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status == 200, await r.text()
        await asyncio.sleep(0.5)
        await sampler.sample()
    await asyncio.sleep(1.0)  # delivered, not yet recorded
    await view.hang_up(stage.http, token)
    return sampler


async def test_an_ended_session_is_evaluated_again_with_its_late_evidence(
    store: Store, tmp_path: Path
) -> None:
    """The end evaluates at once; the last seconds of a viewer who hung up just before are
    written at the next evidence round, and the stored results take them in afterwards."""
    now = datetime.now(UTC)
    async with relay_stage(store, tmp_path, now, "vp8", clock=utcnow) as stage:
        sid = stage.session_id
        sampler = await _watch_then_hang_up(stage, store, now)
        async with store.write() as db:
            await end_session(db, sid, now=utcnow(), actor="test")
            await finalize_session(db, sid, now=utcnow())
        async with store.read() as db:
            at_end = (await db.scalars(select(SessionResult.watched_s))).one()

        late = LateEvidence(store, utcnow, delay_s=0.5)
        late.after_end(sid)
        late.after_end(sid)  # asked twice before it runs: evaluated once
        assert await sampler.sample() == 1  # the viewer's last second, written after the end
        await wait_for(lambda: list(late.evaluated) == [sid], 10, "the evaluation again")
        async with store.read() as db:
            again = (await db.scalars(select(SessionResult.watched_s))).one()
        assert again >= at_end + 0.8, (at_end, again)
        await late.close()


async def test_a_session_ended_without_asking_is_evaluated_again_by_the_sweep(
    store: Store, tmp_path: Path
) -> None:
    """``studycast session end`` (or a node that stopped before its evaluation was due)
    evaluates once: the origin's sweep finds results older than their late evidence and
    evaluates the session again, once; sessions ended too long ago are left alone."""
    now = datetime.now(UTC)
    async with relay_stage(store, tmp_path, now, "vp8", clock=utcnow) as stage:
        assert stage.app[LATE_EVIDENCE].sweeping  # the origin sweeps from its start
        sid = stage.session_id
        sampler = await _watch_then_hang_up(stage, store, now)
        async with store.write() as db:  # what the CLI does: end and evaluate, nothing more
            await end_session(db, sid, now=utcnow(), actor="test")
            await finalize_session(db, sid, now=utcnow())
        async with store.read() as db:
            at_end = (await db.scalars(select(SessionResult.watched_s))).one()
        assert await sampler.sample() == 1  # the viewer's last seconds, written after the end

        shift = timedelta(0)
        late = LateEvidence(store, lambda: utcnow() + shift, delay_s=5.0, sweep_every_s=10.0)
        assert await late.sweep() == []  # not due before the end + delay + a sweep interval
        shift = timedelta(seconds=16)
        assert await late.sweep() == [sid]
        async with store.read() as db:
            result = (await db.scalars(select(SessionResult))).one()
        assert result.watched_s >= at_end + 0.8, (at_end, result.watched_s)
        assert await late.sweep() == []  # its results are now newer than its late evidence
        shift = timedelta(days=3)
        async with store.write() as db:  # evaluated too early again, but ended too long ago
            await finalize_session(db, sid, now=utcnow())
        assert await late.sweep() == []
        assert list(late.evaluated) == [sid]
        await late.close()
