"""The record store on real SQLite files and the real PostgreSQL: connection settings, the single
write path under concurrency, rollback, idempotent appends and the audit chain they build."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from attendance.chain import GENESIS, verify
from attendance.errors import Conflict, InvalidInput, StoreError
from attendance.journal import (
    AppendResult,
    NewAttendanceEvent,
    append_attendance_events,
    attendance_event_fields,
    count_attendance_events,
)
from attendance.migrate import upgrade
from attendance.models import AttendanceEvent, OrgUnit, StudySession
from attendance.store import BUSY_TIMEOUT_MS, Store, normalise_url

BATCH = 10

# For behaviour that does not depend on the database kind: the SQLite file only.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> Any:
    s = Store(f"sqlite:///{tmp_path}/store.db")
    await upgrade(s)
    try:
        yield s
    finally:
        await s.close()


async def new_session(store: Store, now: datetime, title: str = "季度学习会") -> int:
    async with store.write() as db:
        session = StudySession(
            title=title,
            scheduled_start=now,
            scheduled_end=now + timedelta(minutes=90),
            created_at=now,
        )
        db.add(session)
        await db.flush()
        return session.id


def events(session_id: int, numbers: range | list[int], now: datetime) -> list[NewAttendanceEvent]:
    return [
        NewAttendanceEvent(
            session_id=session_id,
            event_uuid=uuid.UUID(int=n),
            kind="heartbeat",
            source=f"member:{n}",
            client_time=now + timedelta(seconds=n, microseconds=7),
            payload={"visible": True, "备注": "在线"},
        )
        for n in numbers
    ]


def stored_fields(row: AttendanceEvent) -> dict[str, Any]:
    """What the chain hashed for a stored row (mirrors journal.attendance_event_fields)."""
    return {
        "session_id": row.session_id,
        "event_uuid": row.event_uuid,
        "kind": row.kind,
        "member_id": row.member_id,
        "venue_id": row.venue_id,
        "source": row.source,
        "client_time": row.client_time,
        "server_time": row.server_time,
        "late": row.late,
        "payload": row.payload,
    }


async def chain_rows(store: Store) -> list[AttendanceEvent]:
    async with store.read() as db:
        return list(await db.scalars(select(AttendanceEvent).order_by(AttendanceEvent.id)))


async def assert_chain_holds(store: Store) -> list[AttendanceEvent]:
    rows = await chain_rows(store)
    assert verify((r.prev_hash, r.hash, stored_fields(r)) for r in rows) is None
    if rows:
        assert rows[0].prev_hash == GENESIS
    return rows


async def count(store: Store, model: Any) -> int:
    async with store.read() as db:
        return int(await db.scalar(select(func.count()).select_from(model)) or 0)


def test_stored_fields_mirror_the_journal(now: datetime) -> None:
    sample = events(1, [1], now)[0]
    row = AttendanceEvent(**attendance_event_fields(sample, now), prev_hash=GENESIS, hash="x")
    assert stored_fields(row) == attendance_event_fields(sample, now)


# -- URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "driver", "database", "host"),
    [
        ("sqlite:///data/studycast.db", "sqlite+aiosqlite", "data/studycast.db", None),
        ("sqlite:////srv/studycast/数据.db", "sqlite+aiosqlite", "/srv/studycast/数据.db", None),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite", "x.db", None),
        ("postgresql://u:p@db.example:5433/sc", "postgresql+asyncpg", "sc", "db.example"),
        ("postgresql+psycopg://u@db/studycast", "postgresql+asyncpg", "studycast", "db"),
        ("postgresql+asyncpg://db/studycast", "postgresql+asyncpg", "studycast", "db"),
        ("postgres://u@db/studycast", "postgresql+asyncpg", "studycast", "db"),
    ],
)
def test_normalise_url_accepts(raw: str, driver: str, database: str, host: str | None) -> None:
    url = normalise_url(raw)
    assert (url.drivername, url.database, url.host) == (driver, database, host)


def test_normalise_url_keeps_credentials_and_port() -> None:
    url = normalise_url("postgresql://alice:s3cr%40t@db.example:5433/studycast?sslmode=require")
    assert (url.username, url.password, url.port, dict(url.query)) == (
        "alice",
        "s3cr@t",
        5433,
        {"sslmode": "require"},
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql://u@db/studycast", "only sqlite and postgresql are supported"),
        ("oracle://db/x", "only sqlite and postgresql are supported"),
        ("not a url", "cannot be parsed"),
        ("", "cannot be parsed"),
    ],
)
def test_normalise_url_rejects(raw: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        normalise_url(raw)
    assert info.value.code == "invalid_input"


@pytest.mark.parametrize("raw", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(raw: str) -> None:
    with pytest.raises(InvalidInput, match="in-memory SQLite store cannot be shared"):
        Store(raw)


# -- SQLite connection settings ---------------------------------------------------------------


async def test_writer_pragmas(sqlite_store: Store) -> None:
    async with sqlite_store.write() as db:
        got = {
            name: (await db.execute(text(f"PRAGMA {name}"))).scalar()
            for name in (
                "journal_mode",
                "busy_timeout",
                "foreign_keys",
                "synchronous",
                "query_only",
            )
        }
    assert got == {
        "journal_mode": "wal",
        "busy_timeout": BUSY_TIMEOUT_MS,
        "foreign_keys": 1,
        "synchronous": 2,  # FULL
        "query_only": 0,
    }


async def test_reader_pragmas(sqlite_store: Store) -> None:
    async with sqlite_store.read() as db:
        got = {
            name: (await db.execute(text(f"PRAGMA {name}"))).scalar()
            for name in ("journal_mode", "busy_timeout", "foreign_keys", "query_only")
        }
    assert got == {
        "journal_mode": "wal",
        "busy_timeout": BUSY_TIMEOUT_MS,
        "foreign_keys": 1,
        "query_only": 1,
    }


async def test_reader_cannot_write(sqlite_store: Store, now: datetime) -> None:
    with pytest.raises(StoreError, match="readonly database") as info:
        async with sqlite_store.read() as db:
            await db.execute(
                insert(OrgUnit).values(name="北京", path="北京", depth=1, created_at=now)
            )
    assert info.value.code == "store_error"
    assert await count(sqlite_store, OrgUnit) == 0


async def test_write_takes_the_database_write_lock_at_begin(
    sqlite_store: Store, tmp_path: Path
) -> None:
    """BEGIN IMMEDIATE: another writer cannot slip in between our read and our write."""
    other = sqlite3.connect(tmp_path / "store.db", timeout=0, isolation_level=None)
    try:
        async with sqlite_store.write() as db:
            await db.execute(text("SELECT 1"))  # the transaction starts here, before any write
            with pytest.raises(sqlite3.OperationalError, match="database is locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


@SQLITE_ONLY
async def test_foreign_keys_are_enforced(store: Store, now: datetime) -> None:
    with pytest.raises(Conflict, match="referenced record is missing"):
        async with store.write() as db:
            await append_attendance_events(db, events(424242, [1], now), now=now)
    assert await count(store, AttendanceEvent) == 0


async def test_readers_see_only_committed_state(store: Store, now: datetime) -> None:
    async with store.write() as db:
        db.add(OrgUnit(name="北京", path="北京", depth=1, created_at=now))
        await db.flush()
        assert await count(store, OrgUnit) == 0  # uncommitted: invisible to readers
    assert await count(store, OrgUnit) == 1


# -- the single write path under concurrency ------------------------------------------------


async def append_batch(store: Store, session_id: int, task: int, now: datetime) -> AppendResult:
    numbers = range(task * BATCH + 1, task * BATCH + BATCH + 1)
    async with store.write() as db:
        return await append_attendance_events(
            db, events(session_id, numbers, now), now=now + timedelta(milliseconds=task)
        )


def assert_batches_contiguous(rows: list[AttendanceEvent], tasks: int) -> None:
    """Every batch landed in one piece: the chain is a concatenation of whole batches."""
    ints = [r.event_uuid.int for r in rows]
    chunks = [ints[i : i + BATCH] for i in range(0, len(ints), BATCH)]
    expected = {tuple(range(t * BATCH + 1, t * BATCH + BATCH + 1)) for t in range(tasks)}
    assert {tuple(c) for c in chunks} == expected
    assert len(chunks) == tasks


async def test_fifty_concurrent_writers(store: Store, now: datetime) -> None:
    session_id = await new_session(store, now)
    results = await asyncio.gather(*(append_batch(store, session_id, t, now) for t in range(50)))
    assert [len(r.stored) for r in results] == [BATCH] * 50
    assert all(r.duplicates == [] for r in results)
    rows = await assert_chain_holds(store)
    assert len(rows) == 50 * BATCH
    assert_batches_contiguous(rows, 50)
    async with store.read() as db:
        assert await count_attendance_events(db, session_id) == 50 * BATCH
    # Readers get back exactly what was written (times aware UTC, JSON with non-ASCII keys).
    first = next(r for r in rows if r.event_uuid.int == 1)
    assert first.client_time == now + timedelta(seconds=1, microseconds=7)
    assert first.payload == {"visible": True, "备注": "在线"}


async def test_two_stores_on_one_database_write_concurrently(
    store: Store, database_url: str, now: datetime
) -> None:
    """A second writer (as another process would have) waits its turn instead of failing."""
    session_id = await new_session(store, now)
    second = Store(database_url)
    try:
        results = await asyncio.gather(
            *(append_batch(store if t % 2 else second, session_id, t, now) for t in range(40))
        )
    finally:
        await second.close()
    assert [len(r.stored) for r in results] == [BATCH] * 40
    rows = await assert_chain_holds(store)
    assert len(rows) == 40 * BATCH
    assert_batches_contiguous(rows, 40)


async def test_readers_are_not_blocked_by_a_writer(store: Store, now: datetime) -> None:
    session_id = await new_session(store, now)
    await append_batch(store, session_id, 0, now)
    async with store.write() as db:
        await append_attendance_events(db, events(session_id, [999], now), now=now)
        # A write transaction is open; a read still answers, with the committed state.
        read = await asyncio.wait_for(count(store, AttendanceEvent), timeout=5)
        assert read == BATCH
    assert await count(store, AttendanceEvent) == BATCH + 1


# -- rollback ---------------------------------------------------------------------------------


async def test_failing_write_leaves_nothing(store: Store, now: datetime) -> None:
    session_id = await new_session(store, now)
    with pytest.raises(ValueError, match="boom"):
        async with store.write() as db:
            db.add(OrgUnit(name="上海", path="上海", depth=1, created_at=now))
            await append_attendance_events(db, events(session_id, range(1, 6), now), now=now)
            raise ValueError("boom")
    assert (await count(store, AttendanceEvent), await count(store, OrgUnit)) == (0, 0)


async def test_database_error_rolls_back_the_whole_transaction(store: Store, now: datetime) -> None:
    session_id = await new_session(store, now)
    bad = [
        NewAttendanceEvent(
            session_id=session_id,
            event_uuid=uuid.UUID(int=100),
            kind="check_in",
            source="member:x",
            client_time=now,
            member_id=424242,  # no such member
        )
    ]
    with pytest.raises(Conflict, match="referenced record is missing"):
        async with store.write() as db:
            db.add(OrgUnit(name="上海", path="上海", depth=1, created_at=now))
            good = events(session_id, range(1, 6), now)
            result = await append_attendance_events(db, good, now=now)
            assert len(result.stored) == 5
            await append_attendance_events(db, bad, now=now)
    assert (await count(store, AttendanceEvent), await count(store, OrgUnit)) == (0, 0)
    # The store is usable afterwards, and the chain starts again from the genesis hash.
    await append_batch(store, session_id, 0, now)
    rows = await assert_chain_holds(store)
    assert len(rows) == BATCH


async def test_cancelled_write_leaves_nothing(store: Store, now: datetime) -> None:
    session_id = await new_session(store, now)
    entered = asyncio.Event()

    async def slow_write() -> None:
        async with store.write() as db:
            await append_attendance_events(db, events(session_id, range(1, 4), now), now=now)
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(slow_write())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await count(store, AttendanceEvent) == 0
    await append_batch(store, session_id, 1, now)  # the write path is free again
    assert await count(store, AttendanceEvent) == BATCH


# -- idempotent appends -----------------------------------------------------------------------


async def test_append_is_idempotent(store: Store, now: datetime) -> None:
    s1 = await new_session(store, now, "第一场")
    s2 = await new_session(store, now, "第二场")
    u = [uuid.UUID(int=n) for n in range(1, 6)]

    async def append(batch: list[NewAttendanceEvent]) -> AppendResult:
        async with store.write() as db:
            return await append_attendance_events(db, batch, now=now)

    assert await append(events(s1, [1, 2, 3], now)) == AppendResult(u[0:3], [])
    assert await append(events(s1, [1, 2, 3], now)) == AppendResult([], u[0:3])
    # Partly known, and repeated within the batch: stored once, the rest reported.
    assert await append(events(s1, [3, 4, 4], now)) == AppendResult([u[3]], [u[2], u[3]])
    # UUIDs are unique per session: the same UUID in another session is a different event.
    assert await append(events(s2, [1], now)) == AppendResult([u[0]], [])
    assert await append([]) == AppendResult([], [])

    async with store.read() as db:
        assert await count_attendance_events(db, s1) == 4
        assert await count_attendance_events(db, s2) == 1
    rows = await assert_chain_holds(store)
    assert [(r.session_id, r.event_uuid.int) for r in rows] == [
        (s1, 1),
        (s1, 2),
        (s1, 3),
        (s1, 4),
        (s2, 1),
    ]


async def test_retry_racing_the_original_from_another_process(
    store: Store, database_url: str, now: datetime
) -> None:
    """A client retries while its first attempt is still being written by another process: the
    retry must be answered as duplicates, not fail."""
    session_id = await new_session(store, now)
    second = Store(database_url)
    first_written = asyncio.Event()

    async def original() -> AppendResult:
        async with store.write() as db:
            result = await append_attendance_events(db, events(session_id, [1, 2], now), now=now)
            first_written.set()
            await asyncio.sleep(0.5)  # the retry arrives before this commits
            return result

    async def retry() -> AppendResult:
        await first_written.wait()
        async with second.write() as db:
            return await append_attendance_events(db, events(session_id, [1, 2], now), now=now)

    try:
        got = await asyncio.gather(original(), retry())
    finally:
        await second.close()
    u = [uuid.UUID(int=1), uuid.UUID(int=2)]
    assert list(got) == [AppendResult(u, []), AppendResult([], u)]
    assert len(await assert_chain_holds(store)) == 2


# -- lifecycle and reachability ---------------------------------------------------------------


async def test_close_is_idempotent(database_url: str) -> None:
    s = Store(database_url)
    await s.close()
    await s.close()
    used = Store(database_url)
    await used.ping()
    await used.close()
    await used.close()


async def test_ping_answers(store: Store) -> None:
    await store.ping()  # no exception: the database answers


async def test_ping_unreachable_postgresql() -> None:
    s = Store("postgresql://studycast@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(StoreError, match="failed to answer") as info:
            await s.ping()
        assert info.value.code == "store_error"
    finally:
        await s.close()


async def test_ping_sqlite_in_missing_directory(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path}/missing/dir/x.db")
    try:
        with pytest.raises(StoreError, match="unable to open database file"):
            await s.ping()
    finally:
        await s.close()
    # aiosqlite's worker thread for the failed connection ends when the connection object is
    # collected; let that happen while this test's event loop still runs.
    gc.collect()
    await asyncio.sleep(0.05)


async def test_write_to_unreachable_postgresql_is_a_store_error() -> None:
    s = Store("postgresql://studycast@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(StoreError):
            async with s.write() as db:
                await db.execute(text("SELECT 1"))
    finally:
        await s.close()


async def test_read_from_unreachable_postgresql_is_a_store_error() -> None:
    s = Store("postgresql://studycast@127.0.0.1:1/nowhere")
    try:
        with pytest.raises(StoreError):
            async with s.read() as db:
                await db.execute(text("SELECT 1"))
    finally:
        await s.close()
