"""Audit chain benchmark: verify a million hash-chained attendance events.

On a fresh SQLite file (and, with ``--postgres URL``, on a fresh PostgreSQL database created and
dropped here) it:

1. writes ``--events`` attendance events as one valid chain: the fields and hashes computed
   exactly as ``append_attendance_events`` does (``chain.link`` over ``attendance_event_fields``),
   inserted directly ``--fill-batch`` rows per transaction; every ``--prune-every``-th row is
   then pruned as retention does (payload emptied, ``pruned_at`` set, hashes kept);
2. times ``attendance.audit.verify_chains`` over the whole store (target: <= 30 s);
3. the obvious alternative for comparison: ORM objects one by one into ``chain.verify``, on the
   first ``--orm-slice`` rows.

    .venv/bin/python bench/bench_audit.py [--postgres postgresql://127.0.0.1:5432/test]
    .venv/bin/python bench/bench_audit.py --keep /tmp/audit.db   # reuse the filled file
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import make_url

from attendance.audit import verify_chains
from attendance.chain import GENESIS, link
from attendance.journal import NewAttendanceEvent, attendance_event_fields
from attendance.migrate import upgrade
from attendance.models import AttendanceEvent, StudySession
from attendance.store import Store

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
KINDS = ("heartbeat", "heartbeat", "heartbeat", "check_in", "presence_answer", "quiz_answer")


async def _pg_admin(base_url: str, sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    url = make_url(base_url)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=10,
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_store(backend: str, args: argparse.Namespace) -> AsyncIterator[Store]:
    """A migrated store: a SQLite file (``--keep`` reuses one), or a new PostgreSQL database."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="studycast-bench-") as tmp:
            store = Store(f"sqlite:///{args.keep or f'{tmp}/bench.db'}")
            try:
                await upgrade(store)
                yield store
            finally:
                await store.close()
        return
    name = f"studycast_bench_{secrets.token_hex(6)}"
    await _pg_admin(args.postgres, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
        store = Store(url)
        try:
            await upgrade(store)
            yield store
        finally:
            await store.close()
    finally:
        await _pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def event(session_id: int, i: int) -> NewAttendanceEvent:
    """Event ``i``: deterministic, every field varying as real traffic does."""
    member = 1000 + i % 5000
    return NewAttendanceEvent(
        session_id=session_id,
        event_uuid=uuid.UUID(int=i + 1),
        kind=KINDS[i % len(KINDS)],
        source=f"member:{member}",
        client_time=NOW + timedelta(milliseconds=i * 7),
        late=i % 50 == 0,
        payload={"visible": True, "media_bytes": 40_000 + i % 997, "note": f"第{i % 13}节"},
    )


async def fill(store: Store, count: int, batch: int, prune_every: int) -> tuple[int, float]:
    """Write ``count`` events as one valid chain; returns rows written and seconds."""
    async with store.read() as db:
        stored = int(await db.scalar(select(func.count()).select_from(AttendanceEvent)) or 0)
    if stored:
        return stored, 0.0
    began = time.perf_counter()
    async with store.write() as db:
        session = StudySession(
            title="Audit benchmark",
            scheduled_start=NOW,
            scheduled_end=NOW + timedelta(hours=2),
            created_at=NOW,
        )
        db.add(session)
        await db.flush()
        session_id = session.id
    prev = GENESIS
    for offset in range(0, count, batch):
        values: list[dict[str, Any]] = []
        server_time = NOW + timedelta(seconds=offset // 100)
        for i in range(offset, min(count, offset + batch)):
            fields = attendance_event_fields(event(session_id, i), server_time)
            digest = link(prev, fields)
            values.append({**fields, "prev_hash": prev, "hash": digest, "pruned_at": None})
            prev = digest
        async with store.write() as db:
            await db.execute(insert(AttendanceEvent), values)
    if prune_every:
        async with store.write() as db:
            await db.execute(
                update(AttendanceEvent)
                .where(AttendanceEvent.id % prune_every == 0)
                .values(payload={}, pruned_at=NOW + timedelta(days=400))
            )
    return count, time.perf_counter() - began


async def orm_one_by_one(store: Store, limit: int) -> tuple[int, float]:
    """The obvious way: ORM objects streamed one by one, each rehashed with ``chain.link``
    (pruned rows followed by their link, as ``verify_chains`` does)."""
    began = time.perf_counter()
    prev = GENESIS
    async with store.read() as db:
        result = await db.stream_scalars(
            select(AttendanceEvent).order_by(AttendanceEvent.id).limit(limit)
        )
        async for e in result:
            assert e.prev_hash == prev, e.id
            if e.pruned_at is None:
                fields = {
                    "session_id": e.session_id,
                    "event_uuid": e.event_uuid,
                    "kind": e.kind,
                    "member_id": e.member_id,
                    "venue_id": e.venue_id,
                    "source": e.source,
                    "client_time": e.client_time,
                    "server_time": e.server_time,
                    "late": e.late,
                    "payload": e.payload,
                }
                assert link(prev, fields) == e.hash, e.id
            prev = e.hash
    return limit, time.perf_counter() - began


async def bench_backend(backend: str, args: argparse.Namespace) -> list[str]:
    lines = []
    async with fresh_store(backend, args) as store:
        written, seconds = await fill(store, args.events, args.fill_batch, args.prune_every)
        if seconds:
            lines.append(
                f"{backend}: wrote {written:,} chained events in {seconds:.1f} s "
                f"({written / seconds:,.0f}/s)"
            )
        for run in range(args.runs):
            profiler = cProfile.Profile() if args.profile and run == 0 else None
            if profiler:
                profiler.enable()
            began = time.perf_counter()
            report = await verify_chains(store, now=NOW, batch=args.batch)
            took = time.perf_counter() - began
            if profiler:
                profiler.disable()
                pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)
            chain = report.chains["attendance"]
            assert report.ok, report.as_json()
            assert chain.rows == written, (chain.rows, written)
            verdict = "meets" if took <= 30 else "MISSES"
            lines.append(
                f"{backend}: verify_chains run {run + 1}: {chain.rows:,} rows "
                f"({chain.pruned_followed:,} pruned, followed) in {took:.2f} s = "
                f"{chain.rows / took:,.0f} rows/s ({verdict} the 30 s target)"
            )
        if args.orm_slice:
            n, took = await orm_one_by_one(store, min(args.orm_slice, written))
            lines.append(
                f"{backend}: ORM objects one by one + chain.verify: {n:,} rows in {took:.2f} s "
                f"= {n / took:,.0f} rows/s (for 1M rows: ~{1_000_000 * took / n:.0f} s)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="also run on a fresh database there")
    parser.add_argument("--events", type=int, default=1_000_000, help="events (1000000)")
    parser.add_argument("--batch", type=int, default=10_000, help="verify page size (10000)")
    parser.add_argument("--fill-batch", type=int, default=10_000, help="rows per insert (10000)")
    parser.add_argument("--prune-every", type=int, default=100, help="prune every n-th row (100)")
    parser.add_argument("--orm-slice", type=int, default=100_000, help="ORM comparison rows")
    parser.add_argument("--runs", type=int, default=2, help="verify runs (2)")
    parser.add_argument("--keep", metavar="FILE", help="SQLite file to fill once and reuse")
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true", help="cProfile the first verify")
    args = parser.parse_args()
    backends = (["sqlite"] if args.sqlite else []) + (["postgresql"] if args.postgres else [])
    print(f"nproc {os.cpu_count()}, Python {sys.version.split()[0]}")
    for backend in backends:
        for line in asyncio.run(bench_backend(backend, args)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
