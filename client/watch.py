"""``studycast watch``: a WHEP viewer that keeps playing a session by itself, as a venue screen.

``Watcher`` offers a recvonly audio + video peer (``Connection``), decodes what arrives with
aiortc's own receivers, and replaces the connection with backoff (1 s doubling to 10 s) when ICE
fails, when the server goes away, or when no media arrives although the broadcast is live; an offer
the server refused with ``Retry-After`` (a full node, one behind live) waits as long as it asks.
Which of those applies is decided by ``client.liveness.Liveness``, fed with what happened and when:
a paused broadcaster is *waiting* (the relay resumes the same connection), a lost connection is
*reconnecting*. The session's state comes from its live event stream (``follow_session_state``),
which a venue or member token may read; a shared viewer token cannot, and then only a long
silence leads to a reconnect.

Venue and member tokens also report the screen's own view: a ``heartbeat`` event every 15 s
(``visible`` while playing) through the local outbox (``client.outbox``), beside the media
evidence the relay records by itself. A refused token (401/403), a session that does not exist
(404) or a server that cannot be reached on the first attempt end the watch with ``WatchError``;
everything later is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import signal
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import jwt
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from attendance.errors import StudycastError
from client.audio import AudioSink, SilentSink, open_audio_output
from client.liveness import Liveness, Verdict
from client.outbox import Outbox
from client.publisher import MAX_RETRY_AFTER_S, SignallingError, delete_resource, post_offer
from server.relay.ice import advertise_addresses, rtc_configuration

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 10.0
# A server's Retry-After (a full node, one behind live) is honoured up to MAX_RETRY_AFTER_S: a
# venue screen does not sit out an hour because a misconfigured proxy asked it to.
HEARTBEAT_EVERY_S = 15.0
STREAM_READ_TIMEOUT_S = 40.0  # the server pings the event stream every 15 s
CLOSE_WITHIN_S = 3.0
FPS_WINDOW_S = 2.0
TICK_S = 0.25
_WHEP_URL = re.compile(r"(?P<base>https?://[^/?#\s]+(?:/[^?#\s]*)?)/whep/(?P<session>\d{1,12})/?")

Say = Callable[[str], None]
Handler = Callable[[Any], None]


class WatchError(StudycastError):
    """The watch cannot go on: a bad URL, a refused token, no such session, no server."""

    code = "watch_failed"


# --- what to watch ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A session's WHEP URL, the server's base URL, and who the token says we are (its claims
    unverified: only the server can verify them, but they tell a venue from a member)."""

    whep_url: str
    base: str
    session_id: int
    role: str | None = None
    subject: str | None = None

    def api(self, path: str) -> str:
        return f"{self.base}/api/sessions/{self.session_id}/{path}"

    @property
    def venue(self) -> str | None:
        """The venue's slug for a venue token (its screen shows the check-in code)."""
        kind, _, name = (self.subject or "").partition(":")
        return name if self.role == "venue" and kind == "venue" and name else None

    @property
    def reports(self) -> bool:
        """Venue and member tokens may send events and read the live event stream."""
        return self.role in ("venue", "member")


def parse_target(whep_url: str, token: str) -> Target:
    """Check that ``whep_url`` is ``http(s)://HOST[/prefix]/whep/SESSION``; peek at the token."""
    match = _WHEP_URL.fullmatch(whep_url.strip())
    if match is None:
        raise WatchError(
            f"{whep_url!r} is not a WHEP URL: expected http(s)://HOST/whep/SESSION", code="bad_url"
        )
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        claims = {}
    role, subject = claims.get("role"), claims.get("sub")
    return Target(
        whep_url=match.group(0),
        base=match.group("base"),
        session_id=int(match.group("session")),
        role=role if isinstance(role, str) else None,
        subject=subject if isinstance(subject, str) else None,
    )


# --- status -------------------------------------------------------------------------------------


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class WatchStatus:
    """What the viewer shows and prints: state, picture, rates and counters."""

    state: str = "connecting"  # connecting | playing | waiting | reconnecting | ended
    width: int = 0
    height: int = 0
    fps: float = 0.0
    frames: int = 0
    audio_frames: int = 0
    uptime_s: float = 0.0
    reconnects: int = 0
    session_state: str | None = None
    last_error: str = ""

    def line(self) -> str:
        return (
            f"{self.state} {self.width}x{self.height} {self.fps:.1f} fps frames={self.frames} "
            f"uptime={hms(self.uptime_s)} reconnects={self.reconnects}"
        )


