"""Live record over HTTP: 2,000 members check in, answer a question, then stream heartbeats.

A real ``studycast serve`` runs as a subprocess on a free 127.0.0.1 port, on a fresh SQLite file
(and, with ``--postgres URL``, on a fresh PostgreSQL database created and dropped here). The
store is prepared beforehand with the domain functions: a roster of ``--members`` members, two
venues, one session expecting all of them, an organiser login. Then, over loopback HTTP:

1. check-in: every member posts one ``check_in`` event with its own bearer token and the
   venue's current signed code (fetched by the organiser), arriving evenly over
   ``--checkin-spread`` seconds (0: all at once), at most ``--concurrency`` requests in flight;
   ``--retries`` of those requests are then sent again and must come back ``duplicate``;
2. quiz: the organiser creates and opens a question; every member posts one ``quiz_answer``,
   arriving evenly over ``--answer-spread`` seconds;
3. sustained ingest: ``--senders`` members each post ``--batches`` batches of ``--batch``
   (``--stream-concurrency`` batches in flight)
   heartbeats.

Afterwards the database is read directly: one ``attendance_events`` row per event UUID sent
(none missing, none twice, none extra), one ``quiz_answers`` row and one ``session_checkins``
row per member. Targets (all check in within 10 s, all answer within 5 s, p99 <= 200 ms,
>= 5,000 events/s in batches) are reported, not asserted; a failed correctness check makes the
exit status non-zero. Every phase stops at ``--budget`` seconds.

    .venv/bin/python bench/bench_live_record.py [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from attendance.migrate import upgrade
from attendance.models import (
    AttendanceEvent,
    QuizAnswer,
    Role,
    SessionCheckin,
)
from attendance.roster import import_roster, parse_csv
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from attendance.units import UnitTree
from attendance.users import add_user
from attendance.venues import add_venue
from server.tokens import TokenRole, issue

REPO = Path(__file__).resolve().parent.parent
STUDYCAST = REPO / ".venv" / "bin" / "studycast"
ACTOR = "bench:live_record"
ORGANISER = "bench-organiser"
VENUES = ("hall-a", "hall-b")
UNIT = "bench"
TARGET_CHECKIN_S = 10.0
TARGET_QUIZ_S = 5.0
TARGET_P99_MS = 200.0
TARGET_EVENTS_PER_S = 5_000.0
console = Console(width=150)


@dataclass
class Phase:
    """What one phase sent and got back."""

    name: str
    requests: int = 0
    events: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, one per request
    statuses: Counter[str] = field(default_factory=Counter)  # per event
    http_errors: list[str] = field(default_factory=list)
    timed_out: bool = False

    def pct(self, q: float) -> float:
        """The q-quantile of request latency in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("nan")


@dataclass
class Run:
    backend: str
    phases: list[Phase] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    db_counts: dict[str, int] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
