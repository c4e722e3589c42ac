"""``studycast watch``: play a session (WHEP) in a window or headless, as a venue screen.

The work is done in ``client.watch`` and ``client.screen`` (imported when the command runs, so
``studycast --help`` stays quick).

On Linux, OpenCV's window (Qt over xcb) hangs at its first window if PyAV was imported before
OpenCV: both wheels bundle ``libxcb-shm`` under the same name, and PyAV's copy, loaded first, is
tied to PyAV's own ``libxcb``. So the window path imports OpenCV before the client (which
imports aiortc, hence PyAV); if PyAV was loaded already (a caller imported it), the command runs
again in a fresh interpreter that imports OpenCV first (``_run_opencv_first``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from attendance.errors import InvalidInput, StudycastError
from server.addresses import check_addresses
from server.cli.common import configure_logging

TOKEN_ENV = "STUDYCAST_WATCH_TOKEN"  # noqa: S105 (a variable name, not a secret)
_OPENCV_FIRST = "import cv2; from server.cli import main; main(prog_name='studycast')"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("whep_url", metavar="WHEP_URL")
@click.option(
    "--token",
    required=True,
    envvar=TOKEN_ENV,
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
    to the record (kept in a local outbox until the server has them). q or Esc closes the
    window.
    """
    try:
        addresses = tuple(check_addresses(ice_addresses))
    except InvalidInput as exc:
        raise click.BadParameter(exc.detail, param_hint="--ice-address") from exc
    if not headless and sys.platform.startswith("linux"):
        if not os.environ.get("DISPLAY"):
            raise click.ClickException(
                "there is no display (DISPLAY is not set), so no window can be opened: "
                "use --headless, or run it on the screen's desktop"
            )
        if "av" in sys.modules and "cv2" not in sys.modules:
            ctx = click.get_current_context()
            ctx.exit(_run_opencv_first(_command_line(ctx.params), token))
        import cv2  # noqa: F401  (OpenCV before PyAV: see the module docstring)

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
    configure_logging(logging.WARNING)  # the status lines are the news; logs only for trouble
    try:
        asyncio.run(run_watch(options))
    except KeyboardInterrupt:
        pass
    except StudycastError as exc:
        raise click.ClickException(exc.detail) from exc


def _command_line(params: dict[str, Any]) -> list[str]:
    """This command's arguments, rebuilt from its parsed options (the token goes by the
    environment, never on a command line other users can read)."""
    args = ["watch", str(params["whep_url"])]
    for name in ("fullscreen", "headless", "no_audio", "no_qr"):
        if params[name]:
            args.append("--" + name.replace("_", "-"))
    for address in params["ice_addresses"]:
        args += ["--ice-address", address]
    for name, option in (
        ("outbox_path", "--outbox"),
        ("max_seconds", "--max-seconds"),
        ("status_every", "--status-every"),
        ("snapshot", "--snapshot"),
    ):
        if params[name] is not None:
            args += [option, str(params[name])]
    return args


def _run_opencv_first(args: list[str], token: str) -> int:
    """Run ``studycast ARGS`` in a fresh interpreter that imports OpenCV first; its exit code.

    Ctrl-C reaches the child too (same process group) and it closes down by itself; SIGTERM is
    passed on."""
    env = {**os.environ, TOKEN_ENV: token}
    child = subprocess.Popen([sys.executable, "-c", _OPENCV_FIRST, *args], env=env)  # noqa: S603
    previous = signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
