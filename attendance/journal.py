"""Appending to the two hash-chained logs: attendance events and the admin audit trail.

Callers run these inside ``Store.write()``; the single write path (SQLite) or a transaction-scoped
advisory lock (PostgreSQL) keeps each chain linear.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from attendance.chain import GENESIS, link
from attendance.models import AdminEvent, AttendanceEvent

# Keys for pg_advisory_xact_lock, one per chain.
_CHAIN_LOCKS = {AttendanceEvent.__tablename__: 0x5354_0001, AdminEvent.__tablename__: 0x5354_0002}


async def _chain_head(db: AsyncSession, model: type[AttendanceEvent] | type[AdminEvent]) -> str:
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(
            text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCKS[model.__tablename__]}
        )
    head = await db.scalar(select(model.hash).order_by(model.id.desc()).limit(1))
    return head or GENESIS


async def lock_attendance_chain(db: AsyncSession) -> None:
    """Hold the attendance chain for the rest of the transaction (PostgreSQL; on SQLite the
    single write path already does), so a batch is judged against state nobody else changes."""
    await _chain_head(db, AttendanceEvent)


def admin_event_fields(
    at: datetime, actor: str, action: str, target: str | None, detail: dict[str, Any]
) -> dict[str, Any]:
    return {"at": at, "actor": actor, "action": action, "target": target, "detail": detail}


async def record_admin_event(
    db: AsyncSession,
    *,
    now: datetime,
    actor: str,
    action: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AdminEvent:
    """Append one entry to the admin audit trail (who did what, when)."""
    prev = await _chain_head(db, AdminEvent)
    fields = admin_event_fields(now, actor, action, target, detail or {})
    row = AdminEvent(**fields, prev_hash=prev, hash=link(prev, fields))
    db.add(row)
    await db.flush()
    return row


@dataclass(frozen=True)
class NewAttendanceEvent:
    """An event as accepted from a client, before it is stored."""

    session_id: int
    event_uuid: uuid.UUID
    kind: str
    source: str
    client_time: datetime
    member_id: int | None = None
    venue_id: int | None = None
    late: bool = False
    payload: dict[str, Any] = field(default_factory=dict)


def attendance_event_fields(event: NewAttendanceEvent, server_time: datetime) -> dict[str, Any]:
    return {
        "session_id": event.session_id,
        "event_uuid": event.event_uuid,
        "kind": event.kind,
        "member_id": event.member_id,
        "venue_id": event.venue_id,
        "source": event.source,
        "client_time": event.client_time,
        "server_time": server_time,
        "late": event.late,
        "payload": event.payload,
    }


# One unique-index probe per UUID. The plain IN list lets PostgreSQL pick a scan of the whole
# session when its statistics lag behind a fast-growing live session (measured: 50x slower).
_PG_STORED_UUIDS = text(
    "SELECT x.u FROM unnest(CAST(:uuids AS uuid[])) AS x(u) CROSS JOIN LATERAL ("
    "SELECT 1 FROM attendance_events e WHERE e.session_id = :session AND e.event_uuid = x.u "
    "LIMIT 1) AS hit"
)


async def _stored_uuids(
    db: AsyncSession, session_id: int, uuids: list[uuid.UUID]
) -> list[uuid.UUID]:
    """Which of ``uuids`` the session has stored already."""
    if db.get_bind().dialect.name == "postgresql":
        rows = await db.execute(_PG_STORED_UUIDS, {"uuids": uuids, "session": session_id})
    else:
        rows = await db.execute(
            select(AttendanceEvent.event_uuid).where(
                AttendanceEvent.session_id == session_id, AttendanceEvent.event_uuid.in_(uuids)
            )
        )
    return [u if isinstance(u, uuid.UUID) else uuid.UUID(str(u)) for u in rows.scalars()]


@dataclass(frozen=True)
class AppendResult:
    stored: list[uuid.UUID]
    duplicates: list[uuid.UUID]


async def append_attendance_events(
    db: AsyncSession,
    events: Sequence[NewAttendanceEvent],
    *,
    now: datetime,
    known_new: bool = False,
) -> AppendResult:
    """Store a batch once: events whose (session, UUID) is already stored, or that repeat within
    the batch, are reported as duplicates and not written again. ``known_new``: the caller
    checked that with the chain locked (the unique index still guards it)."""
    if not events:
        return AppendResult([], [])
    # Lock the chain first: a retry racing its original (another process) must see it stored.
    prev = await _chain_head(db, AttendanceEvent)
    seen: set[tuple[int, uuid.UUID]] = set()
    by_session: dict[int, list[uuid.UUID]] = {}
    for e in events:
        by_session.setdefault(e.session_id, []).append(e.event_uuid)
    if not known_new:
        for session_id, uuids in by_session.items():
            seen.update((session_id, u) for u in await _stored_uuids(db, session_id, uuids))
    values: list[dict[str, Any]] = []
    stored: list[uuid.UUID] = []
    duplicates: list[uuid.UUID] = []
    for e in events:
        key = (e.session_id, e.event_uuid)
        if key in seen:
            duplicates.append(e.event_uuid)
            continue
        seen.add(key)
        fields = attendance_event_fields(e, now)
        digest = link(prev, fields)
        values.append({**fields, "prev_hash": prev, "hash": digest})
        prev = digest
        stored.append(e.event_uuid)
    if values:
        await db.execute(insert(AttendanceEvent), values)
    return AppendResult(stored, duplicates)


async def count_attendance_events(db: AsyncSession, session_id: int) -> int:
    return int(
        await db.scalar(
            select(func.count())
            .select_from(AttendanceEvent)
            .where(AttendanceEvent.session_id == session_id)
        )
        or 0
    )
