"""The picture of ``studycast watch``: an OpenCV window, full screen on a venue's big screen.

The window shows the latest decoded frame letterboxed to its size, a "waiting for the broadcast"
card while no media arrives, and, for a venue, the venue's current check-in QR code with its
six-digit short code in the bottom-right corner (members scan it with their phones or type the
code). The code rotates every 30 s on the server; ``CheckinCodeFeed`` fetches it again before
then. Pictures are composed as plain numpy images (``compose``), so what the window shows can be
saved and checked.

OpenCV's window must be driven from one thread: ``Screen.show`` is called from the event loop
and pumps the window's events (``cv2.waitKey``) each time. q or Esc, or closing the window, end
the watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import av
import cv2
import numpy as np
import segno

log = logging.getLogger(__name__)

Image = np.ndarray[Any, np.dtype[np.uint8]]

WINDOW = "studycast"
DEFAULT_SIZE = (1280, 720)
REFRESH_S = 20.0  # the code rotates every 30 s and is accepted for 90 s
RETRY_S = 5.0
QR_SHARE = 0.3  # of the picture's height
KEY_QUIT = frozenset({ord("q"), ord("Q"), 27})
BACKGROUND = (24, 20, 18)
WHITE = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX


# --- the display ------------------------------------------------------------------------------


def display_problem() -> str | None:
    """Why no window can be opened here, or None. Qt aborts the process when it cannot reach
    the display, so this is asked first, on Linux only (other systems always have a desktop)."""
    if not sys.platform.startswith("linux"):
        return None
    display = os.environ.get("DISPLAY", "")
    if not display:
        return "there is no display (DISPLAY is not set)"
    if x11_screen_size(display) is None and _x11() is not None:
        return f"cannot open the display {display!r}"
    return None


@functools.cache
def _x11() -> Any:
    name = ctypes.util.find_library("X11") or "libX11.so.6"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.XOpenDisplay.restype = ctypes.c_void_p
    lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    lib.XDefaultScreen.argtypes = [ctypes.c_void_p]
    lib.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    return lib


def x11_screen_size(display: str) -> tuple[int, int] | None:
    """The X screen's size in pixels, or None (no libX11, or the display does not answer).

    Full screen needs it where no window manager runs (a kiosk with a bare X server): Qt then
    only flags the window as full screen, and we size it ourselves."""
    lib = _x11()
    if lib is None:
        return None
    handle = lib.XOpenDisplay(display.encode())
    if not handle:
        return None
    try:
        screen = lib.XDefaultScreen(handle)
        return int(lib.XDisplayWidth(handle, screen)), int(lib.XDisplayHeight(handle, screen))
    finally:
        lib.XCloseDisplay(handle)


# --- the check-in code ------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckinCode:
    """What the venue screen shows for members to check in: the QR code's URL and short code."""

    url: str
    short_code: str
    rotates_at: datetime


