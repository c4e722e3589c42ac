"""The publish loop of ``studycast publish``: connect over WHIP, stay live, reconnect by itself.

``Broadcaster.run`` offers the source's tracks to the WHIP endpoint and watches the connection:
a failed or closed peer, or no RTCP receiver report from the server for ``silence_timeout``
seconds (a killed server says nothing; the relay reports every second), starts a new connection,
backing off from 1 s to 10 s while the server cannot be reached or answers 5xx. A refused token
(401/403), an unknown session (404) or a codec the session does not take (400) end it with
``PublishFailed``: retrying would not help. On ``stop()`` it DELETEs the WHIP resource.

``Status`` holds what the operator sees (state, bitrate, fps, RTT), refreshed every second.
State changes, and every 30 s while live, go to the session's record as ``broadcaster_status``
events through the local outbox (``client.outbox``), sent with the publish token. Events start
with the first offer the server accepts, so a refused token leaves nothing in the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiortc import RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from yarl import URL

from attendance.errors import InvalidInput, StudycastError
from client.outbox import Outbox
from client.publisher import (
    SignallingError,
    audio_codec_preferences,
    delete_resource,
    post_offer,
    wait_for_connection,
)
from client.sources import MediaSource
from client.video_sender import (
    CappedEncoder,
    cap_encoder,
    hook_keyframe_requests,
    video_preferences,
)
from server.relay.ice import rtc_configuration

log = logging.getLogger(__name__)

State = Literal["connecting", "live", "reconnecting", "ended"]

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 10.0
STATUS_INTERVAL_S = 1.0
REPORT_INTERVAL_S = 30.0
CONNECT_TIMEOUT_S = 10.0
SILENCE_TIMEOUT_S = 6.0
REQUEST_TIMEOUT_S = 10.0
DELETE_TIMEOUT_S = 3.0
FLUSH_TIMEOUT_S = 2.0
OUTBOX_OWNER = "broadcaster"


class PublishFailed(StudycastError):
    """The broadcast cannot go on, and retrying would not help (the message says why)."""

    code = "publish_failed"


def events_url(whip_url: str) -> str:
    """``.../whip/{session}`` → ``.../api/sessions/{session}/events`` (where records go)."""
    url = URL(whip_url)
    parts = url.path.rstrip("/").split("/")
    if (
        url.scheme not in ("http", "https")
        or not url.host
        or len(parts) < 3
        or parts[-2] != "whip"
        or not parts[-1]
    ):
        raise InvalidInput(f"not a WHIP URL: {whip_url!r} (expected http(s)://HOST/whip/SESSION)")
    prefix = "/".join(parts[:-2])
    return str(url.with_path(f"{prefix}/api/sessions/{parts[-1]}/events").with_query(None))


def next_delay(previous: float | None) -> float:
    """Backoff between connection attempts: 1 s, doubling, at most 10 s."""
    return RETRY_FIRST_S if previous is None else min(RETRY_MAX_S, previous * 2)


@dataclass
class Status:
    """What the broadcast is doing now; ``Broadcaster`` updates it, displays read it."""

    source: str
    state: State = "connecting"
    detail: str = ""
    bitrate_kbps: float | None = None
    fps: float | None = None
    rtt_ms: float | None = None
    attempts: int = 0
    reconnects: int = 0
    resource_url: str | None = None
    live_since: float | None = None
    history: list[State] = field(default_factory=list)

    def event_fields(self) -> dict[str, Any]:
        """The ``broadcaster_status`` event for this moment (figures only while live)."""
        fields: dict[str, Any] = {"state": self.state, "source": self.source[:200]}
        if self.state == "live":
            for name in ("bitrate_kbps", "fps", "rtt_ms"):
                value = getattr(self, name)
                if value is not None:
                    fields[name] = round(float(value), 1)
        if self.detail:
            fields["detail"] = self.detail[:500]
        return fields


class _Retry(Exception):
    """This attempt failed in a way a later one may not."""

    def __init__(self, detail: str, *, unreachable: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.unreachable = unreachable


class _SessionEnded(Exception):
    """The server says the session has ended: nothing more to broadcast."""


# --- one connection ---------------------------------------------------------------------------


class _Connection:
    """One WHIP publication: its peer, senders and resource. ``close()`` is idempotent."""

    def __init__(self, pc: RTCPeerConnection, resource_url: str) -> None:
        self.pc = pc
        self.resource_url = resource_url
        self.lost = asyncio.Event()
        self.encoder: CappedEncoder | None = None
        self._closed = False
        self._last_report: Any = None
        # When the server last sent a receiver report (counted from the connection's start: our
        # relay reports every second or so, and a server killed at once must not go unnoticed).
        self.report_seen_at = time.monotonic()

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                self.lost.set()

    def senders(self) -> list[RTCRtpSender]:
        return [t.sender for t in self.pc.getTransceivers()]

    async def sample(self, now: float) -> tuple[int, float | None]:
        """Bytes sent so far (all kinds) and the video round-trip time in ms, if known; notes
        when the server last sent a receiver report."""
        sent, rtt = 0, None
        for sender in self.senders():
            report = await sender.getStats()
            for stats in report.values():
                if stats.type == "outbound-rtp":
                    sent += stats.bytesSent
                elif stats.type == "remote-inbound-rtp" and sender.kind == "video":
                    if stats.roundTripTime is not None:
                        rtt = stats.roundTripTime * 1000
                    stamp = (stats.timestamp, stats.packetsReceived)
                    if stamp != self._last_report:
                        self._last_report = stamp
                        self.report_seen_at = now
        return sent, rtt

    async def close(self, http: aiohttp.ClientSession, token: str, *, delete: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if delete:
                try:
                    await delete_resource(
                        http, self.resource_url, token, request_timeout=DELETE_TIMEOUT_S
                    )
                except SignallingError as exc:
                    log.warning("WHIP DELETE %s failed: %s", self.resource_url, exc)
        finally:
            await self.pc.close()


# --- the loop ---------------------------------------------------------------------------------


class Broadcaster:
    """Publishes ``source`` to ``whip_url`` until stopped, the file ends, or a fatal error."""

    def __init__(
        self,
        whip_url: str,
        token: str,
        source: MediaSource,
        *,
        http: aiohttp.ClientSession,
        bitrate: int,
        outbox: Outbox | None = None,
        on_status: Callable[[Status], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_timeout: float = REQUEST_TIMEOUT_S,
        connect_timeout: float = CONNECT_TIMEOUT_S,
        silence_timeout: float = SILENCE_TIMEOUT_S,
        report_interval: float = REPORT_INTERVAL_S,
    ) -> None:
        self.whip_url = whip_url
        self.source = source
        self.status = Status(source.name)
        self.stop_reason: str | None = None
        self._token = token
        self._http = http
        self._bitrate = bitrate
        self._outbox = outbox
        self._on_status = on_status
        self._clock = clock
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._silence_timeout = silence_timeout
        self._report_interval = report_interval
        self._stop = asyncio.Event()
        self._events_on = False
        self._accepted_once = False
        self._was_live = False
        self._last_event_at = 0.0
        self._capped_warned = False

    @property
    def records_started(self) -> bool:
        """Whether events go to the record yet (from the first offer the server accepted)."""
        return self._events_on

    def stop(self, reason: str) -> None:
        """End the broadcast (DELETE the resource); the first reason given is kept."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    async def run(self) -> str:
        """Broadcast until the end; returns why it ended, raises ``PublishFailed``."""
        self._set("connecting")
        try:
            reason = await self._loop()
        except PublishFailed as exc:
            self._set("ended", exc.detail)
            raise
        except BaseException:
            self._set("ended", "interrupted")
            raise
        self._set("ended", reason)
        return reason

    async def _loop(self) -> str:
        delay: float | None = None
        while True:
            if self._stop.is_set():
                return self.stop_reason or "stopped"
            self.status.attempts += 1
            try:
                conn = await self._until_stopped(self._connect())
            except _Stopped:
                return self.stop_reason or "stopped"
            except _SessionEnded as exc:
                if not self._was_live:
                    raise PublishFailed(str(exc)) from None
                return str(exc)
            except _Retry as exc:
                if exc.unreachable and not self._accepted_once:
                    raise PublishFailed(exc.detail) from None
                delay = next_delay(delay)
                state: State = "reconnecting" if self._was_live else "connecting"
                self._set(state, f"{exc.detail}; trying again in {delay:g} s")
                if await self._sleep_or_stop(delay):
                    return self.stop_reason or "stopped"
                continue
            delay = None
            lost: str | None = None
            try:
                lost = await self._live(conn)
            finally:
                # A lost connection's resource is gone or about to be replaced: no DELETE.
                await conn.close(self._http, self._token, delete=lost is None)
            if lost is None:
                if self.source.error:
                    raise PublishFailed(self.source.error)
                return self.stop_reason or "the file has been sent"
            self.status.reconnects += 1
            self.status.live_since = None
            self._set("reconnecting", lost)

    async def _until_stopped(self, coro: Any) -> Any:
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, _Retry, _SessionEnded):
                await task
            raise _Stopped
        return task.result()

    async def _sleep_or_stop(self, seconds: float) -> bool:
        await _first_of([self._stop], seconds)
        return self._stop.is_set()

    async def _connect(self) -> _Connection:
        pc = RTCPeerConnection(configuration=rtc_configuration())
        conn: _Connection | None = None
        try:
            video_tx = None
            for track in self.source.tracks():
                tx = pc.addTransceiver(track, direction="sendonly")
                if track.kind == "video":
                    video_tx = tx
                    tx.setCodecPreferences(video_preferences(self.source))
                    if self.source.passthrough:
                        hook_keyframe_requests(tx.sender, track.request_keyframe)  # type: ignore[attr-defined]
                else:
                    tx.setCodecPreferences(audio_codec_preferences())
            assert video_tx is not None
            await pc.setLocalDescription(await pc.createOffer())
            url = self.whip_url
            if self.status.resource_url is not None:
                # A reconnect says which connection it replaces: if another broadcaster took
                # that one over, the server refuses (taken_over) instead of handing it back.
                previous = URL(self.status.resource_url).name
                url = str(URL(self.whip_url).update_query(reconnect=previous))
            try:
                answer, resource_url = await post_offer(
                    self._http,
                    url,
                    self._token,
                    pc.localDescription.sdp,
                    request_timeout=self._request_timeout,
                )
            except SignallingError as exc:
                raise self._refusal(exc) from None
            self._accepted_once = True
            conn = _Connection(pc, resource_url)
            self.status.resource_url = resource_url
            self._start_events()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            if video_tx.currentDirection not in ("sendonly", "sendrecv"):
                raise PublishFailed("the server's answer does not let us send video")
            if self.source.passthrough is None:
                conn.encoder = cap_encoder(video_tx, self._bitrate)
                self._warn_if_capped(conn.encoder.target_bitrate)
            try:
                await wait_for_connection(pc, self._connect_timeout)
            except (TimeoutError, SignallingError) as exc:
                detail = f"no media connection within {self._connect_timeout:g} s"
                if isinstance(exc, SignallingError):
                    detail = f"media connection {exc.detail.removeprefix('peer connection ')}"
                raise _Retry(detail + " (check the ICE addresses and firewalls)") from None
            conn.report_seen_at = self._clock()
            return conn
        except BaseException:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(self._http, self._token, delete=True)
            await pc.close()
            raise

    def _warn_if_capped(self, effective: int) -> None:
        if effective != self._bitrate and not self._capped_warned:
            self._capped_warned = True
            log.warning(
                "aiortc's encoder keeps its own limits (VP8 0.25-1.5 Mbit/s, H.264 0.5-3 Mbit/s): "
                "video goes at up to %g Mbit/s, not the %g asked",
                effective / 1e6,
                self._bitrate / 1e6,
            )

    def _refusal(self, exc: SignallingError) -> Exception:
        """What a failed offer means: retry, the end, or a fatal ``PublishFailed``."""
        status, code, detail = exc.status, exc.code, exc.detail
        where = URL(self.whip_url)
        if status is None:
            if code == "unreachable":
                reason = _network_reason(exc)
                return _Retry(f"cannot reach {where.host}:{where.port}: {reason}", unreachable=True)
            return _Retry(f"{where.host}:{where.port} did not answer: {detail}")
        if status in (401, 403):
            return PublishFailed(f"the server refused the token (HTTP {status} {code})")
        if status == 409 and code == "session_ended":
            return _SessionEnded(detail)
        if status == 409 and code == "taken_over":
            return PublishFailed(
                f"another broadcaster took this session over: {detail} "
                "(run the command again to take it back)"
            )
        if status >= 500 or status == 429:
            return _Retry(f"the server answered HTTP {status} {code}: {detail}")
        if status == 404:
            return PublishFailed(f"no such session at {self.whip_url} (HTTP 404 {code}): {detail}")
        if code == "unsupported_codec":
            hint = ""
            if self.source.passthrough:
                hint = (
                    f" ({self.source.name} is {self.source.passthrough.upper()}, sent as it is: "
                    "add --reencode to encode it in the session's codec)"
                )
            return PublishFailed(f"the session does not take this video: {detail}{hint}")
        return PublishFailed(f"the server refused the offer (HTTP {status} {code}): {detail}")

    async def _live(self, conn: _Connection) -> str | None:
        """Watch a live connection; returns why it was lost, or None when the broadcast ends."""
        self.status.live_since = self._clock()
        self._was_live = True
        self._set("live")
        last_at, last_bytes, last_frames = self._clock(), 0, self.source.frames_sent
        waits = [self._stop, self.source.ended, conn.lost]
        while True:
            await _first_of(waits, STATUS_INTERVAL_S)
            if self._stop.is_set() or self.source.ended.is_set():
                return None
            if conn.lost.is_set():
                return f"the media connection is {conn.pc.connectionState}"
            now = self._clock()
            sent, rtt = await conn.sample(now)
            if now - conn.report_seen_at > self._silence_timeout:
                return f"no word from the server for {now - conn.report_seen_at:.0f} s"
            elapsed = max(now - last_at, 1e-3)
            self.status.bitrate_kbps = max(0.0, (sent - last_bytes) * 8 / elapsed / 1000)
            self.status.fps = (self.source.frames_sent - last_frames) / elapsed
            self.status.rtt_ms = rtt
            last_at, last_bytes, last_frames = now, sent, self.source.frames_sent
            periodic = now - self._last_event_at >= self._report_interval
            self._set("live", event=periodic)

    def _start_events(self) -> None:
        if not self._events_on:
            self._events_on = True
            self._record()

    def _set(self, state: State, detail: str = "", *, event: bool = False) -> None:
        """Update the status; a new state (or ``event``) also goes to the record."""
        changed = state != self.status.state or not self.status.history
        self.status.state = state
        self.status.detail = detail
        if state != "live":
            self.status.bitrate_kbps = self.status.fps = self.status.rtt_ms = None
        if changed:
            self.status.history.append(state)
            log.info("broadcast %s%s", state, f": {detail}" if detail else "")
        if changed or event:
            self._record()
        if self._on_status is not None:
            self._on_status(self.status)

    def _record(self) -> None:
        if self._outbox is not None and self._events_on:
            self._outbox.add("broadcaster_status", **self.status.event_fields())
            self._last_event_at = self._clock()


