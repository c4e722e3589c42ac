"""The record store: one async SQLAlchemy engine pair with a single write path.

SQLite (the embedded default) runs in WAL mode with a busy timeout; all writes of a process go
through one connection, one at a time, each in ``BEGIN IMMEDIATE`` so that a writer never fails
half-way on a lock upgrade. Reads use their own pooled connections and never block the writer.
PostgreSQL (asyncpg) uses the same code; there ``write()`` is an ordinary transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from attendance.errors import Conflict, InvalidInput, StoreError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


def normalise_url(raw: str | URL) -> URL:
    """Accept the URLs people write (``sqlite:///x.db``, ``postgresql://...``) and pick the
    async driver for them (aiosqlite, asyncpg)."""
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise InvalidInput(f"database URL {str(raw)!r} cannot be parsed: {exc}") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+asyncpg")
    raise InvalidInput(
        f"database URL {url.render_as_string()!r}: only sqlite and postgresql are supported"
    )


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def _sqlite_pragmas(write: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below emit BEGIN instead of the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if write:
            cursor.execute("PRAGMA journal_mode = WAL")
            # The audit chain must survive a power cut: FULL fsyncs every commit.
            cursor.execute("PRAGMA synchronous = FULL")
        else:
            cursor.execute("PRAGMA query_only = ON")
        cursor.close()

    return on_connect


def create_engine(url: str | URL, *, write: bool = True, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` with the store's connection settings applied."""
    url = normalise_url(url)
    if is_sqlite(url):
        if url.database in (None, "", ":memory:"):
            raise InvalidInput("an in-memory SQLite store cannot be shared; give a file path")
        if write:
            # One connection: the single write path (the lock in Store orders the writers).
            kwargs = {"pool_size": 1, "max_overflow": 0, **kwargs}
        engine = create_async_engine(url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(write))

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_async_engine(url, pool_pre_ping=True, **kwargs)


def _reason(exc: BaseException) -> str:
    return str(exc.orig) if isinstance(exc, DBAPIError) else str(exc)


@asynccontextmanager
async def translate_errors(action: str) -> AsyncIterator[None]:
    """Turn driver and socket errors raised inside the block into ``StoreError``."""
    try:
        yield
    except (OSError, DBAPIError) as exc:
        raise StoreError(f"the record store failed to {action}: {_reason(exc)}") from exc


class Store:
    """The record store of one process. ``close()`` is idempotent."""

    def __init__(self, url: str | URL, **engine_kwargs: Any) -> None:
        self.url = normalise_url(url)
        self.sqlite = is_sqlite(self.url)
        self.engine = create_engine(self.url, write=True, **engine_kwargs)
        # On SQLite readers get their own engine (query_only); on PostgreSQL one pool serves all.
        self.read_engine = (
            create_engine(self.url, write=False, **engine_kwargs) if self.sqlite else self.engine
        )
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False)
        self._reads = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()
        self._closed = False

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction on the single write path: committed on success, rolled back on error."""
        async with self._write_lock, self._writes() as session:
            try:
                async with session.begin():
                    yield session
            except IntegrityError as exc:
                # Two writers raced for the same unique value (PostgreSQL), or a reference broke.
                log.info("write refused by a constraint: %s", _reason(exc))
                raise Conflict(
                    "the change conflicts with stored data (a value that must be unique is "
                    "taken, or a referenced record is missing)"
                ) from exc
            except (OSError, DBAPIError) as exc:
                raise StoreError(f"the record store refused a write: {_reason(exc)}") from exc

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the write path without a session (schema migrations use their own connection)."""
        async with self._write_lock:
            yield

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session; it sees the last committed state."""
        async with self._reads() as session:
            try:
                yield session
            except (OSError, DBAPIError) as exc:
                raise StoreError(f"the record store failed a read: {_reason(exc)}") from exc

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a trivial query."""
        async with translate_errors("answer"), self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
