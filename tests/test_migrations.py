"""Migrations build exactly the models' schema, and downgrade back to an empty database."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from attendance import migrate
from attendance.models import Base
from attendance.store import Store


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) - {"alembic_version"}


def _diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


async def test_upgrade_matches_models_and_downgrade_empties(database_url: str) -> None:
    store = Store(database_url)
    try:
        assert await migrate.current_revision(store) is None
        await migrate.upgrade(store)
        assert await migrate.current_revision(store) == migrate.head_revision()
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
            assert await conn.run_sync(_diff) == []
        # Upgrading again is a no-op.
        await migrate.upgrade(store)
        await migrate.downgrade(store, "base")
        assert await migrate.current_revision(store) is None
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        # And up again, so a downgrade leaves a database that can be rebuilt.
        await migrate.upgrade(store)
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set(Base.metadata.tables)
    finally:
        await store.close()
