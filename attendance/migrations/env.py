"""Alembic environment: runs on the connection ``attendance.migrate`` hands over, or, when the
``alembic`` command is used directly, on ``STUDYCAST_DATABASE_URL`` / the configured URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from attendance.models import Base

config = context.config
target_metadata = Base.metadata


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_standalone() -> None:
    from attendance.store import create_engine

    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from server.settings import Settings

        url = Settings().resolved_database_url()
    engine = create_engine(url)
    async with engine.connect() as conn:
        await conn.run_sync(run_on)
        await conn.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run_on(connection)
elif context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
else:
    asyncio.run(run_standalone())
