"""Broadcasts a dead relay process left live: the origin's next start pauses them as of the last
sign of the run before (its node row's last report, the end of the session's recording), so
that live time, and every member's share of it, does not run on through the outage.

The choice of time is pure (``paused_at``); the rest runs on the real record stores (SQLite and
PostgreSQL) with the relay's own state recorder writing the "live" first. The whole path, a
``kill -9`` of a real server mid-broadcast and its next start, is in
``test_recording_server_kill.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from relay_support import create_study_session
from sqlalchemy import select
from support import FakeClock, broadcast_changes

from attendance import intervals
from attendance.audit import verify_chains
from attendance.models import (
    AdminEvent,
    Node,
    Recording,
    SessionState,
    StudySession,
)
from attendance.store import Store
from server.broadcast_state import (
    RESTART_REASON,
    BroadcastStateRecorder,
    pause_broadcasts_left_live,
    paused_at,
)

T0 = datetime.fromisoformat("2026-12-07T09:00:00+00:00")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_the_pause_is_the_last_sign_of_the_run_never_before_live_nor_after_now() -> None:
    now = at(600)
    assert paused_at(at(0), [at(40), at(42)], now) == at(42)
    assert paused_at(at(0), [None, at(40)], now) == at(40)
    # A report older than the broadcast (a node that reported, then went live): no negative live.
    assert paused_at(at(100), [at(95)], now) == at(100)
    # A clock that went backwards, or a sign from the future: never after now.
    assert paused_at(at(0), [at(900)], now) == now
    # Nothing known: as much live time as without this, never more.
    assert paused_at(at(0), [None, None], now) == now
    assert paused_at(None, [], now) == now
    assert paused_at(None, [at(40)], now) == at(40)


async def _state(store: Store, session_id: int) -> SessionState:
    async with store.read() as db:
        session = await db.get(StudySession, session_id)
        assert session is not None
        return session.state


def _live_seconds(changes: list[dict[str, Any]], until: datetime) -> float:
    pairs = [(datetime.fromisoformat(c["at"]), c["state"]) for c in changes]
    return sum((s.end - s.start).total_seconds() for s in intervals.live_spans(pairs, until))


async def _node(store: Store, name: str, seen: datetime, status: dict[str, Any]) -> None:
    async with store.write() as db:
        db.add(
            Node(
                name=name,
                role="origin",
                url="http://127.0.0.1:1",
                pid=1,
                started_at=at(-60),
                seen_at=seen,
                status=status,
            )
        )


async def test_sessions_left_live_are_paused_as_of_the_last_sign_and_only_once(
    store: Store,
) -> None:
    clock = FakeClock(at(0))
    recorded, reported, held, paused = [
        await create_study_session(store, at(-600), "vp8") for _ in range(4)
    ]
    recorder = BroadcastStateRecorder(store, clock)
    recorder.start()
    for session_id in (recorded, reported, held, paused):
        recorder(session_id, "live")
    clock.advance(seconds=10)
    recorder(paused, "paused")  # a broadcaster that dropped out before the crash
    await recorder.close()
    async with store.write() as db:
        db.add(
            Recording(
                session_id=recorded,
                segment_index=0,
                path=f"recordings/{recorded}/0.webm",
                container="webm",
                started_at=at(0),
                ended_at=at(42),  # completed from the file by the recordings' recovery
            )
        )
    await _node(store, "origin", at(40), {"sessions": {}})
    # Another origin, heard from 2 s ago, holds ``held``'s broadcaster: not this node's to pause.
    await _node(
        store,
        "origin-b",
        at(598),
        {"sessions": {str(held): {"source": "broadcaster", "state": "live"}}},
    )

    clock.now = at(600)  # the next start, nine minutes after the process died
    done = await pause_broadcasts_left_live(store, clock, "origin")

    assert [(d.session_id, d.live_at, d.paused_at) for d in done] == [
        (recorded, at(0), at(42)),  # the recording ran on past the last report
        (reported, at(0), at(40)),
    ]
    assert [await _state(store, s) for s in (recorded, reported, held, paused)] == [
        SessionState.PAUSED,
        SessionState.PAUSED,
        SessionState.LIVE,
        SessionState.PAUSED,
    ]
    changes = await broadcast_changes(store, recorded)
    assert changes[-1] == {"state": "paused", "at": at(42).isoformat(), "reason": RESTART_REASON}
    assert _live_seconds(changes, at(600)) == 42.0  # not 600
    assert _live_seconds(await broadcast_changes(store, reported), at(600)) == 40.0
    assert len(await broadcast_changes(store, paused)) == 2  # live, paused: untouched
    async with store.read() as db:
        trail = (
            await db.scalars(
                select(AdminEvent)
                .where(AdminEvent.action == "broadcast_paused")
                .order_by(AdminEvent.id)
            )
        ).all()
    restarts = [e for e in trail if e.detail.get("reason") == RESTART_REASON]
    assert [(e.actor, e.target, e.detail["at"]) for e in restarts] == [
        ("relay", f"session:{recorded}", at(42).isoformat()),
        ("relay", f"session:{reported}", at(40).isoformat()),
    ]

    # The broadcaster comes back and the process dies again; the next start pauses it as of
    # the last report, and ``held`` too now (its origin has been silent for 102 s), as of that
    # origin's last report.
    recorder = BroadcastStateRecorder(store, clock)
    recorder.start()
    clock.now = at(660)
    recorder(recorded, "live")
    await recorder.close()
    async with store.write() as db:
        node = await db.get(Node, "origin")
        assert node is not None
        node.seen_at = at(690)
    clock.now = at(700)
    again = await pause_broadcasts_left_live(store, clock, "origin")
    assert [(d.session_id, d.live_at, d.paused_at) for d in again] == [
        (recorded, at(660), at(690)),
        (held, at(0), at(598)),  # as of its own origin's last report
    ]
    assert _live_seconds(await broadcast_changes(store, recorded), at(700)) == 42.0 + 30.0
    clock.now = at(701)
    assert await pause_broadcasts_left_live(store, clock, "origin") == []
    assert (await verify_chains(store, now=at(701))).ok
