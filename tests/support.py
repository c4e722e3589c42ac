"""Small helpers shared by the server tests (fixtures live in conftest.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

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
