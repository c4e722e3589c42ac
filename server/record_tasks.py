"""The live record's background work in the server: evidence from the relay, timers, counts.

- ``EvidenceSampler`` records, every ``evidence_interval_s``, the spans during which media was
  actually delivered to each member's and each venue screen's WHEP connection (kind ``media``
  in the attendance log): the server's own evidence of watching.
- ``ticker`` announces scheduled presence checks when due, closes quiz questions whose timer
  ran out, and publishes live counts to the organiser and venue screens.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import func, select

from attendance.clock import Clock
from attendance.errors import StudycastError
from attendance.evaluation import expected_member_ids
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.models import Member, QuizQuestion, SessionCheckin, StudySession, Venue
from attendance.presence_checks import announce_due
from attendance.questions import close_due, question_results
from attendance.retention import apply_retention
from attendance.store import Store
from server.live import LiveHub
from server.live_events import (
    SCREENS,
    STAFF,
    due_work,
    publish_presence_check,
    publish_question,
)
from server.nodes import viewers_elsewhere
from server.relay.relay import Relay

log = logging.getLogger(__name__)

# Questions with new answers since the last tick: their live results are published.
DIRTY_QUESTIONS: web.AppKey[set[tuple[int, int]]] = web.AppKey("studycast.dirty_questions")
_NAMESPACE = uuid.UUID("6f1c3f4e-3b5e-4c1e-9d7a-5a3c2b1d0e0f")
COUNTS_EVERY_S = 5.0


@dataclass
class _Seen:
    octets: int
    at: datetime


class EvidenceSampler:
    """Turns the relay's per-viewer byte counters into ``media`` spans in the log."""

    def __init__(self, store: Store, relay: Relay, clock: Clock) -> None:
        self._store = store
        self._relay = relay
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._members: dict[str, int] = {}
        self._venues: dict[str, int] = {}

    async def sample(self) -> int:
        """Record one round of evidence; returns the number of spans written."""
        now = self._clock()
        mono = time.monotonic()
        spans: list[tuple[int, str, str, str, datetime, datetime, int]] = []
        live_resources: set[str] = set()
        # Viewers that left since the last round: what they received after it, up to leaving.
        while self._relay.departed:
            gone = self._relay.departed.popleft()
            kind, _, name = gone.subject.partition(":")
            seen = self._seen.pop(gone.resource_id, None)
            if seen is None:
                seen = _Seen(0, now - timedelta(seconds=max(0.0, mono - gone.created_at)))
            left = now - timedelta(seconds=max(0.0, mono - gone.left_at))
            if gone.octets > seen.octets and left > seen.at:
                spans.append(
                    (
                        gone.session_id,
                        gone.resource_id,
                        kind,
                        name,
                        seen.at,
                        left,
                        gone.octets - seen.octets,
                    )
                )
        for session_id, hub in list(self._relay.sessions.items()):
            for viewer in list(hub.viewers.values()):
                kind, _, name = viewer.subject.partition(":")
                if kind not in ("member", "venue") or not viewer.ready:
                    continue
                live_resources.add(viewer.resource_id)
                octets = sum(s.octets for s in viewer.streams.values())
                seen = self._seen.get(viewer.resource_id)
                if seen is None:
                    connected = now - timedelta(seconds=max(0.0, mono - viewer.created_at))
                    seen = _Seen(0, connected)
                if octets > seen.octets:
                    spans.append(
                        (
                            session_id,
                            viewer.resource_id,
                            kind,
                            name,
                            seen.at,
                            now,
                            octets - seen.octets,
                        )
                    )
                self._seen[viewer.resource_id] = _Seen(octets, now)
        for resource in set(self._seen) - live_resources:
            del self._seen[resource]
        if not spans:
            return 0
        await self._resolve({(k, n) for _, _, k, n, _, _, _ in spans})
        events = []
        for session_id, resource, kind, name, start, end, octets in spans:
            member_id = self._members.get(name) if kind == "member" else None
            venue_id = self._venues.get(name) if kind == "venue" else None
            if member_id is None and venue_id is None:
                continue
            events.append(
                NewAttendanceEvent(
                    session_id=session_id,
                    event_uuid=uuid.uuid5(_NAMESPACE, f"{session_id}:{resource}:{now.isoformat()}"),
                    kind="media",
                    source="relay",
                    client_time=now,
                    member_id=member_id,
                    venue_id=venue_id,
                    payload={
                        "from": start.isoformat(),
                        "to": end.isoformat(),
                        "resource": resource,
                        "octets": octets,
                    },
                )
            )
        if events:
            async with self._store.write() as db:
                await append_attendance_events(db, events, now=now)
        return len(events)

    async def _resolve(self, subjects: set[tuple[str, str]]) -> None:
        members = {n for k, n in subjects if k == "member" and n not in self._members}
        venues = {n for k, n in subjects if k == "venue" and n not in self._venues}
        if not members and not venues:
            return
        async with self._store.read() as db:
            if members:
                rows = await db.execute(
                    select(Member.member_no, Member.id).where(Member.member_no.in_(members))
                )
                self._members.update({n: i for n, i in rows})
            if venues:
                rows = await db.execute(select(Venue.slug, Venue.id).where(Venue.slug.in_(venues)))
                self._venues.update({s: i for s, i in rows})

    async def run(self, interval: float) -> None:
        """Sample every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sample()
            except StudycastError as exc:
                log.warning("could not record media evidence: %s", exc.detail)
            except Exception:
                log.exception("could not record media evidence")


async def tick(store: Store, hub: LiveHub, clock: Clock) -> None:
    """One round: announce due presence checks and close expired quiz questions."""
    now = clock()
    async with store.read() as db:
        due = await due_work(db, now=now)
    if not due:
        return
    async with store.write() as db:
        announced = await announce_due(db, now=now)
        closed = await close_due(db, now=now)
    for check in announced:
        publish_presence_check(hub, check, now)
    for question in closed:
        publish_question(hub, question, now)


async def live_counts(
    store: Store,
    relay: Relay,
    session_id: int,
    *,
    node: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Viewers by kind from the relay (with ``node``: plus those of the other nodes online),
    and check-ins per venue from the store."""
    relay_hub = relay.sessions.get(session_id)
    viewers: dict[str, int] = {}
    if relay_hub is not None:
        for viewer in relay_hub.viewers.values():
            if viewer.kind != "edge":  # an edge's pull is not a viewer: its viewers are counted
                viewers[viewer.kind] = viewers.get(viewer.kind, 0) + 1
    async with store.read() as db:
        if node is not None and now is not None:
            elsewhere = await viewers_elsewhere(db, session_id, now=now, this_node=node)
            for kind, n in elsewhere.items():
                viewers[kind] = viewers.get(kind, 0) + n
        rows = await db.execute(
            select(Venue.slug, func.count())
            .join(SessionCheckin, SessionCheckin.venue_id == Venue.id)
            .where(SessionCheckin.session_id == session_id)
            .group_by(Venue.slug)
        )
        checkins = {slug: int(n) for slug, n in rows}
    return {
        "viewers": viewers,
        "viewers_total": sum(viewers.values()),
        "checkins": checkins,
        "checkins_total": sum(checkins.values()),
    }


