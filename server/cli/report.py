"""``studycast report``: attendance reports of a session, by unit and venue, and per member."""

from __future__ import annotations

import click


@click.group()
def report() -> None:
    """Attendance reports (tables, JSON, CSV or XLSX)."""
