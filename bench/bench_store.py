"""Record store benchmark: roster import and hash-chained attendance event writes.

On a fresh SQLite file (and, with ``--postgres URL``, on a fresh PostgreSQL database created
and dropped here) it measures:

1. parsing and importing a roster of ``--members`` rows (``attendance.roster``);
2. writing ``--events`` attendance events in batches of ``--batch`` through ``Store.write()`` and
   ``append_attendance_events`` (the real hash-chained path the server uses);
3. the obvious alternative for comparison: one event per transaction, for ``--single`` events;
4. the duplicate check inside step 2, half-way and at the end, as journal.py runs it (an IN list)
   and, on PostgreSQL, as the LATERAL index probe proposed instead.

Every phase is bounded by ``--budget`` seconds; a phase that hits it reports what it did.

    .venv/bin/python bench/bench_store.py [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.migrate import upgrade
from attendance.models import AttendanceEvent, Member, StudySession
from attendance.roster import import_roster, parse_csv
from attendance.store import Store

NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


@dataclass
class Figure:
    backend: str
    step: str
    count: int
    seconds: float
    unit: str
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else float("inf")


def roster_csv(members: int) -> bytes:
    """A deterministic roster: 5 cities x 8 areas x 25 rooms, Chinese and ASCII names."""
    lines = ["member_no,name,unit_path,phone"]
    for i in range(1, members + 1):
        unit = f"城市{i % 5}/办公区{i % 8}/第{i % 25}会议室"
        lines.append(f"M{i:06d},成员 {i},{unit},+86 138 {i % 10000:04d} {i % 7777:04d}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8-sig")


def make_events(
    session_id: int, member_ids: Sequence[int], count: int, first: int
) -> list[NewAttendanceEvent]:
    """Heartbeats as clients send them; UUIDs derived from the index, so runs are repeatable."""
    return [
        NewAttendanceEvent(
            session_id=session_id,
            event_uuid=uuid.UUID(int=first + i),
            kind="heartbeat",
            source=f"member:{member_ids[i % len(member_ids)]}",
            client_time=NOW + timedelta(milliseconds=first + i),
            member_id=member_ids[i % len(member_ids)],
            payload={"visible": True, "media_bytes": 40_000 + i % 997},
        )
        for i in range(count)
    ]


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
async def fresh_store(backend: str, pg_url: str | None) -> AsyncIterator[Store]:
    """A migrated, empty store: a SQLite file in a temp dir, or a new PostgreSQL database."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="studycast-bench-") as tmp:
            store = Store(f"sqlite:///{tmp}/bench.db")
            try:
                await upgrade(store)
                yield store
            finally:
                await store.close()
        return
    assert pg_url is not None
    name = f"studycast_bench_{secrets.token_hex(6)}"
    await _pg_admin(pg_url, f'CREATE DATABASE "{name}"')
    try:
        store = Store(make_url(pg_url).set(database=name).render_as_string(hide_password=False))
        try:
            await upgrade(store)
            yield store
        finally:
            await store.close()
    finally:
        await _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def write_batches(
    store: Store,
    events: Sequence[NewAttendanceEvent],
    batch: int,
    budget: float,
    midway: Callable[[int], Awaitable[None]] | None = None,
) -> tuple[int, float, str]:
    """Write ``events`` ``batch`` at a time, one transaction each; stop at the time budget.

    Returns the count, the seconds, and the rates of the first, slowest and last tenth of the
    batches (a rate that falls as the table grows shows a query that scans instead of probing).
    ``midway(done)`` runs once half-way, outside the timing.
    """
    durations: list[float] = []
    batches = range(0, len(events), batch)
    for n, offset in enumerate(batches):
        chunk = events[offset : offset + batch]
        began = time.perf_counter()
        async with store.write() as db:
            result = await append_attendance_events(db, chunk, now=NOW + timedelta(seconds=n))
        durations.append(time.perf_counter() - began)
        assert len(result.stored) == len(chunk), "benchmark events must all be new"
        if sum(durations) > budget:
            break
        if midway is not None and n + 1 == len(batches) // 2:
            await midway(offset + len(chunk))
    done = min(len(events), len(durations) * batch)
    trend = ""
    if len(durations) >= 20:
        step = len(durations) // 10
        rates = [step * batch / sum(durations[i : i + step]) for i in range(0, 10 * step, step)]
        trend = f"tenths/s: first {rates[0]:,.0f}, slowest {min(rates):,.0f}, last {rates[-1]:,.0f}"
    return done, sum(durations), trend


# The alternative duplicate check proposed for journal.py on PostgreSQL: one array parameter and
# one unique-index probe per UUID, whatever the planner believes about the session's size.
LATERAL_PROBE = text(
    "SELECT x.u FROM unnest(CAST(:uuids AS uuid[])) AS x(u) CROSS JOIN LATERAL ("
    "SELECT 1 FROM attendance_events e WHERE e.session_id = :session AND e.event_uuid = x.u "
    "LIMIT 1) AS hit"
)