async def fresh_database(backend: str, pg_url: str | None, tmp: Path) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file in ``tmp`` or a new PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/studycast.db"
        return
    assert pg_url is not None
    name = f"studycast_bench_{secrets.token_hex(6)}"
    await _pg_admin(pg_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def roster_csv(members: int) -> bytes:
    lines = ["member_no,name,unit_path"]
    lines += [f"M{i:05d},成员 {i},{UNIT}/组{i % 20}" for i in range(1, members + 1)]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


async def prepare(url: str, members: int, password: str) -> int:
    """Roster, venues, organiser and one session expecting everyone; returns the session id."""
    now = datetime.now(UTC)
    store = Store(url)
    try:
        await upgrade(store)
        await import_roster(
            store, parse_csv(roster_csv(members)), now=now, actor=ACTOR, source_name="bench.csv"
        )
        async with store.write() as db:
            await UnitTree(db, now).ensure([UNIT])
            for slug in VENUES:
                await add_venue(
                    db, slug=slug, name=f"Venue {slug}", unit_path=UNIT, now=now, actor=ACTOR
                )
            await add_user(
                db, username=ORGANISER, role=Role.ORGANISER, password=password, now=now, actor=ACTOR
            )
            draft = parse_draft(
                {
                    "title": "Live record benchmark",
                    "scheduled_start": now.isoformat(),
                    "scheduled_end": (now + timedelta(hours=2)).isoformat(),
                    "venues": list(VENUES),
                    "expected_units": [UNIT],
                }
            )
            session = await create_session(db, draft, now=now, actor=ACTOR, user_id=None)
            return session.id
    finally:
        await store.close()


@asynccontextmanager
async def running_server(url: str, data_dir: Path, secret: str) -> AsyncIterator[str]:
    """``studycast serve`` on a free loopback port; yields its base URL, stops it on exit."""
    port = free_port()
    env = {
        **os.environ,
        "STUDYCAST_DATABASE_URL": url,
        "STUDYCAST_SECRET_KEY": secret,
    }
    log_path = data_dir / "server.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            str(STUDYCAST),
            "serve",
            *("--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 30
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"server exited: {log_tail(log_path)}")
                try:
                    async with http.get(f"{base}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not up within 30 s: {log_tail(log_path)}")
                await asyncio.sleep(0.1)
        yield base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), timeout=5)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Organiser:
    """A logged-in organiser: cookie plus CSRF token on unsafe requests."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.csrf = ""

    async def login(self, password: str) -> None:
        body = await self.call("POST", "/api/login", {"username": ORGANISER, "password": password})
        self.csrf = body["csrf_token"]

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf else {}
        async with self.http.request(
            method, self.base + path, json=body, headers=headers
        ) as response:
            data = await response.json(content_type=None)
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: HTTP {response.status} {data}")
            return data


async def post_all(
    http: aiohttp.ClientSession,
    url: str,
    jobs: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    phase: Phase,
    concurrency: int,
    budget: float,
    spread: float = 0.0,
) -> None:
    """Post each (token, events) batch once, ``concurrency`` at a time, recording latencies and
    per-event statuses. With ``spread`` > 0 the requests arrive at evenly spaced times over
    ``spread`` seconds (an open loop: members arriving), otherwise all at once (saturation)."""
    limit = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(token: str, events: Sequence[dict[str, Any]], due: float) -> None:
        if due > 0:
            await asyncio.sleep(max(0.0, start + due - time.perf_counter()))
        async with limit:
            began = time.perf_counter()
            try:
                async with http.post(
                    url,
                    json={"events": list(events)},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    body = await response.json(content_type=None)
                    status = response.status
            except (aiohttp.ClientError, ValueError) as exc:
                phase.http_errors.append(f"{type(exc).__name__}: {exc}")
                return
            phase.latencies.append(time.perf_counter() - began)
            phase.requests += 1
            if status != 200:
                phase.http_errors.append(f"HTTP {status}: {str(body)[:300]}")
                return
            for result in body.get("results", []):
                phase.statuses[result["status"]] += 1
                if result["status"] != "accepted" and len(phase.http_errors) < 5:
                    phase.http_errors.append(f"event {result['status']}: {str(result)[:300]}")
            phase.events += len(events)

    began = time.perf_counter()
    step = spread / len(jobs) if jobs and spread > 0 else 0.0
    tasks = [asyncio.ensure_future(one(t, e, i * step)) for i, (t, e) in enumerate(jobs)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=budget)
    except TimeoutError:
        phase.timed_out = True
    phase.seconds = time.perf_counter() - began


async def post_streams(
    http: aiohttp.ClientSession,
    url: str,
    streams: Sequence[tuple[str, Sequence[Sequence[dict[str, Any]]]]],
    phase: Phase,
    concurrency: int,
    budget: float,
) -> None:
    """Each (token, batches) sender posts its batches one after the other, all senders at once."""
    limit = asyncio.Semaphore(concurrency)
    inner = Phase(phase.name)

    async def sender(token: str, batches: Sequence[Sequence[dict[str, Any]]]) -> None:
        for batch in batches:
            await post_all(http, url, [(token, batch)], inner, 1, budget)
            # post_all's own semaphore is per call; this one bounds all senders together.

    async def bounded(token: str, batches: Sequence[Sequence[dict[str, Any]]]) -> None:
        async with limit:
            await sender(token, batches)

    began = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(bounded(t, b) for t, b in streams)), timeout=budget)
    except TimeoutError:
        phase.timed_out = True
    phase.seconds = time.perf_counter() - began
    phase.requests, phase.events = inner.requests, inner.events
    phase.latencies, phase.statuses, phase.http_errors = (
        inner.latencies,
        inner.statuses,
        inner.http_errors,
    )


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


async def drive(
    base: str, session_id: int, secret: str, password: str, args: argparse.Namespace, run: Run
) -> dict[str, set[uuid.UUID]]:
    """The three phases over HTTP; returns the event UUIDs sent, by kind."""
    now = datetime.now(UTC)
    numbers = [f"M{i:05d}" for i in range(1, args.members + 1)]
    tokens = [
        issue(
            secret,
            session_id=session_id,
            role=TokenRole.MEMBER,
            subject=f"member:{no}",
            now=now,
            version=1,
        )
        for no in numbers
    ]
    sent: dict[str, set[uuid.UUID]] = {"check_in": set(), "quiz_answer": set(), "heartbeat": set()}
    events_url = f"{base}/api/sessions/{session_id}/events"
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    # unsafe=True: keep the login cookie of a bare IP address (127.0.0.1).
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=jar) as http:
        organiser = Organiser(http, base)
        await organiser.login(password)

        # 1. Check-in, then the same requests again as retries.
        codes = {
            slug: await organiser.call(
                "GET", f"/api/sessions/{session_id}/venues/{slug}/checkin-code"
            )
            for slug in VENUES
        }
        checkins: list[tuple[str, list[dict[str, Any]]]] = []
        for i, token in enumerate(tokens):
            code = codes[VENUES[i % len(VENUES)]]
            event_id = uuid.uuid4()
            sent["check_in"].add(event_id)
            event = {
                "id": str(event_id),
                "type": "check_in",
                "at": iso_now(),
                "venue": code["venue"],
                "window": code["window"],
                "session": session_id,
                "sig": code["signature"],
            }
            checkins.append((token, [event]))
        phase = Phase("check-in")
        await post_all(
            http, events_url, checkins, phase, args.concurrency, args.budget, args.checkin_spread
        )
        run.phases.append(phase)
        retry = Phase("check-in retries")
        step = max(1, len(checkins) // max(1, args.retries))
        await post_all(
            http, events_url, checkins[::step][: args.retries], retry, args.concurrency, args.budget
        )
        run.phases.append(retry)

        # 2. One question, answered by everyone.
        created = await organiser.call(
            "POST",
            f"/api/sessions/{session_id}/questions",
            {"prompt": "1+1?", "kind": "single", "choices": ["1", "2"], "correct": [1]},
        )
        qid = created["questions"][0]["id"]
        await organiser.call(
            "POST", f"/api/sessions/{session_id}/questions/{qid}/open", {"time_limit_s": 60}
        )
        answers: list[tuple[str, list[dict[str, Any]]]] = []
        for token in tokens:
            event_id = uuid.uuid4()
            sent["quiz_answer"].add(event_id)
            answers.append(
                (
                    token,
                    [
                        {
                            "id": str(event_id),
                            "type": "quiz_answer",
                            "at": iso_now(),
                            "question": qid,
                            "choices": [1],
                        }
                    ],
                )
            )
        phase = Phase("quiz answer")
        await post_all(
            http, events_url, answers, phase, args.concurrency, args.budget, args.answer_spread
        )
        run.phases.append(phase)

        # 3. Sustained ingest: senders stream batches of heartbeats.
        streams: list[tuple[str, list[list[dict[str, Any]]]]] = []
        for token in tokens[: args.senders]:
            batches = []
            for _ in range(args.batches):
                batch = []
                for _ in range(args.batch):
                    event_id = uuid.uuid4()
                    sent["heartbeat"].add(event_id)
                    batch.append(
                        {"id": str(event_id), "type": "heartbeat", "at": iso_now(), "visible": True}
                    )
                batches.append(batch)
            streams.append((token, batches))
        phase = Phase(f"heartbeats x{args.batch}")
        await post_streams(http, events_url, streams, phase, args.stream_concurrency, args.budget)
        run.phases.append(phase)
    return sent


async def verify(url: str, session_id: int, sent: dict[str, set[uuid.UUID]], run: Run) -> None:
    """Read the store directly: every UUID sent stored exactly once, nothing else."""
    store = Store(url)
    try:
        async with store.read() as db:
            rows = (
                await db.execute(
                    select(AttendanceEvent.kind, AttendanceEvent.event_uuid).where(
                        AttendanceEvent.session_id == session_id
                    )
                )
            ).all()
            quiz_rows = await db.scalar(select(func.count()).select_from(QuizAnswer))
            checkin_rows = await db.scalar(
                select(func.count())
                .select_from(SessionCheckin)
                .where(SessionCheckin.session_id == session_id, SessionCheckin.venue_id.isnot(None))
            )
    finally:
        await store.close()
    stored: dict[str, Counter[uuid.UUID]] = {}
    for kind, event_uuid in rows:
        stored.setdefault(kind, Counter())[uuid.UUID(str(event_uuid))] += 1
    for kind, ids in sent.items():
        got = stored.get(kind, Counter())
        run.db_counts[f"attendance_events {kind}"] = sum(got.values())
        twice = sum(1 for n in got.values() if n > 1)
        missing = len(ids - set(got))
        extra = len(set(got) - ids)
        if twice or missing or extra:
            run.failures.append(
                f"{kind}: {len(ids)} sent, {sum(got.values())} rows, "
                f"{missing} missing, {twice} stored twice, {extra} not sent"
            )
    for kind in set(stored) - set(sent):
        run.db_counts[f"attendance_events {kind} (other)"] = sum(stored[kind].values())
    run.db_counts["quiz_answers"] = quiz_rows or 0
    run.db_counts["session_checkins"] = checkin_rows or 0


def check_phases(run: Run, args: argparse.Namespace) -> None:
    expected = {
        "check-in": ("accepted", args.members),
        "check-in retries": ("duplicate", min(args.retries, args.members)),
        "quiz answer": ("accepted", args.members),
        f"heartbeats x{args.batch}": ("accepted", args.senders * args.batches * args.batch),
    }
    for phase in run.phases:
        status, count = expected[phase.name]
        if phase.timed_out:
            run.failures.append(f"{phase.name}: stopped at the {args.budget:.0f} s budget")
        if phase.statuses[status] != count or sum(phase.statuses.values()) != count:
            run.failures.append(
                f"{phase.name}: expected {count} {status}, got {dict(phase.statuses)}; "
                f"first problems: {phase.http_errors[:3]}"
            )
    if run.db_counts.get("quiz_answers") != args.members:
        run.failures.append(f"quiz_answers: {run.db_counts.get('quiz_answers')} rows")
    if run.db_counts.get("session_checkins") != args.members:
        run.failures.append(f"session_checkins: {run.db_counts.get('session_checkins')} rows")


async def bench_backend(backend: str, args: argparse.Namespace) -> Run:
    run = Run(backend)
    secret = secrets.token_urlsafe(48)
    password = secrets.token_urlsafe(18)
    with tempfile.TemporaryDirectory(prefix="studycast-live-") as tmp:
        data_dir = Path(tmp)
        async with fresh_database(backend, args.postgres, data_dir) as url:
            console.print(f"[bold]{backend}[/]: preparing {args.members} members")
            session_id = await prepare(url, args.members, password)
            sent: dict[str, set[uuid.UUID]] = {}
            try:
                async with running_server(url, data_dir, secret) as base:
                    console.print(f"[bold]{backend}[/]: server at {base}, session {session_id}")
                    sent = await drive(base, session_id, secret, password, args, run)
            finally:
                problems = [
                    line
                    for line in log_tail(data_dir / "server.log", 2000).splitlines()
                    if "ERROR" in line or "Traceback" in line or "WARNING" in line
                ]
                if problems:
                    console.print(f"[yellow]{backend} server log, warnings and errors:[/]")
                    for line in problems[:20]:
                        console.print(f"  {line}", markup=False)
            await verify(url, session_id, sent, run)
            check_phases(run, args)
    return run


def report(runs: Sequence[Run], args: argparse.Namespace) -> None:
    table = Table(
        title=f"Live record over HTTP: {args.members} members, nproc {os.cpu_count()}, "
        f"Python {platform.python_version()}, {args.concurrency} requests in flight "
        f"({args.stream_concurrency} for heartbeat batches), check-ins over "
        f"{args.checkin_spread:g} s, answers over {args.answer_spread:g} s"
    )
    for column in ("store", "phase", "requests", "events", "wall s", "events/s"):
        table.add_column(column, justify="right" if column not in ("store", "phase") else "left")
    for column in ("p50 ms", "p95 ms", "p99 ms", "max ms", "statuses"):
        table.add_column(column, justify="right" if column != "statuses" else "left")
    for run in runs:
        for phase in run.phases:
            table.add_row(
                run.backend,
                phase.name + (" (budget hit)" if phase.timed_out else ""),
                f"{phase.requests:,}",
                f"{phase.events:,}",
                f"{phase.seconds:.2f}",
                f"{phase.rate:,.0f}",
                f"{phase.pct(0.50):.0f}",
                f"{phase.pct(0.95):.0f}",
                f"{phase.pct(0.99):.0f}",
                f"{phase.pct(1.0):.0f}",
                ", ".join(f"{k} {v}" for k, v in sorted(phase.statuses.items())),
            )
    console.print(table)

    targets = Table(title="Targets (reported, not asserted)")
    for column in ("store", "target", "measured", "met"):
        targets.add_column(column)
    for run in runs:
        by = {p.name: p for p in run.phases}
        rows: list[tuple[str, float, float, bool]] = []
        if "check-in" in by:
            p = by["check-in"]
            rows.append(("all check in <= 10 s", TARGET_CHECKIN_S, p.seconds, False))
            rows.append(("check-in p99 <= 200 ms", TARGET_P99_MS, p.pct(0.99), False))
        if "quiz answer" in by:
            p = by["quiz answer"]
            rows.append(("all answer <= 5 s", TARGET_QUIZ_S, p.seconds, False))
            rows.append(("quiz p99 <= 200 ms", TARGET_P99_MS, p.pct(0.99), False))
        name = f"heartbeats x{args.batch}"
        if name in by:
            p = by[name]
            rows.append(("ingest >= 5,000 events/s", TARGET_EVENTS_PER_S, p.rate, True))
            rows.append((f"batch of {args.batch} p99 (ms)", TARGET_P99_MS, p.pct(0.99), False))
        for label, target, value, at_least in rows:
            met = value >= target if at_least else value <= target
            targets.add_row(
                run.backend, label, f"{value:,.2f}", "[green]yes[/]" if met else "[red]no[/]"
            )
        targets.add_row(
            run.backend,
            "every event stored exactly once",
            ", ".join(f"{k} {v}" for k, v in run.db_counts.items()),
            "[green]yes[/]" if not run.failures else "[red]no[/]",
        )
    console.print(targets)


async def main(args: argparse.Namespace) -> int:
    backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
    runs = []
    for backend in backends:
        runs.append(await bench_backend(backend, args))
    report(runs, args)
    failed = [f"{r.backend}: {f}" for r in runs for f in r.failures]
    for line in failed:
        console.print(f"[red]FAILED[/] {line}", markup=True)
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", metavar="URL", help="also run on a fresh database there")
    parser.add_argument("--members", type=int, default=2_000, help="members (2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    parser.add_argument("--retries", type=int, default=200, help="check-ins sent again (200)")
    parser.add_argument("--senders", type=int, default=100, help="heartbeat senders (100)")
    parser.add_argument(
        "--checkin-spread",
        type=float,
        default=8.0,
        help="check-ins arrive evenly over this many seconds (8; 0: all at once)",
    )
    parser.add_argument(
        "--answer-spread",
        type=float,
        default=3.0,
        help="answers arrive evenly over this many seconds (3; 0: all at once)",
    )
    parser.add_argument(
        "--stream-concurrency",
        type=int,
        default=8,
        help="heartbeat batches in flight (8): in a closed loop latency is in-flight / rate",
    )
    parser.add_argument("--batches", type=int, default=10, help="batches per sender (10)")
    parser.add_argument("--batch", type=int, default=100, help="heartbeats per batch (100)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per phase (120)")
    sys.exit(asyncio.run(main(parser.parse_args())))