async def publish_results(
    store: Store, hub: LiveHub, dirty: set[tuple[int, int]], clock: Clock
) -> None:
    """Live answer distribution of questions answered since the last round (staff only)."""
    if not dirty:
        return
    pending = sorted(dirty)
    dirty.clear()
    now = clock()
    async with store.read() as db:
        for session_id, question_id in pending:
            session = await db.get(StudySession, session_id)
            question = await db.get(QuizQuestion, question_id)
            if session is None or question is None:
                continue
            expected = await expected_member_ids(db, session)
            results = await question_results(db, question, expected_member_ids=expected, now=now)
            hub.publish(session_id, "quiz_results", results, audience=STAFF)


async def run_ticker(
    store: Store,
    hub: LiveHub,
    relay: Relay,
    clock: Clock,
    interval: float,
    dirty: set[tuple[int, int]],
    *,
    origin: bool = True,
    node: str | None = None,
) -> None:
    """Tick every ``interval`` seconds and publish counts every few seconds, until cancelled.
    An edge (``origin=False``) only publishes the results of the answers it took in: the
    origin runs timers and counts for everyone."""
    last_counts = 0.0
    while True:
        await asyncio.sleep(interval)
        try:
            if origin:
                await tick(store, hub, clock)
            await publish_results(store, hub, dirty, clock)
            if origin and time.monotonic() - last_counts >= COUNTS_EVERY_S:
                last_counts = time.monotonic()
                for session_id in hub.active_sessions():
                    counts = await live_counts(store, relay, session_id, node=node, now=clock())
                    hub.publish(session_id, "counts", counts, audience=SCREENS)
        except StudycastError as exc:
            log.warning("live record tick failed: %s", exc.detail)
        except Exception:
            log.exception("live record tick failed")


RETENTION_EVERY_S = 3600.0


async def run_retention(
    store: Store,
    clock: Clock,
    *,
    raw_events_days: int | None,
    recordings_days: int | None,
    recordings_root: Path,
    interval: float = RETENTION_EVERY_S,
) -> None:
    """Apply the retention settings now and then every ``interval`` seconds, until cancelled."""
    if raw_events_days is None and recordings_days is None:
        return
    while True:
        try:
            async with store.write() as db:
                await apply_retention(
                    db,
                    now=clock(),
                    raw_events_days=raw_events_days,
                    recordings_days=recordings_days,
                    recordings_root=recordings_root,
                    actor="retention",
                )
        except StudycastError as exc:
            log.warning("retention failed: %s", exc.detail)
        except Exception:
            log.exception("retention failed")
        await asyncio.sleep(interval)
