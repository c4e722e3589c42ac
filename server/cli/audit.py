"""``studycast audit``: verify the hash-chained logs, and signed checkpoints of them."""

from __future__ import annotations

import click


@click.group()
def audit() -> None:
    """Check that the attendance log and the admin trail were not altered."""
