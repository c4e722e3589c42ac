"""Retention: raw evidence of long-ended sessions is pruned (chain links kept, summaries kept),
old recordings lose their files; every deletion is in the admin trail."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path

from live_record_support import seed
from sqlalchemy import select

from attendance.audit import verify_chains
from attendance.evaluation import finalize_session
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.models import AdminEvent, AttendanceEvent, Recording, SessionResult
from attendance.retention import apply_retention
from attendance.sessions import end_session
from attendance.store import Store


def _event(session_id: int, kind: str, at: datetime, **fields: object) -> NewAttendanceEvent:
    return NewAttendanceEvent(
        session_id=session_id,
        event_uuid=uuid.uuid4(),
        kind=kind,
        source="test",
        client_time=at,
        **fields,  # type: ignore[arg-type]
    )


async def test_raw_evidence_is_pruned_and_summaries_stay(
    store: Store, now: datetime, tmp_path: Path
) -> None:
    session_id, other_id, members, _venues = await seed(store, now)
    m1 = members["M1"]
    t = lambda s: now + timedelta(seconds=s)  # noqa: E731
    async with store.write() as db:
        await append_attendance_events(
            db,
            [
                _event(
                    session_id, "broadcast", t(0), payload={"state": "live", "at": t(0).isoformat()}
                ),
                _event(
                    session_id,
                    "media",
                    t(600),
                    member_id=m1,
                    payload={"from": t(0).isoformat(), "to": t(600).isoformat()},
                ),
                *(
                    _event(
                        session_id,
                        "heartbeat",
                        t(s),
                        member_id=m1,
                        payload={"status": "accepted", "happened_at": t(s).isoformat()},
                    )
                    for s in range(0, 600, 15)
                ),
                _event(session_id, "check_out", t(5), member_id=m1, payload={"status": "refused"}),
            ],
            now=t(600),
        )
        await end_session(db, session_id, now=t(600), actor="test")
        await finalize_session(db, session_id, now=t(600))
        db.add(
            Recording(
                session_id=session_id,
                segment_index=0,
                path="recordings/1/0.webm",
                container="webm",
                started_at=t(0),
            )
        )
    async with store.read() as db:
        before = {
            r.member_id: (r.watched_s, r.qualified, r.reason)
            for r in await db.scalars(select(SessionResult))
        }
        hashes = [
            (e.id, e.prev_hash, e.hash)
            for e in await db.scalars(select(AttendanceEvent).order_by(AttendanceEvent.id))
        ]
    assert before[m1][0] == 600.0

    root = tmp_path / "files"
    recording = root / "recordings" / "1" / "0.webm"
    recording.parent.mkdir(parents=True)
    recording.write_bytes(b"webm")

    # Too early: nothing is past 30 days yet.
    async with store.write() as db:
        early = await apply_retention(
            db,
            now=t(600) + timedelta(days=29),
            raw_events_days=30,
            recordings_days=30,
            recordings_root=root,
            actor="test",
        )
    assert early.as_json()["pruned_total"] == 0 and early.deleted_recordings == []

    later = t(600) + timedelta(days=31)
    async with store.write() as db:
        dry = await apply_retention(
            db,
            now=later,
            raw_events_days=30,
            recordings_days=30,
            recordings_root=root,
            actor="test",
            dry_run=True,
        )
    assert dry.pruned_events == {session_id: 41} and recording.exists()

    async with store.write() as db:
        done = await apply_retention(
            db,
            now=later,
            raw_events_days=30,
            recordings_days=30,
            recordings_root=root,
            actor="cli",
        )
    assert done.pruned_events == {session_id: 41}
    assert len(done.deleted_recordings) == 1 and not recording.exists()

    async with store.read() as db:
        rows = list(await db.scalars(select(AttendanceEvent).order_by(AttendanceEvent.id)))
        # Every row is still there with its hashes: the chain links from end to end.
        assert [(e.id, e.prev_hash, e.hash) for e in rows] == hashes
        pruned = [e for e in rows if e.pruned_at is not None]
        assert {e.kind for e in pruned} == {"heartbeat", "media"} and len(pruned) == 41
        assert all(e.payload == {} for e in pruned)
        kept = [e.kind for e in rows if e.pruned_at is None]
        assert kept == ["broadcast", "check_out", "broadcast"]
        after = {
            r.member_id: (r.watched_s, r.qualified, r.reason)
            for r in await db.scalars(select(SessionResult))
        }
        assert after == before
        rec = (await db.scalars(select(Recording))).one()
        assert rec.deleted_at == later and rec.deleted_reason == "retention: older than 30 days"
        trail = [
            (a.actor, a.action, a.target, a.detail)
            for a in await db.scalars(
                select(AdminEvent).where(AdminEvent.action.like("retention_%"))
            )
        ]
    assert trail == [
        (
            "cli",
            "retention_pruned_events",
            f"session:{session_id}",
            {"kinds": ["heartbeat", "media"], "rows": 41, "days": 30},
        ),
        (
            "cli",
            "retention_deleted_recording",
            f"recording:{rec.id}",
            {
                "session_id": session_id,
                "path": "recordings/1/0.webm",
                "sha256": None,
                "file_existed": True,
                "days": 30,
            },
        ),
    ]
    # The chain still verifies end to end: pruned rows are followed by their logged links.
    report = await verify_chains(store, now=later)
    assert report.ok and report.chains["attendance"].pruned_followed == 41
    # A second run finds nothing more to do; the other (never ended) session is untouched.
    async with store.write() as db:
        again = await apply_retention(
            db,
            now=later,
            raw_events_days=30,
            recordings_days=30,
            recordings_root=root,
            actor="test",
        )
    assert again.as_json()["pruned_total"] == 0 and again.deleted_recordings == []
    assert other_id not in done.pruned_events


async def test_a_recording_path_outside_the_root_is_never_deleted(
    store: Store, now: datetime, tmp_path: Path
) -> None:
    session_id, _, _, _ = await seed(store, now)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    async with store.write() as db:
        db.add(
            Recording(
                session_id=session_id,
                segment_index=0,
                path="../precious.txt",
                container="webm",
                started_at=now,
            )
        )
    root = tmp_path / "data"
    root.mkdir()
    async with store.write() as db:
        report = await apply_retention(
            db,
            now=now + timedelta(days=2),
            raw_events_days=None,
            recordings_days=1,
            recordings_root=root,
            actor="test",
        )
    assert outside.read_text() == "keep me"
    assert report.missing_files == ["../precious.txt"]
