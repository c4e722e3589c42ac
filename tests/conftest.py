"""Shared fixtures: real record stores on SQLite files and on the real PostgreSQL server.

PostgreSQL tests run when ``STUDYCAST_TEST_DATABASE_URL`` names a server (each test gets a fresh
database on it). Without it they skip, unless ``STUDYCAST_REQUIRE_SERVICES=1`` (set by .ci/run),
where a missing or unreachable server fails the run instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import argon2
import pytest
from sqlalchemy.engine import make_url
from support import FakeClock

from attendance.migrate import upgrade
from attendance.store import Store
from attendance.users import configure_password_hashing

PG_ENV = "STUDYCAST_TEST_DATABASE_URL"
REQUIRE_ENV = "STUDYCAST_REQUIRE_SERVICES"


def services_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def missing_service(reason: str) -> None:
    """Skip on a laptop; fail where the services are required (CI)."""
    if services_required():
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is an error, not a skip)")
    pytest.skip(reason)


async def _pg_admin(sql: str) -> None:
    import asyncpg

    url = make_url(os.environ[PG_ENV])
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


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing() -> None:
    """Real argon2, with the cheapest parameters: the suite hashes hundreds of passwords."""
    configure_password_hashing(argon2.profiles.CHEAPEST)


@pytest.fixture(scope="session")
def pg_base_url() -> str:
    raw = os.environ.get(PG_ENV)
    if not raw:
        missing_service(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://127.0.0.1:5432/test)")
        raise AssertionError("unreachable")
    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:
        missing_service(f"PostgreSQL at {PG_ENV} is unreachable: {exc}")
    return raw


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"studycast_t_{secrets.token_hex(6)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """An empty database of each kind: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/studycast.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated, empty record store."""
    s = Store(database_url)
    await upgrade(s)
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def now() -> datetime:
    """A fixed clock reading for domain calls."""
    return datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


@pytest.fixture
def clock(now: datetime) -> FakeClock:
    """A clock at ``now`` that the test advances by hand."""
    return FakeClock(now)


@pytest.fixture
def later(now: datetime) -> datetime:
    return now + timedelta(hours=1)