class _Stopped(Exception):
    """``stop()`` came while connecting."""


def _network_reason(exc: SignallingError) -> str:
    """ "connection refused" rather than aiohttp's whole sentence, where the OS said why."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError):
        error = cause.os_error
        if isinstance(error, socket.gaierror) and error.strerror:
            return error.strerror.lower()
        if error.errno:
            return os.strerror(error.errno).lower()
    return exc.detail


async def _first_of(events: list[asyncio.Event], within: float) -> None:
    """Wait until any of ``events`` is set, or ``within`` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _cancel(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end. Asked again if need be: on Python 3.11 an
    ``asyncio.wait_for`` whose awaitable finishes at that moment swallows the cancellation."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.1)
    if not task.cancelled() and task.exception() is not None:
        log.warning("outbox task failed: %r", task.exception())


@dataclass(frozen=True)
class Ending:
    """How a broadcast ended: why, and whether its record events all reached the server."""

    reason: str
    events_pending: int


async def broadcast(
    whip_url: str,
    token: str,
    source: MediaSource,
    *,
    bitrate: int,
    outbox_path: Path,
    on_status: Callable[[Status], None] | None = None,
    on_start: Callable[[Broadcaster], None] | None = None,
) -> Ending:
    """Run a whole broadcast: HTTP client, outbox (flushed for up to 2 s at the end) and the
    ``Broadcaster``; ``on_start`` receives it (to wire signals to ``stop``)."""
    try:
        outbox = Outbox(
            outbox_path, events_url=events_url(whip_url), token=token, owner=OUTBOX_OWNER
        )
    except (OSError, sqlite3.Error) as exc:
        raise PublishFailed(f"cannot open the outbox {outbox_path}: {exc}") from None
    async with aiohttp.ClientSession() as http:
        sender = asyncio.create_task(outbox.run(http))
        broadcaster = Broadcaster(
            whip_url, token, source, http=http, bitrate=bitrate, outbox=outbox, on_status=on_status
        )
        if on_start is not None:
            on_start(broadcaster)
        try:
            reason = await broadcaster.run()
        finally:
            await _cancel(sender)
            if broadcaster.records_started:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_TIMEOUT_S):
                        await outbox.flush(http)
            pending = outbox.pending_count
            outbox.close()
    return Ending(reason, pending)
