"""A demo organisation for first-time users: two cities, five office areas, venues, 20 members,
logins and one scheduled session. Seeded only into an empty store."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from attendance.models import Member, OrgUnit, Role, StudySession, User, Venue
from attendance.sessions import create_session, parse_draft
from attendance.store import Store
from attendance.units import UnitTree, parse_unit_path
from attendance.users import add_user
from attendance.venues import add_venue

LOGINS_FILE = "demo-logins.json"

VENUES = [
    ("bj-chaoyang-1", "朝阳第1会议室", "北京/朝阳办公区/第1会议室"),
    ("bj-haidian-1", "海淀多功能厅", "北京/海淀办公区/多功能厅"),
    ("bj-xicheng-1", "西城学习室", "北京/西城办公区/学习室"),
    ("sh-pudong-1", "浦东第3会议室", "上海/浦东办公区/第3会议室"),
    ("sh-xuhui-1", "徐汇报告厅", "上海/徐汇办公区/报告厅"),
]
SURNAMES = "王李张刘陈杨黄赵吴周"
GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "艳", "勇", "军"]


@dataclass(frozen=True)
class DemoLogin:
    username: str
    role: str
    password: str


@dataclass(frozen=True)
class Demo:
    session_id: int | None
    venues: list[str]
    logins: list[DemoLogin]
    seeded_now: bool


async def store_is_empty(store: Store) -> bool:
    """True when nobody has put anything in: no people, units, venues or sessions."""
    async with store.read() as db:
        for model in (User, Member, OrgUnit, Venue, StudySession):
            if await db.scalar(select(func.count()).select_from(model)):
                return False
    return True


def _save_logins(data_dir: Path, logins: list[DemoLogin]) -> None:
    path = data_dir / LOGINS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump([asdict(x) for x in logins], fh, ensure_ascii=False, indent=2)


def _load_logins(data_dir: Path) -> list[DemoLogin]:
    try:
        raw = json.loads((data_dir / LOGINS_FILE).read_text(encoding="utf-8"))
        return [DemoLogin(**x) for x in raw]
    except (OSError, ValueError, TypeError):
        return []


async def seed_demo(store: Store, *, data_dir: Path, now: datetime) -> Demo:
    """Seed the demo into an empty store (else leave it alone) and return what to show."""
    # Before seeding: the passwords must have somewhere to land.
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at start-up)
    if not await store_is_empty(store):
        return Demo(None, [v[0] for v in VENUES], _load_logins(data_dir), seeded_now=False)
    logins = [
        DemoLogin("organiser", Role.ORGANISER.value, secrets.token_urlsafe(9)),
        DemoLogin("auditor", Role.AUDITOR.value, secrets.token_urlsafe(9)),
        DemoLogin("venue-bj", Role.VENUE_OPERATOR.value, secrets.token_urlsafe(9)),
    ]
    # Tomorrow 19:30 China Standard Time, where the demo organisation sits.
    start = (now + timedelta(hours=8, days=1)).replace(hour=19, minute=30, second=0, microsecond=0)
    start = start - timedelta(hours=8)
    async with store.write() as db:
        tree = UnitTree(db, now)
        venue_ids = []
        for slug, name, unit_path in VENUES:
            await tree.ensure(parse_unit_path(unit_path))
            venue = await add_venue(
                db, slug=slug, name=name, unit_path=unit_path, now=now, actor="demo", capacity=40
            )
            venue_ids.append(venue.id)
        units = [parse_unit_path(v[2])[:2] for v in VENUES]
        for i in range(20):
            unit = await tree.ensure(units[i % len(units)])
            db.add(
                Member(
                    member_no=f"D{i + 1:04d}",
                    name=SURNAMES[i % 10] + GIVEN[(i * 3) % 10] + ("" if i < 10 else GIVEN[i % 10]),
                    unit_id=unit.id,
                    phone=f"+86 138 0000 {i + 1:04d}",
                    active=True,
                    link_version=1,
                    created_at=now,
                    updated_at=now,
                )
            )
        for login in logins:
            await add_user(
                db,
                username=login.username,
                role=Role(login.role),
                password=login.password,
                now=now,
                actor="demo",
                venue_id=venue_ids[0] if login.role == Role.VENUE_OPERATOR.value else None,
            )
        draft = parse_draft(
            {
                "title": "季度学习会：安全与合规 / Quarterly study: safety and compliance",
                "description": "Demo session seeded by studycast serve --demo.",
                "scheduled_start": start,
                "scheduled_end": start + timedelta(minutes=90),
                "venues": [v[0] for v in VENUES],
                "expected_units": ["北京", "上海"],
            }
        )
        session = await create_session(db, draft, now=now, actor="demo", user_id=None)
        session_id = session.id
    _save_logins(data_dir, logins)
    return Demo(session_id, [v[0] for v in VENUES], logins, seeded_now=True)
