"""Schema migrations, applied by ``studycast db upgrade`` and at server start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from attendance.store import Store, translate_errors

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


async def _run(store: Store, fn: Any, *args: Any) -> Any:
    cfg = alembic_config()

    def call(connection: Connection) -> Any:
        cfg.attributes["connection"] = connection
        return fn(cfg, *args)

    async with translate_errors("migrate"), store.engine.connect() as conn:
        result = await conn.run_sync(call)
        await conn.commit()
    return result


async def upgrade(store: Store, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (the newest by default)."""
    async with store.exclusive():
        await _run(store, command.upgrade, revision)


async def downgrade(store: Store, revision: str) -> None:
    async with store.exclusive():
        await _run(store, command.downgrade, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(store: Store) -> str | None:
    """The revision the database is at, or None for an empty database."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with translate_errors("report its revision"), store.engine.connect() as conn:
        return await conn.run_sync(read)