@functools.lru_cache(maxsize=4)
def qr_image(url: str, size: int) -> Image:
    """The QR code of ``url`` as a grey image about ``size`` pixels square, with its quiet zone;
    modules are whole pixels (nearest-neighbour), so phone cameras read it from afar. Cached:
    the same code is drawn on every frame until it rotates; callers must not modify it."""
    qr = segno.make(url, error="m")
    modules = np.array(
        [[0 if dark else 255 for dark in row] for row in qr.matrix_iter(scale=1, border=4)],
        dtype=np.uint8,
    )
    scale = max(1, size // modules.shape[0])
    return np.kron(modules, np.ones((scale, scale), dtype=np.uint8))


class CheckinCodeFeed:
    """Keeps the venue's current check-in code, fetched from
    ``GET /api/sessions/{id}/venues/{slug}/checkin-code`` with the venue token."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        token: str,
        *,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.url = url
        self.current: CheckinCode | None = None
        self.last_error = ""
        self._http = http
        self._token = token
        self._refresh_s = refresh_s

    async def fetch(self) -> CheckinCode:
        async with self._http.get(
            self.url,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                detail = body.get("detail") if isinstance(body, dict) else None
                raise aiohttp.ClientResponseError(
                    response.request_info,
                    (),
                    status=response.status,
                    message=str(detail or response.reason),
                )
        return CheckinCode(
            url=str(body["url"]),
            short_code=str(body["short_code"]),
            rotates_at=datetime.fromisoformat(str(body["rotates_at"])),
        )

    async def run(self) -> None:
        """Fetch now and again shortly after each rotation (at most every ``refresh_s``); until
        cancelled. A failure keeps the last code (it stays valid for 90 s) and retries soon."""
        while True:
            try:
                self.current = await self.fetch()
                self.last_error = ""
                left = (self.current.rotates_at - datetime.now(UTC)).total_seconds() + 0.5
                wait = min(self._refresh_s, max(1.0, left))
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
                if not self.last_error:
                    log.warning("check-in code: %s", exc)
                self.last_error = str(exc) or type(exc).__name__
                wait = RETRY_S
            await asyncio.sleep(wait)


# --- composing the picture ----------------------------------------------------------------------


def letterbox(picture: Image, width: int, height: int) -> Image:
    """``picture`` scaled to fit ``width`` × ``height`` with its aspect kept, centred on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = picture.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(picture, (new_w, new_h), interpolation=interpolation)
    x, y = (width - new_w) // 2, (height - new_h) // 2
    canvas[y : y + new_h, x : x + new_w] = scaled
    return canvas


def waiting_card(width: int, height: int, title: str, detail: str) -> Image:
    """A dark card with a centred title and a smaller line below it."""
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    _centred_text(canvas, title, height // 2, height / 720 * 1.4, 2)
    _centred_text(canvas, detail, height // 2 + round(height * 0.08), height / 720 * 0.8, 1)
    return canvas


def _centred_text(canvas: Image, text: str, baseline: int, scale: float, weight: int) -> None:
    thickness = max(1, round(weight * scale * 1.5))
    (w, _), _ = cv2.getTextSize(text, FONT, scale, thickness)
    x = max(0, (canvas.shape[1] - w) // 2)
    cv2.putText(canvas, text, (x, baseline), FONT, scale, WHITE, thickness, cv2.LINE_AA)


def overlay_checkin(canvas: Image, code: CheckinCode) -> None:
    """Draw the check-in panel (QR code, short code, a label) in the bottom-right corner."""
    height, width = canvas.shape[:2]
    qr = qr_image(code.url, round(height * QR_SHARE))
    side = qr.shape[0]
    text_scale = side / 200
    thickness = max(1, round(2 * text_scale))
    (code_w, code_h), _ = cv2.getTextSize(code.short_code, FONT, text_scale * 1.1, thickness)
    label = "scan to check in"
    (label_w, label_h), _ = cv2.getTextSize(label, FONT, text_scale * 0.55, 1)
    pad = max(4, side // 20)
    panel_w = max(side, code_w, label_w) + 2 * pad
    panel_h = side + code_h + label_h + 4 * pad
    margin = max(8, height // 40)
    x0, y0 = width - panel_w - margin, height - panel_h - margin
    if x0 < 0 or y0 < 0:
        return  # too small a window for a readable code
    canvas[y0 : y0 + panel_h, x0 : x0 + panel_w] = WHITE
    qx = x0 + (panel_w - side) // 2
    canvas[y0 + pad : y0 + pad + side, qx : qx + side] = qr[:, :, None]
    text_y = y0 + pad + side + pad + code_h
    cv2.putText(
        canvas,
        code.short_code,
        (x0 + (panel_w - code_w) // 2, text_y),
        FONT,
        text_scale * 1.1,
        (0, 0, 0),
        thickness,
        cv2.LINE_AA,
    )
    cv2.putText(
        canvas,
        label,
        (x0 + (panel_w - label_w) // 2, text_y + pad + label_h),
        FONT,
        text_scale * 0.55,
        (60, 60, 60),
        1,
        cv2.LINE_AA,
    )


def compose(
    picture: Image | None,
    size: tuple[int, int],
    *,
    title: str = "",
    detail: str = "",
    code: CheckinCode | None = None,
) -> Image:
    """The whole window: the picture letterboxed (or the waiting card), then the code panel."""
    width, height = size
    if picture is None:
        canvas = waiting_card(width, height, title, detail)
    else:
        canvas = letterbox(picture, width, height)
    if code is not None:
        overlay_checkin(canvas, code)
    return canvas


# --- the window -------------------------------------------------------------------------------


class Screen:
    """The OpenCV window. ``show`` draws one composed picture and reports whether to go on."""

    def __init__(self, *, fullscreen: bool, snapshot: Path | None = None) -> None:
        self.fullscreen = fullscreen
        self.snapshot = snapshot
        self.last: Image | None = None
        self._open = False
        self._screen_size: tuple[int, int] | None = None

    def open(self) -> None:
        if self._open:
            return
        # Qt's warnings about a missing bundled font directory; we draw our own text.
        if Path("/usr/share/fonts").is_dir():
            os.environ.setdefault("QT_QPA_FONTDIR", "/usr/share/fonts")
        flags = cv2.WINDOW_NORMAL | cv2.WINDOW_GUI_NORMAL | cv2.WINDOW_FREERATIO
        cv2.namedWindow(WINDOW, flags)
        display = os.environ.get("DISPLAY", "")
        self._screen_size = x11_screen_size(display) if display else None
        if self.fullscreen:
            if self._screen_size is not None:
                cv2.moveWindow(WINDOW, 0, 0)
                cv2.resizeWindow(WINDOW, *self._screen_size)
            cv2.setWindowProperty(WINDOW, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        else:
            cv2.resizeWindow(WINDOW, *DEFAULT_SIZE)
        self._open = True

    def size(self) -> tuple[int, int]:
        """The window's drawing area, so pictures are composed 1:1 with its pixels."""
        with contextlib.suppress(cv2.error):
            _, _, w, h = cv2.getWindowImageRect(WINDOW)
            if w > 0 and h > 0:
                return int(w), int(h)
        if self.fullscreen and self._screen_size is not None:
            return self._screen_size
        return DEFAULT_SIZE

    def show(self, canvas: Image | None) -> bool:
        """Draw ``canvas`` (None: keep the last one) and handle the window's events; False when
        the viewer asked to stop (q, Esc, window closed)."""
        self.open()
        if canvas is not None:
            cv2.imshow(WINDOW, canvas)
            self.last = canvas
        key = cv2.waitKey(1)
        if key != -1 and (key & 0xFF) in KEY_QUIT:
            return False
        try:
            return bool(cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) >= 1)
        except cv2.error:
            return False

    def close(self) -> None:
        """Save the last picture if asked (``--snapshot``), then close the window; idempotent."""
        if self.snapshot is not None and self.last is not None:
            self.snapshot.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(self.snapshot), self.last)
        if self._open:
            self._open = False
            with contextlib.suppress(cv2.error):
                cv2.destroyWindow(WINDOW)
                cv2.waitKey(1)


# --- drawing a playback -------------------------------------------------------------------------


class _Status(Protocol):
    state: str
    session_state: str | None


class Playback(Protocol):
    """What the window draws from (``client.watch.Watcher``): its status and latest frame."""

    @property
    def status(self) -> _Status: ...

    @property
    def latest(self) -> av.VideoFrame | None: ...

    @property
    def latest_serial(self) -> int: ...


def card_text(status: _Status) -> tuple[str, str]:
    """The waiting card's title and detail for a playback that shows no picture."""
    if status.state in ("connecting", "reconnecting"):
        return f"{status.state}...", ""
    if status.session_state == "paused":
        return "waiting for the broadcast", "the broadcast is paused"
    if status.session_state == "scheduled":
        return "waiting for the broadcast", "it has not started yet"
    return "waiting for the broadcast", ""


async def run_window(
    playback: Playback,
    screen: Screen,
    http: aiohttp.ClientSession,
    code_url: str | None,
    token: str,
    stop: asyncio.Event,
) -> None:
    """Draw ``playback`` about 30 times a second (composing only when something changed), with
    the check-in code from ``code_url`` if given; sets ``stop`` when the viewer closes it."""
    feed = CheckinCodeFeed(http, code_url, token) if code_url else None
    fetching = asyncio.create_task(feed.run()) if feed is not None else None
    shown: tuple[Any, ...] = ()
    picture: Image | None = None
    serial = -1
    try:
        while True:
            status = playback.status
            playing = status.state == "playing" and playback.latest is not None
            if playing and playback.latest_serial != serial and playback.latest is not None:
                serial = playback.latest_serial
                picture = np.asarray(playback.latest.to_ndarray(format="bgr24"), np.uint8)
            code = feed.current if feed is not None else None
            size = screen.size()
            key = (serial if playing else status.state, status.session_state, code, size)
            canvas = None
            if key != shown:
                shown = key
                title, detail = card_text(status)
                shown_picture = picture if playing else None
                canvas = compose(shown_picture, size, title=title, detail=detail, code=code)
            if not screen.show(canvas):
                stop.set()
                return
            await asyncio.sleep(1 / 30)
    finally:
        if fetching is not None:
            fetching.cancel()
            await asyncio.gather(fetching, return_exceptions=True)
