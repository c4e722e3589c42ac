"""Group commit: concurrent batches share one transaction, and one bad batch fails alone."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from support import FakeClock

from attendance.errors import InvalidInput
from attendance.events import parse_batch
from attendance.ingest import Sender
from attendance.models import AttendanceEvent
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from server.ingest_queue import IngestQueue

VENUE = Sender(kind="venue", source="venue:bj-1")


async def _session(store: Store, now: datetime) -> int:
    draft = parse_draft(
        {"title": "group", "scheduled_start": now, "scheduled_end": now + timedelta(hours=1)}
    )
    async with store.write() as db:
        return int((await create_session(db, draft, now=now, actor="test", user_id=None)).id)


def _batch(now: datetime, n: int) -> tuple[list[str], object]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    events = [{"id": i, "type": "heartbeat", "at": now.isoformat()} for i in ids]
    return ids, parse_batch({"events": events})


async def test_concurrent_batches_share_transactions_and_one_bad_batch_fails_alone(
    store: Store, clock: FakeClock
) -> None:
    session_id = await _session(store, clock())
    queue = IngestQueue(store, clock, "secret")
    queue.start()
    try:
        # A crowd of good batches is committed in fewer transactions than batches.
        crowd = [_batch(clock(), 3) for _ in range(40)]
        await asyncio.wait_for(
            asyncio.gather(*(queue.submit(session_id, VENUE, b) for _, b in crowd)),  # type: ignore[arg-type]
            30,
        )
        assert queue.batches == 40 and queue.groups < 10
        batches = [_batch(clock(), 3) for _ in range(40)]
        jobs = [queue.submit(session_id, VENUE, b) for _, b in batches]  # type: ignore[arg-type]
        # One batch for a session that does not exist, in the middle of the crowd.
        _, stray = _batch(clock(), 2)
        jobs.insert(20, queue.submit(999_999, VENUE, stray))  # type: ignore[arg-type]
        results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 30)
    finally:
        await queue.close()
    failed = results.pop(20)
    assert isinstance(failed, InvalidInput) and "no study session 999999" in failed.detail
    for (ids, _), report in zip(batches, results, strict=True):
        assert not isinstance(report, BaseException)
        assert [(o.id, o.status) for o in report.outcomes] == [(i, "accepted") for i in ids]
    async with store.read() as db:
        stored = await db.scalar(
            select(func.count())
            .select_from(AttendanceEvent)
            .where(AttendanceEvent.session_id == session_id, AttendanceEvent.kind == "heartbeat")
        )
    assert stored == 240


async def test_submit_needs_a_running_queue(store: Store, clock: FakeClock) -> None:
    queue = IngestQueue(store, clock, "secret")
    _, batch = _batch(clock(), 1)
    with pytest.raises(RuntimeError, match="not running"):
        await queue.submit(1, VENUE, batch)  # type: ignore[arg-type]
    await queue.close()