class FrameRate:
    """Frames per second over the last ``window_s`` seconds."""

    def __init__(self, window_s: float = FPS_WINDOW_S) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def add(self, now: float) -> None:
        self._times.append(now)
        self._trim(now)

    def rate(self, now: float) -> float:
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-3)

    def _trim(self, now: float) -> None:
        while self._times and now - self._times[0] > self._window:
            self._times.popleft()


# --- one WHEP connection ------------------------------------------------------------------------


class Connection:
    """One WHEP playback: a recvonly peer (video + audio), its decoded tracks, its resource.
    ``close()`` DELETEs the resource and closes the peer; idempotent."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, token: str, handlers: dict[str, Handler]
    ) -> None:
        self.pc = RTCPeerConnection(configuration=rtc_configuration())
        self.resource_url: str | None = None
        self._http, self._url, self._token, self._handlers = http, url, token, handlers
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    async def open(self) -> None:
        """Offer, POST, apply the answer; decoded frames then go to the handlers."""
        for kind in self._handlers:
            self.pc.addTransceiver(kind, direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer, self.resource_url = await post_offer(
            self._http, self._url, self._token, self.pc.localDescription.sdp
        )
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except ValueError as exc:
            raise SignallingError(f"unusable answer: {exc}", status=201, code="bad_answer") from exc
        for transceiver in self.pc.getTransceivers():
            track, handler = transceiver.receiver.track, self._handlers.get(transceiver.kind)
            if track is not None and handler is not None:
                self._tasks.append(asyncio.create_task(self._consume(track, handler)))

    @staticmethod
    async def _consume(track: MediaStreamTrack, handler: Handler) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                handler(await track.recv())

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        try:
            if self.resource_url is not None:
                with contextlib.suppress(SignallingError):
                    await delete_resource(
                        self._http, self.resource_url, self._token, request_timeout=CLOSE_WITHIN_S
                    )
        finally:
            await self.pc.close()
            await asyncio.gather(*self._tasks, return_exceptions=True)


def judge(exc: SignallingError, *, first: bool) -> WatchError | Verdict | None:
    """What a failed offer means: a ``WatchError`` to stop with, ``ENDED``, or None (retry).

    A refused token and a missing session are final (retrying cannot help); a server out of
    reach is final only before the first connection (a typo, not an outage)."""
    where = exc.url or "the server"
    if exc.status in (401, 403):
        why = f"the server refused the token (HTTP {exc.status} {exc.code}): {exc.detail}"
        return WatchError(why, code="refused")
    if exc.status == 404:
        return WatchError(f"no such session at {where} (HTTP 404): {exc.detail}", code="not_found")
    if exc.status == 409 and exc.code == "session_ended":
        return WatchError(exc.detail, code="session_ended") if first else Verdict.ENDED
    if exc.status is None:
        return WatchError(f"cannot reach {where}: {exc.detail}") if first else None
    if exc.status in (408, 425, 429) or exc.status >= 500:
        return None
    return WatchError(f"the server rejected the offer: {exc}", code=exc.code)


# --- the viewer ---------------------------------------------------------------------------------


class Watcher:
    """Keeps one WHEP playback of ``target`` going and ``status`` up to date, until the session
    ends (``run`` returns), the task is cancelled, or a final error (``WatchError``).

    Sound goes to the sink ``audio()`` makes, opened with the first audio frame."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        target: Target,
        token: str,
        *,
        audio: Callable[[], AudioSink] = SilentSink,
        say: Say = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
    ) -> None:
        self.target = target
        self.status = WatchStatus()
        self.liveness = Liveness()
        self.latest: av.VideoFrame | None = None
        self.latest_serial = 0
        self.first_picture = asyncio.Event()
        self.connected_once = False
        self._http, self._token, self._say, self._clock = http, token, say, clock
        self._sleep = sleep
        self._retry_after: float | None = None  # what the last refused offer was told to wait
        self._open_audio = audio
        self._audio: AudioSink | None = None
        self._rate = FrameRate()
        self._last_tick = clock()

    def _on_video(self, frame: av.VideoFrame) -> None:
        now = self._clock()
        self.liveness.media(now)
        self._rate.add(now)
        self.status.frames += 1
        self.status.width, self.status.height = frame.width, frame.height
        self.latest = frame
        self.latest_serial += 1

    def _on_audio(self, frame: av.AudioFrame) -> None:
        self.liveness.media(self._clock())
        self.status.audio_frames += 1
        if self._audio is None:
            self._audio = self._open_audio()
        self._audio.play(frame)

    def close_audio(self) -> None:
        if self._audio is not None:
            self._audio.close()

    def _set_state(self, state: str) -> None:
        """Move to ``state``, adding the time since the last change to uptime while playing."""
        now = self._clock()
        if self.status.state == "playing":
            self.status.uptime_s += now - self._last_tick
        self._last_tick = now
        self.status.state = state
        if state == "playing":
            self.first_picture.set()
        self.status.fps = round(self._rate.rate(now), 1)
        self.status.session_state = self.liveness.state

    async def run(self) -> None:
        backoff, first = FIRST_BACKOFF_S, True
        handlers: dict[str, Handler] = {"video": self._on_video, "audio": self._on_audio}
        while True:
            self._set_state("connecting" if first else "reconnecting")
            connection = Connection(self._http, self.target.whep_url, self._token, handlers)
            try:
                verdict, played = await self._attempt(connection, first=first)
            finally:
                await connection.close()
            if verdict is Verdict.ENDED:
                self._set_state("ended")
                return
            if verdict is Verdict.RECONNECT:  # connected, then lost
                first = False
                backoff = FIRST_BACKOFF_S if played else backoff
                self._say(f"reconnecting: {self.liveness.reason}")
            self._set_state("connecting" if first else "reconnecting")
            if await self._pause(self._next_wait(backoff)):
                self._set_state("ended")
                return
            backoff = min(MAX_BACKOFF_S, backoff * 2)

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds`` before the next offer, or less if the session ends meanwhile (its
        event stream says so): True if it did. A full node may ask for minutes."""
        nap = asyncio.ensure_future(self._sleep(seconds))
        try:
            while not nap.done() and self.liveness.state != "ended":
                await asyncio.wait({nap}, timeout=TICK_S)
        finally:
            nap.cancel()
            await asyncio.gather(nap, return_exceptions=True)
        return self.liveness.state == "ended"

    def _next_wait(self, backoff: float) -> float:
        """The backoff, or longer if the server's last refusal asked for it (Retry-After)."""
        asked, self._retry_after = self._retry_after, None
        if asked is None or asked <= backoff:
            return backoff
        wait = min(asked, MAX_RETRY_AFTER_S)
        self._say(f"the server asked to try again in {wait:g} s: {self.status.last_error}")
        return wait

    async def _attempt(self, connection: Connection, *, first: bool) -> tuple[Verdict | None, bool]:
        """Open and follow one connection: (RECONNECT or ENDED, whether it played), or
        (None, False) after an offer that failed and may be retried."""
        try:
            await connection.open()
        except SignallingError as exc:
            outcome = judge(exc, first=first)
            if isinstance(outcome, WatchError):
                raise outcome from exc
            self.status.last_error = str(exc)
            self._retry_after = exc.retry_after
            return outcome, False
        if not first:
            self.status.reconnects += 1
        self.connected_once = True
        self.liveness.opened(self._clock())
        played = False
        while True:
            now = self._clock()
            if connection.state == "connected":
                self.liveness.connected(now)
            elif connection.state in ("failed", "closed"):
                self.liveness.failed(f"the connection {connection.state}")
            verdict = self.liveness.verdict(now)
            if verdict in (Verdict.RECONNECT, Verdict.ENDED):
                self.status.last_error = self.liveness.reason
                return verdict, played
            played = played or verdict is Verdict.PLAYING
            if verdict is not Verdict.CONNECTING:  # else: connecting or reconnecting, as it was
                self._set_state(verdict.value)
            await asyncio.sleep(TICK_S)