async def time_duplicate_checks(
    store: Store, backend: str, events: Sequence[NewAttendanceEvent], batch: int, when: str
) -> list[Figure]:
    """Time the duplicate check of ``append_attendance_events`` on the filled table: the query
    as journal.py builds it (an IN list), and on PostgreSQL the LATERAL probe above."""
    rounds = [events[i : i + batch] for i in range(0, min(len(events), 10 * batch), batch)]
    session_id = events[0].session_id
    forms: dict[str, Any] = {
        "dup check, IN list": lambda uuids: select(AttendanceEvent.event_uuid).where(
            AttendanceEvent.session_id == session_id, AttendanceEvent.event_uuid.in_(uuids)
        )
    }
    if backend == "postgresql":
        forms["dup check, LATERAL"] = lambda uuids: LATERAL_PROBE.bindparams(
            uuids=uuids, session=session_id
        )
    figures = []
    async with store.read() as db:
        for step, build in forms.items():
            start = time.perf_counter()
            for chunk in rounds:
                found = (await db.execute(build([e.event_uuid for e in chunk]))).all()
                assert len(found) == len(chunk)
            seconds = time.perf_counter() - start
            note = f"{seconds * 1000 / len(rounds):.1f} ms per {batch} UUIDs"
            figures.append(Figure(backend, f"{step} {when}", len(rounds), seconds, "lookups", note))
    return figures


async def bench_backend(backend: str, args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    async with fresh_store(backend, args.postgres) as store:
        data = roster_csv(args.members)
        t0 = time.perf_counter()
        parsed = parse_csv(data)
        t1 = time.perf_counter()
        report = await import_roster(store, parsed, now=NOW, actor="bench", source_name="bench.csv")
        t2 = time.perf_counter()
        assert report.created == args.members
        figures.append(
            Figure(backend, "roster parse + validate (CSV)", args.members, t1 - t0, "rows")
        )
        figures.append(
            Figure(backend, "roster import (1 transaction)", args.members, t2 - t1, "rows")
        )

        async with store.write() as db:
            session = StudySession(
                title="Benchmark session",
                scheduled_start=NOW,
                scheduled_end=NOW + timedelta(hours=2),
                created_at=NOW,
            )
            db.add(session)
            await db.flush()
            session_id = session.id
            member_ids = list((await db.scalars(select(Member.id).order_by(Member.id))).all())

        batched = make_events(session_id, member_ids, args.events, first=0)
        checks: list[Figure] = []

        async def midway(done: int) -> None:
            if profiler:
                profiler.disable()
            checks.extend(
                await time_duplicate_checks(store, backend, batched[:done], args.batch, "@50%")
            )
            if profiler:
                profiler.enable()

        profiler = cProfile.Profile() if args.profile and backend == "sqlite" else None
        if profiler:
            profiler.enable()
        done, seconds, note = await write_batches(store, batched, args.batch, args.budget, midway)
        if profiler:
            profiler.disable()
        if done < args.events:
            note = f"stopped at the {args.budget:.0f} s budget; {note}"
        figures.append(
            Figure(backend, f"events, {args.batch} per transaction", done, seconds, "events", note)
        )
        figures += checks
        figures += await time_duplicate_checks(store, backend, batched[:done], args.batch, "@100%")

        single = make_events(session_id, member_ids, args.single, first=args.events)
        s_done, s_seconds, _ = await write_batches(store, single, 1, args.budget)
        note = "" if s_done == args.single else f"stopped at the {args.budget:.0f} s budget"
        figures.append(
            Figure(backend, "events, 1 per transaction", s_done, s_seconds, "events", note)
        )

        async with store.read() as db:
            stored = await db.scalar(
                select(func.count())
                .select_from(AttendanceEvent)
                .where(AttendanceEvent.session_id == session_id)
            )
        assert stored == done + s_done, (stored, done, s_done)
    if profiler:
        print(f"\ncProfile of the batched event writes on {backend} (top 25 by own time):")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return figures


def print_table(figures: list[Figure]) -> None:
    print(f"{'backend':<11}{'step':<34}{'count':>9}{'seconds':>10}{'per second':>18}  note")
    for f in figures:
        rate = f"{f.rate:,.0f} {f.unit}/s"
        print(f"{f.backend:<11}{f.step:<34}{f.count:>9,}{f.seconds:>10.2f}{rate:>18}  {f.note}")
    for backend in dict.fromkeys(f.backend for f in figures):
        batched, single = (
            f for f in figures if f.backend == backend and f.step.startswith("events")
        )
        print(
            f"{backend:<11}batched vs one per transaction: {batched.rate / single.rate:,.1f}x "
            "the events per second"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="also run on a fresh database there")
    parser.add_argument("--members", type=int, default=10_000, help="roster rows (10000)")
    parser.add_argument("--events", type=int, default=100_000, help="batched events (100000)")
    parser.add_argument("--batch", type=int, default=500, help="events per transaction (500)")
    parser.add_argument("--single", type=int, default=2_000, help="one-per-transaction (2000)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per phase (120)")
    parser.add_argument("--profile", action="store_true", help="cProfile the SQLite batches")
    args = parser.parse_args()
    for name in ("members", "events", "batch", "single"):
        if not 1 <= getattr(args, name) <= 10_000_000:
            parser.error(f"--{name} must be between 1 and 10000000")

    figures: list[Figure] = []
    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    for backend in backends:
        figures += asyncio.run(bench_backend(backend, args))
    print()
    print_table(figures)


if __name__ == "__main__":
    main()
