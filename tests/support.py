"""Small helpers shared by the server tests (fixtures live in conftest.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from attendance.models import AttendanceEvent
from attendance.store import Store
from server.settings import Settings

Client = TestClient[web.Request, web.Application]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for a test app: no .env, data under tmp_path."""
    return Settings(_env_file=None, data_dir=tmp_path / "data", **overrides)


async def broadcast_changes(store: Store, session_id: int) -> list[dict[str, Any]]:
    """The session's broadcast state changes as recorded (payloads: state, at, ...), in order."""
    async with store.read() as db:
        rows = await db.scalars(
            select(AttendanceEvent.payload)
            .where(AttendanceEvent.session_id == session_id, AttendanceEvent.kind == "broadcast")
            .order_by(AttendanceEvent.id)
        )
        return [dict(r) for r in rows]