# --- the session's state ------------------------------------------------------------------------


async def follow_session_state(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    liveness: Liveness,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Read the session's live event stream (``GET .../events/stream``, Server-Sent Events,
    one JSON line per event) and tell ``liveness`` the session's state, and when the stream,
    hence the server, is lost. A token that may not read it (401/403/404) leaves it unknown."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=STREAM_READ_TIMEOUT_S)
    backoff = FIRST_BACKOFF_S
    while True:
        try:
            async with http.get(url, headers=headers, timeout=timeout) as response:
                if response.status in (401, 403, 404):
                    log.info("watch: the event stream answered %s", response.status)
                    return
                response.raise_for_status()
                name = ""
                async for raw in response.content:
                    backoff = FIRST_BACKOFF_S
                    key, _, value = raw.decode("utf-8", "replace").rstrip("\r\n").partition(":")
                    value = value.removeprefix(" ")
                    if key == "event":
                        name = value
                    elif key == "data" and name in ("snapshot", "session_state"):
                        body = json.loads(value)
                        state = body["session"]["state"] if name == "snapshot" else body["state"]
                        liveness.session_state(str(state), clock())
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as exc:
            log.debug("watch: event stream lost: %r", exc)
        liveness.stream_lost()
        await asyncio.sleep(backoff)
        backoff = min(MAX_BACKOFF_S, backoff * 2)


