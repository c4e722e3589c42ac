"""``studycast db``: schema migrations of the record store."""

from __future__ import annotations

import click

from attendance import migrate
from attendance.store import Store
from server.cli.common import echo_json, json_option, load_settings, open_store, run


@click.group()
def db() -> None:
    """Record store schema: upgrade, downgrade, current revision."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (run automatically at server start too)."""
    settings = load_settings()

    async def go() -> str | None:
        store = await open_store(settings, migrate=False)
        try:
            await migrate.upgrade(store, revision)
            return await migrate.current_revision(store)
        finally:
            await store.close()

    click.echo(f"record store at revision {run(go())}")


@db.command()
@click.argument("revision")
@click.confirmation_option(prompt="Downgrading can drop tables and their data. Continue?")
def downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' empties the store)."""
    settings = load_settings()

    async def go() -> str | None:
        store = await open_store(settings, migrate=False)
        try:
            await migrate.downgrade(store, revision)
            return await migrate.current_revision(store)
        finally:
            await store.close()

    click.echo(f"record store at revision {run(go()) or 'base (empty)'}")


@db.command()
@json_option
def current(as_json: bool) -> None:
    """Show the store's revision and the newest one this version knows."""
    settings = load_settings()

    async def go() -> str | None:
        if settings.database_url is None and not settings.sqlite_path().exists():
            return None  # no store yet: do not create one just to say it is empty
        store = Store(settings.resolved_database_url())
        try:
            return await migrate.current_revision(store)
        finally:
            await store.close()

    info = {"current": run(go()), "head": migrate.head_revision()}
    if as_json:
        echo_json(info)
    else:
        click.echo(f"current: {info['current'] or 'empty'}  head: {info['head']}")
