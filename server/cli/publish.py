"""``studycast publish``: broadcast a camera or a media file to a session over WHIP.

The work is done in ``client.sources`` (camera and file) and ``client.broadcast`` (the
reconnecting publish loop), imported when the command runs so ``studycast --help`` stays quick.
This module reads the options, shows the status, turns Ctrl-C/SIGTERM into a clean stop, and
maps failures to one ``error: ...`` line: exit 2 for a bad command line, 1 when publishing fails.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from attendance.errors import InvalidInput

if TYPE_CHECKING:
    from client.broadcast import Broadcaster, Status

DEFAULT_BITRATE = "1.5M"  # the most aiortc's VP8 encoder sends
PLAIN_EVERY_S = 10.0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
    """``WxH`` → (W, H): even (yuv420p halves them), from 64x64 up to 3840x2160."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d{2,4})\s*[xX×]\s*(\d{2,4})\s*", value)
    if not match:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 1280x720")
    width, height = int(match[1]), int(match[2])
    if not (64 <= width <= 3840 and 64 <= height <= 2160) or width % 2 or height % 2:
        raise click.BadParameter(f"{value!r}: width and height must be even, 64x64 to 3840x2160")
    return width, height


def parse_bitrate(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """``2M``, ``800k``, ``1.5M`` or plain bits per second; 100 kbit/s to 50 Mbit/s."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|bit/s|b)?\s*", value)
    if not match:
        raise click.BadParameter(f"{value!r} is not a bitrate such as 2M or 800k")
    bits = float(match[1]) * {"": 1, "k": 1e3, "m": 1e6}[match[2].lower()]
    if not 100e3 <= bits <= 50e6:
        raise click.BadParameter(f"{value!r} is outside 100k to 50M")
    return round(bits)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("whip_url", metavar="WHIP_URL")
@click.option(
    "--token",
    required=True,
    envvar="STUDYCAST_PUBLISH_TOKEN",
    show_envvar=True,
    help="The session's publish (WHIP) token.",
)
@click.option(
    "--camera",
    type=click.IntRange(0, 999),
    metavar="INDEX",
    help="Capture this camera (0 is the first).",
)
@click.option(
    "--file",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Send this media file (VP8 or baseline H.264 video and Opus audio go as they are).",
)
@click.option(
    "--size",
    callback=parse_size,
    metavar="WxH",
    help="Picture size when encoding [camera: 1280x720; a file keeps its own].",
)
@click.option(
    "--fps", type=click.IntRange(1, 60), metavar="N", help="Camera frames per second [30]."
)
@click.option(
    "--bitrate",
    callback=parse_bitrate,
    metavar="RATE",
    default=DEFAULT_BITRATE,
    show_default=True,
    help="Highest video bitrate when encoding, e.g. 2M or 800k.",
)
@click.option(
    "--loop/--no-loop",
    default=False,
    show_default=True,
    help="Play the file again and again (otherwise the command ends with it).",
)
@click.option(
    "--reencode",
    is_flag=True,
    help="Decode the file and encode it anew even if its codecs could be sent as they are.",
)
@click.option(
    "--ice-address",
    "ice_addresses",
    multiple=True,
    metavar="IP",
    help="Address to offer as ICE host candidate (repeatable) [every non-loopback one].",
)
@click.option(
    "--outbox",
    "outbox_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Local file keeping status events until the server has them "
    "[~/.local/state/studycast/outbox.db].",
)
@click.option(
    "--status/--no-status",
    default=None,
    help="A live status line (default on a terminal); --no-status prints state changes only.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop by itself after this long (as Ctrl-C would).",
)
def publish(
    whip_url: str,
    token: str,
    camera: int | None,
    file: Path | None,
    size: tuple[int, int] | None,
    fps: int | None,
    bitrate: int,
    loop: bool,
    reencode: bool,
    ice_addresses: tuple[str, ...],
    outbox_path: Path | None,
    status: bool | None,
    quiet: bool,
    max_seconds: float | None,
) -> None:
    """Broadcast a camera or a media file to a study session over WHIP.

    Shows the state, bitrate, frame rate and round-trip time; reconnects by itself after a
    network or server failure; Ctrl-C ends the broadcast (the server is told) and exits 0.
    """
    from client.broadcast import events_url
    from server.relay.ice import check_addresses

    try:
        events_url(whip_url)
    except InvalidInput as exc:
        _exit(exc.detail, EXIT_USAGE)
    if (camera is None) == (file is None):
        _exit("give exactly one of --camera INDEX or --file PATH", EXIT_USAGE)
    try:
        addresses = check_addresses(ice_addresses) if ice_addresses else None
    except InvalidInput as exc:
        _exit(f"--ice-address: {exc.detail}", EXIT_USAGE)
    if quiet:
        mode = "quiet"
    elif status is None:
        mode = "live" if sys.stderr.isatty() else "plain"
    else:
        mode = "live" if status else "changes"
    display = _Display(mode)
    if file is not None and camera is None and fps is not None:
        display.notice("--fps applies to a camera; a file keeps its own frame rate")
    options = {"camera": camera, "file": file, "size": size, "fps": fps, "loop": loop}
    forced: list[str] = []  # a signal that cut the ending short
    try:
        code = asyncio.run(
            _main(
                whip_url,
                token,
                options,
                reencode=reencode,
                bitrate=bitrate,
                bitrate_given=_given("bitrate"),
                addresses=addresses,
                outbox_path=outbox_path,
                max_seconds=max_seconds,
                display=display,
                forced=forced,
            )
        )
    except (asyncio.CancelledError, KeyboardInterrupt):
        display.close()
        if forced:
            _exit(f"{forced[0]} again: left without telling the server", EXIT_INTERRUPTED)
        code = 0  # stopped before anything was sent
    sys.exit(code)


def _given(name: str) -> bool:
    source = click.get_current_context().get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _exit(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


async def _main(
    whip_url: str,
    token: str,
    options: dict[str, Any],
    *,
    reencode: bool,
    bitrate: int,
    bitrate_given: bool,
    addresses: list[str] | None,
    outbox_path: Path | None,
    max_seconds: float | None,
    display: _Display,
    forced: list[str],
) -> int:
    from client.broadcast import PublishFailed, broadcast
    from client.outbox import default_outbox_path
    from client.sources import SourceError, open_source
    from server.relay.ice import advertise_addresses

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    started: list[Broadcaster] = []

    def on_signal(name: str) -> None:
        """First signal: end the broadcast properly. Second (or before it began): leave."""
        if started and started[0].stop_reason is None:
            display.notice(f"{name}: ending the broadcast (again to leave at once)")
            started[0].stop(f"stopped by {name}")
            return
        if started:
            forced.append(name)
        if main is not None:
            main.cancel()

    def on_start(broadcaster: Broadcaster) -> None:
        started.append(broadcaster)
        if max_seconds is not None:
            loop.call_later(max_seconds, broadcaster.stop, f"--max-seconds {max_seconds:g} reached")

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    if addresses is not None:
        advertise_addresses(addresses)
    source = open_source(reencode=reencode, **options)
    try:
        await source.start()
        display.notice(source.describe())
        if bitrate_given and source.passthrough:
            display.notice("--bitrate has no effect on video sent as it is")
        ending = await broadcast(
            whip_url,
            token,
            source,
            bitrate=bitrate,
            outbox_path=outbox_path or default_outbox_path(),
            on_status=display.update,
            on_start=on_start,
        )
    except (SourceError, PublishFailed) as exc:
        display.error(exc.detail)
        return EXIT_FAILED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await source.close()
        display.close()
    message = f"ended: {ending.reason}"
    if ending.events_pending:
        message += f" ({ending.events_pending} status events wait in the outbox for next time)"
    display.notice(message)
    return 0


# --- showing the status -----------------------------------------------------------------------


def format_status(status: Status, now: float) -> str:
    """One line: state, figures while live, the source, and why (if it is not live)."""
    parts: list[str] = [status.state]
    if status.state == "live":
        if status.bitrate_kbps is not None:
            parts.append(
                f"{status.bitrate_kbps / 1000:.2f} Mbit/s"
                if status.bitrate_kbps >= 1000
                else f"{status.bitrate_kbps:.0f} kbit/s"
            )
        if status.fps is not None:
            parts.append(f"{status.fps:.1f} fps")
        if status.rtt_ms is not None:
            parts.append(f"RTT {status.rtt_ms:.0f} ms")
        if status.live_since is not None:
            seconds = int(now - status.live_since)
            parts.append(f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")
    parts.append(status.source)
    if status.detail:
        parts.append(status.detail)
    return " · ".join(parts)


class _Display:
    """Where the status goes: a rich live line (``live``), plain lines on state changes and
    every 10 s (``plain``) or on changes only (``changes``), or nothing (``quiet``)."""

    def __init__(self, mode: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = mode
        self._clock = clock
        self._last_state: str | None = None
        self._last_line_at = 0.0
        self._live: Any = None
        self._console: Any = None
        level = logging.ERROR if mode == "quiet" else logging.WARNING
        # The outbox retries quietly: the status line says when the server is away, and the
        # closing line how many events still wait.
        logging.getLogger("client.outbox").setLevel(logging.ERROR)
        if mode == "live":
            from rich.console import Console
            from rich.live import Live
            from rich.logging import RichHandler

            self._console = Console(stderr=True)
            self._live = Live("", console=self._console, refresh_per_second=4, transient=True)
            self._live.start()
            handler: logging.Handler = RichHandler(console=self._console, show_path=False)
            logging.basicConfig(level=level, handlers=[handler], format="%(name)s: %(message)s")
        else:
            logging.basicConfig(
                level=level,
                stream=sys.stderr,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )

    def update(self, status: Status) -> None:
        now = self._clock()
        line = format_status(status, now)
        changed = status.state != self._last_state
        self._last_state = status.state
        if status.state == "ended":
            return  # the closing notice or error says how it ended
        if self._live is not None:
            self._live.update(line)
            if changed and status.state != "live":
                self._console.print(f"{time.strftime('%H:%M:%S')} {line}")
        elif self.mode in ("plain", "changes"):
            periodic = self.mode == "plain" and now - self._last_line_at >= PLAIN_EVERY_S
            if changed or periodic:
                self._last_line_at = now
                click.echo(f"{time.strftime('%H:%M:%S')} {line}", err=True)

    def notice(self, message: str) -> None:
        if self.mode == "quiet":
            return
        if self._console is not None:
            self._console.print(message, markup=False, highlight=False)
        else:
            click.echo(message, err=True)

    def error(self, message: str) -> None:
        self.close()
        click.echo(f"error: {message}", err=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
