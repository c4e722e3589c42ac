"""``studycast roster``: import and export the member roster (CSV or XLSX)."""

from __future__ import annotations

import click


@click.group()
def roster() -> None:
    """Import and export the member roster."""
