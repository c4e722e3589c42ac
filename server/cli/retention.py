"""``studycast retention``: apply the configured retention now (the server also does, hourly)."""

from __future__ import annotations

from typing import Any

import click

from attendance.clock import utcnow
from attendance.retention import apply_retention
from attendance.store import Store
from server.cli.common import echo_json, json_option, with_store
from server.settings import Settings


@click.group()
def retention() -> None:
    """Remove raw evidence and recordings past their retention (summaries and audit kept)."""


@retention.command("run")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
def run_retention(dry_run: bool, as_json: bool) -> None:
    """Apply STUDYCAST_RETENTION_RAW_EVENTS_DAYS and STUDYCAST_RETENTION_RECORDINGS_DAYS."""

    @with_store
    async def go(store: Store, settings: Settings) -> dict[str, Any]:
        async with store.write() as db:
            report = await apply_retention(
                db,
                now=utcnow(),
                raw_events_days=settings.retention_raw_events_days,
                recordings_days=settings.retention_recordings_days,
                recordings_root=settings.data_dir,
                actor="cli",
                dry_run=dry_run,
            )
        return {
            "dry_run": dry_run,
            "raw_events_days": settings.retention_raw_events_days,
            "recordings_days": settings.retention_recordings_days,
            **report.as_json(),
        }

    info = go()
    if as_json:
        echo_json(info)
        return
    if info["raw_events_days"] is None and info["recordings_days"] is None:
        click.echo("no retention configured: everything is kept")
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb}: {info['pruned_total']} raw events in {len(info['pruned_events'])} sessions, "
        f"{len(info['deleted_recordings'])} recordings"
    )
