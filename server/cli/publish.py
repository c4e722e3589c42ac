"""``studycast publish``: broadcast a camera or a media file to a session over WHIP.

The work is done in ``client`` (imported when the command runs, so ``studycast --help`` stays
quick).
"""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def publish() -> None:
    """Publish a camera or a file to a session (WHIP)."""
    raise click.ClickException("not built yet")
