"""Reports benchmark: one session of ``--members`` members and ``--events`` attendance events.

Builds, on a fresh SQLite file (and, with ``--postgres URL``, on a fresh PostgreSQL database
created and dropped here), a session of 2,000 members in a three-level unit tree with 20 venues:
mostly remote members (media spans and page heartbeats every 15 s), some on-site (check-ins and
venue screen spans), two presence checks. Then it times, each the median of ``--repeat`` runs:

1. ``session_report`` while the session still runs (the live computation from raw events);
2. ending it: ``end_session`` + ``finalize_session`` (once);
3. ``session_report`` of the ended session, from the stored results (target <= 1 s);
4. ``unit_rollup`` and ``venue_rollup``;
5. the member report as CSV and as XLSX (target <= 3 s each).

    .venv/bin/python bench/bench_reports.py [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench_store import fresh_store
from sqlalchemy import insert

from attendance.evaluation import finalize_session
from attendance.exports import members_table, to_csv, to_xlsx
from attendance.journal import NewAttendanceEvent, append_attendance_events
from attendance.models import Member, PresenceCheck, PresenceResponse
from attendance.reports import session_report, unit_rollup, venue_rollup
from attendance.sessions import create_session, end_session, parse_draft
from attendance.store import Store
from attendance.units import UnitTree, parse_unit_path
from attendance.venues import add_venue

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
LIVE_MIN = 60
CITIES, AREAS, POINTS = 5, 4, 5  # 100 leaf units
VENUES = 20
ONSITE_SHARE = 0.2


@dataclass
class Figure:
    backend: str
    step: str
    seconds: float
    target: float | None = None
    note: str = ""


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def build(store: Store, args: argparse.Namespace) -> tuple[int, int]:
    """The session, running; returns its id and the number of events stored."""
    leaves: list[str] = []
    async with store.write() as db:
        tree = UnitTree(db, T0)
        unit_ids: list[int] = []
        for c in range(CITIES):
            for a in range(AREAS):
                for p in range(POINTS):
                    path = f"城市{c}/片区{a}/点{p}"
                    leaves.append(path)
                    unit_ids.append((await tree.ensure(parse_unit_path(path))).id)
        venue_ids = []
        for v in range(VENUES):
            path = "/".join(leaves[v * len(leaves) // VENUES].split("/")[:2])
            info = await add_venue(
                db, slug=f"v{v:02d}", name=f"会场{v}", unit_path=path, now=T0, actor="bench"
            )
            venue_ids.append(info.id)
        await db.execute(
            insert(Member),
            [
                {
                    "member_no": f"{100000 + i}",
                    "name": f"成员{i}",
                    "unit_id": unit_ids[i % len(unit_ids)],
                    "active": True,
                    "link_version": 1,
                    "created_at": T0,
                    "updated_at": T0,
                }
                for i in range(args.members)
            ],
        )
        draft = parse_draft(
            {
                "title": "基准学习会",
                "scheduled_start": T0,
                "scheduled_end": T0 + timedelta(hours=2),
                "venues": [f"v{v:02d}" for v in range(VENUES)],
                "expected_units": [f"城市{c}" for c in range(CITIES)],
            }
        )
        session_id = (await create_session(db, draft, now=T0, actor="bench", user_id=None)).id
    member_ids = list(range(1, args.members + 1))  # a fresh store numbers them from 1
    onsite = member_ids[: int(len(member_ids) * ONSITE_SHARE)]
    remote = member_ids[len(onsite) :]

    def event(kind: str, payload: dict[str, Any], **fields: Any) -> NewAttendanceEvent:
        return NewAttendanceEvent(
            session_id=session_id,
            event_uuid=uuid.uuid4(),
            kind=kind,
            source="bench",
            client_time=T0,
            payload=payload,
            **fields,
        )

    events = [event("broadcast", {"state": "live", "at": at(0).isoformat()})]
    events.append(event("broadcast", {"state": "paused", "at": at(1200).isoformat()}))
    events.append(event("broadcast", {"state": "live", "at": at(1500).isoformat()}))
    for n, venue in enumerate(venue_ids):
        for k in range(5):  # screens reconnecting now and then
            span = {"from": at(k * 720 + n).isoformat(), "to": at(k * 720 + 700).isoformat()}
            events.append(event("media", span, venue_id=venue))
    for member in remote:
        span = (member % 300, LIVE_MIN * 60 - member % 200)
        events.append(
            event(
                "media",
                {"from": at(span[0]).isoformat(), "to": at(span[1] / 2).isoformat()},
                member_id=member,
            )
        )
        events.append(
            event(
                "media",
                {"from": at(span[1] / 2 + 30).isoformat(), "to": at(span[1]).isoformat()},
                member_id=member,
            )
        )
    # The rest are heartbeats, spread over the remote members every 15 s.
    room = args.events - len(events) - len(onsite)
    per_member = max(1, room // len(remote))
    extra = room - per_member * len(remote)
    for i, member in enumerate(remote):
        for k in range(per_member + (1 if i < extra else 0)):
            t = member % 300 + k * 15
            payload = {"status": "accepted", "happened_at": at(t).isoformat(), "visible": True}
            events.append(event("heartbeat", payload, member_id=member))
    stored = 0
    for start in range(0, len(events), args.batch):
        async with store.write() as db:
            result = await append_attendance_events(
                db, events[start : start + args.batch], now=T0, known_new=True
            )
            stored += len(result.stored)
    # Check-ins count from their server time: one batch per arrival minute.
    by_minute: dict[int, list[NewAttendanceEvent]] = {}
    for i, member in enumerate(onsite):
        by_minute.setdefault(i % 10, []).append(
            event("check_in", {"status": "accepted"}, member_id=member, venue_id=venue_ids[i % 20])
        )
    for minute, batch in sorted(by_minute.items()):
        async with store.write() as db:
            result = await append_attendance_events(db, batch, now=at(minute * 60), known_new=True)
            stored += len(result.stored)
    async with store.write() as db:
        for opened in (600, 2400):
            check = PresenceCheck(
                session_id=session_id,
                code="1234",
                opened_at=at(opened),
                closes_at=at(opened + 60),
                announced_at=at(opened),
            )
            db.add(check)
            await db.flush()
            await db.execute(
                insert(PresenceResponse),
                [
                    {
                        "check_id": check.id,
                        "member_id": m,
                        "answered_at": at(opened + 20),
                        "code_given": "1234",
                        "outcome": "passed",
                    }
                    for m in member_ids
                    if m % 10
                ],
            )
    return session_id, stored


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    times = []
    result: Any = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


async def bench_backend(backend: str, args: argparse.Namespace) -> list[Figure]:
    figures: list[Figure] = []
    async with fresh_store(backend, args.postgres) as store:
        start = time.perf_counter()
        session_id, stored = await build(store, args)
        print(f"{backend}: built {stored:,} events in {time.perf_counter() - start:.1f} s")
        end = at(LIVE_MIN * 60)

        async def report() -> Any:
            async with store.read() as db:
                return await session_report(db, session_id, now=end)

        seconds, live = await timed(report, args.repeat)
        rows = len(live.rows)
        figures.append(
            Figure(backend, "session_report, running (live)", seconds, None, f"{rows} rows")
        )

        start = time.perf_counter()
        async with store.write() as db:
            await end_session(db, session_id, now=end, actor="bench")
            await finalize_session(db, session_id, now=end)
        figures.append(
            Figure(backend, "end_session + finalize_session", time.perf_counter() - start)
        )

        seconds, final = await timed(report, args.repeat)
        assert final.final and len(final.rows) == rows
        assert [r.as_json() for r in final.rows] == [r.as_json() for r in live.rows]
        figures.append(
            Figure(backend, "session_report, ended (stored)", seconds, 1.0, f"{rows} rows")
        )

        async def units() -> Any:
            return unit_rollup(final.rows)

        seconds, rolled = await timed(units, args.repeat)
        figures.append(Figure(backend, "unit_rollup", seconds, None, f"{len(rolled)} units"))

        async def venues() -> Any:
            async with store.read() as db:
                return await venue_rollup(db, session_id, now=end, rows=final.rows)

        seconds, by_venue = await timed(venues, args.repeat)
        figures.append(Figure(backend, "venue_rollup", seconds, None, f"{len(by_venue)} venues"))

        table = members_table(final)

        async def as_csv() -> Any:
            return to_csv(table)

        async def as_xlsx() -> Any:
            return to_xlsx(table)

        seconds, data = await timed(as_csv, args.repeat)
        figures.append(
            Figure(backend, "CSV export (members)", seconds, 3.0, f"{len(data):,} bytes")
        )
        seconds, data = await timed(as_xlsx, args.repeat)
        figures.append(
            Figure(backend, "XLSX export (members)", seconds, 3.0, f"{len(data):,} bytes")
        )
    return figures


def print_table(figures: list[Figure]) -> None:
    print("| store | step | median s | target | note |")
    print("|---|---|---:|---:|---|")
    for f in figures:
        target = f"<= {f.target:g} s" if f.target is not None else ""
        print(f"| {f.backend} | {f.step} | {f.seconds:.3f} | {target} | {f.note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="also run on a fresh database there")
    parser.add_argument("--members", type=int, default=2_000, help="members (2000)")
    parser.add_argument("--events", type=int, default=200_000, help="attendance events (200000)")
    parser.add_argument("--batch", type=int, default=5_000, help="events per transaction (5000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (3)")
    args = parser.parse_args()
    if not 100 <= args.members <= 1_000_000 or args.events < args.members * 2:
        parser.error("--members must be 100..1000000 and --events at least twice that")
    figures: list[Figure] = []
    for backend in ["sqlite"] + (["postgresql"] if args.postgres else []):
        figures += asyncio.run(bench_backend(backend, args))
    print()
    print_table(figures)
    missed = [f for f in figures if f.target is not None and f.seconds > f.target]
    if missed:
        raise SystemExit(f"missed targets: {', '.join(f'{f.backend} {f.step}' for f in missed)}")


if __name__ == "__main__":
    main()
