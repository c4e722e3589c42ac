"""``studycast watch``: play a session (WHEP) in a window or headless, as a venue screen.

The work is done in ``client`` (imported when the command runs, so ``studycast --help`` stays
quick).
"""

from __future__ import annotations

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
def watch() -> None:
    """Play a session (WHEP) in a window, or headless."""
    raise click.ClickException("not built yet")