# --- the whole watch ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchOptions:
    """What ``studycast watch`` was asked to do."""

    whep_url: str
    token: str
    headless: bool = True
    fullscreen: bool = False
    audio: bool = True
    qr: bool = True
    ice_addresses: tuple[str, ...] = ()
    outbox_path: Path | None = None
    max_seconds: float | None = None
    status_every_s: float = 5.0
    snapshot: Path | None = None


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _stdout(text: str) -> None:
    print(text, flush=True)


async def _heartbeats(outbox: Outbox, watcher: Watcher, every_s: float) -> None:
    """From the first picture on, a heartbeat every ``every_s`` (``visible`` while playing)."""
    await watcher.first_picture.wait()
    while True:
        outbox.add("heartbeat", visible=watcher.status.state == "playing")
        await asyncio.sleep(every_s)


async def _print_status(watcher: Watcher, every_s: float, out: Say) -> None:
    while True:
        await asyncio.sleep(every_s)
        out(watcher.status.line())


async def _warn_refused(outbox: Outbox, say: Say) -> None:
    """Say once if the server refuses our events (the picture goes on regardless)."""
    while True:
        await asyncio.sleep(1.0)
        if outbox.state == "unauthorized":
            say(f"record: heartbeats refused ({outbox.last_error}); still playing")
            return


async def run_watch(options: WatchOptions, *, say: Say = _stderr, out: Say = _stdout) -> None:
    """Watch until ``max_seconds``, Ctrl-C/SIGTERM, q/Esc, or the session's end; ``WatchError``
    for what cannot be recovered. On the way out the WHEP resource is deleted and the outbox
    gets one last chance to send."""
    target = parse_target(options.whep_url, options.token)
    screen = None
    if not options.headless:
        from client import screen as window

        if (problem := window.display_problem()) is not None:
            raise WatchError(f"{problem}, so no window can be opened: use --headless")
        screen = window.Screen(fullscreen=options.fullscreen, snapshot=options.snapshot)
    if options.ice_addresses:
        advertise_addresses(options.ice_addresses)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as http:
        audio = functools.partial(open_audio_output, enabled=options.audio, say=say)
        watcher = Watcher(http, target, options.token, audio=audio, say=say)
        outbox = None
        if target.role == "viewer":
            say("record: a shared viewer token; the screen sends no heartbeats")
        elif target.reports and options.outbox_path is not None:
            try:
                outbox = Outbox(
                    options.outbox_path,
                    events_url=target.api("events"),
                    token=options.token,
                    owner=target.subject or "watch",
                )
            except (OSError, sqlite3.Error) as exc:
                raise WatchError(f"cannot open the outbox {options.outbox_path}: {exc}") from exc
        jobs: list[Coroutine[Any, Any, Any]] = [stop.wait()]
        if target.reports:
            stream = target.api("events/stream")
            jobs.append(follow_session_state(http, stream, options.token, watcher.liveness))
        if outbox is not None:
            jobs += [
                outbox.run(http),
                _heartbeats(outbox, watcher, HEARTBEAT_EVERY_S),
                _warn_refused(outbox, say),
            ]
        if screen is None:
            jobs.append(_print_status(watcher, options.status_every_s, out))
        else:
            code_url = target.api(f"venues/{target.venue}/checkin-code") if target.venue else None
            jobs.append(
                window.run_window(
                    watcher, screen, http, code_url if options.qr else None, options.token, stop
                )
            )
        main = asyncio.create_task(watcher.run())
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            await asyncio.wait(
                [main, tasks[0]], timeout=options.max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if main.done():
                main.result()  # a WatchError ends the watch here
                say("the session has ended")
        finally:
            for task in (main, *tasks):
                task.cancel()
            await asyncio.gather(main, *tasks, return_exceptions=True)
            if screen is not None:
                screen.close()
            elif watcher.connected_once:
                out(watcher.status.line())
            watcher.close_audio()
            if outbox is not None:
                with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
                    await asyncio.wait_for(outbox.flush(http), CLOSE_WITHIN_S)
                outbox.close()
