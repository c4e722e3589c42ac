"""``studycast watch``: play a session (WHEP) in a window or headless, as a venue screen.

The work is done in ``client.watch`` and ``client.screen`` (imported when the command runs, so
``studycast --help`` stays quick).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from attendance.errors import InvalidInput, StudycastError
from server.relay.ice import check_addresses


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("whep_url", metavar="WHEP_URL")
@click.option(
    "--token",
    required=True,
    envvar="STUDYCAST_WATCH_TOKEN",
    show_envvar=True,
    help="A venue's, a member's or the session's viewer token (a venue token adds the "
    "check-in QR code).",
)
@click.option("--fullscreen", is_flag=True, help="Fill the screen (a venue's big screen).")
@click.option(
    "--headless", is_flag=True, help="No window: print a status line instead (monitoring)."
)
@click.option("--no-audio", is_flag=True, help="Do not play sound.")
@click.option("--no-qr", is_flag=True, help="Do not show the venue's check-in QR code.")
@click.option(
    "--ice-address",
    "ice_addresses",
    multiple=True,
    help="Address to offer as ICE host candidate (repeatable; default: every interface).",
)
@click.option(
    "--outbox",
    "outbox_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="SQLite file keeping the screen's events until the server has them "
    "[default: ~/.local/state/studycast/outbox.db].",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop after this long (default: until Ctrl-C, q or the session's end).",
)
@click.option(
    "--status-every",
    type=click.FloatRange(0.2, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between status lines (--headless).",
)
@click.option("--snapshot", type=click.Path(dir_okay=False, path_type=Path), hidden=True)
def watch(
    whep_url: str,
    token: str,
    fullscreen: bool,
    headless: bool,
    no_audio: bool,
    no_qr: bool,
    ice_addresses: tuple[str, ...],
    outbox_path: Path | None,
    max_seconds: float | None,
    status_every: float,
    snapshot: Path | None,
) -> None:
    """Play a session (WHEP_URL, .../whep/SESSION) in a window, or headless.

    Reconnects by itself; with a venue or member token it also reports the screen's heartbeats
    to the record (kept in a local outbox until the server has them).
    """
    try:
        addresses = tuple(check_addresses(ice_addresses))
    except InvalidInput as exc:
        raise click.BadParameter(exc.detail, param_hint="--ice-address") from exc
    if not headless and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        raise click.ClickException(
            "there is no display (DISPLAY is not set), so no window can be opened: "
            "use --headless, or run it on the screen's desktop"
        )
    from client.outbox import default_outbox_path
    from client.watch import WatchOptions, run_watch  # aiortc and OpenCV load only when needed

    options = WatchOptions(
        whep_url=whep_url,
        token=token.strip(),
        headless=headless,
        fullscreen=fullscreen,
        audio=not no_audio,
        qr=not no_qr,
        ice_addresses=addresses,
        outbox_path=outbox_path or default_outbox_path(),
        max_seconds=max_seconds,
        status_every_s=status_every,
        snapshot=snapshot,
    )
    try:
        asyncio.run(run_watch(options))
    except KeyboardInterrupt:
        pass
    except StudycastError as exc:
        raise click.ClickException(exc.detail) from exc
