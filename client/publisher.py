"""Publish a pre-encoded clip over WHIP (RFC 9725): a paced packet track and a WHIP client.

``PacedPacketTrack`` hands aiortc's sender encoded ``av.Packet`` objects in real time, so the
sender packetises without encoding (aiortc's ``MediaPlayer(decode=False)`` stops pacing after its
first loop and floods). A keyframe request (PLI/FIR) from the far end makes the track jump to the
clip's next keyframe: aiortc only forwards such requests to its own encoder, so
``hook_keyframe_requests`` routes them to the track instead.

Callers choose the ICE addresses once per process (``server.relay.ice.advertise_addresses``);
peers are created with ``server.relay.ice.rtc_configuration()``, which asks no STUN server.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fractions
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import av
from aiortc import (
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from yarl import URL

from attendance.errors import StudycastError
from client.clip import EncodedClip
from server.relay.ice import rtc_configuration

log = logging.getLogger(__name__)

CLOCK_RATES = {"audio": 48_000, "video": 90_000}
H264_PROFILE_LEVEL_ID = "42e01f"  # constrained baseline 3.1: what make_clip produces
DEFAULT_MAX_LAG = 0.5  # seconds late before a schedule moves instead of bursting
DEFAULT_REQUEST_TIMEOUT = 10.0
YEAR_S = 365 * 86_400
MAX_RETRY_AFTER_S = 150.0  # the longest Retry-After a player waits (whep.js: 5 x 30 s)


class SignallingError(StudycastError):
    """A WHIP/WHEP exchange failed: the server's status and its ``error``/``detail``, if any."""

    code = "signalling_failed"

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail, code=code)
        self.status = status
        self.url = url
        # Seconds the server asked to wait before trying again (its Retry-After), if it did.
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" from {self.url}" if self.url else ""
        status = f"HTTP {self.status} " if self.status is not None else ""
        return f"{status}{self.code}{where}: {self.detail}"


class AiortcChanged(RuntimeError):
    """An aiortc internal we rely on is missing: aiortc was upgraded without checking us."""


# --- the track ------------------------------------------------------------------------------


class Schedule:
    """When media time zero is on the monotonic clock. A publication's tracks share one, as a
    camera and its microphone share one clock: they start together and stay in step.

    A consumer more than ``max_lag`` seconds late moves the schedule instead of bursting to catch
    up (``math.inf``: never moves, bursts like a capture device whose frames queued meanwhile).
    """

    def __init__(
        self, max_lag: float = DEFAULT_MAX_LAG, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.start: float | None = None
        self.max_lag = max_lag
        self.clock = clock

    def wait(self, media_time: float) -> float:
        """Seconds until ``media_time`` is due (0: now, or late)."""
        now = self.clock()
        if self.start is None:
            self.start = now - media_time
        due = self.start + media_time
        if now - due > self.max_lag:
            self.start = now - media_time  # stalled consumer: no catch-up burst
            return 0.0
        return max(0.0, due - now)


class PacedPacketTrack(MediaStreamTrack):
    """Packets of one kind from an ``EncodedClip``, released in real time, looping if asked.

    Each packet is due at the ``schedule``'s start plus the media time before it; ``recv`` sleeps
    until then (a track without a shared schedule gets its own). Timestamps grow across loops and
    keyframe jumps.
    """

    def __init__(
        self,
        kind: str,
        clip: EncodedClip,
        loop: bool = True,
        *,
        max_lag: float = DEFAULT_MAX_LAG,
        clock: Callable[[], float] = time.monotonic,
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self._packets = clip.packets(kind)
        if not self._packets:
            raise ValueError(f"the clip has no {kind} packets")
        self._keyframes = [i for i, p in enumerate(self._packets) if p.keyframe]
        self._rate = CLOCK_RATES[kind]
        self._time_base = fractions.Fraction(1, self._rate)
        self._looping = loop
        self._schedule = schedule or Schedule(max_lag, clock)
        self.started_at: float | None = None  # when the first packet went (schedule's clock)
        self._media_time = 0.0
        self._next = 0
        self._jump_pending = False
        self.keyframe_requests = 0
        self.jumps = 0
        self.loops = 0
        self.packets_sent = 0

    @property
    def position(self) -> int:
        """Position in the clip's packets of the one ``recv`` will return next."""
        return self._next

    def request_keyframe(self) -> None:
        """Make the next video packet a keyframe: the start of the clip's next GOP."""
        self.keyframe_requests += 1
        if self.kind == "video":
            self._jump_pending = True

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        wait = self._schedule.wait(self._media_time)
        if wait > 0:
            await asyncio.sleep(wait)
            if self.readyState != "live":
                raise MediaStreamError
        if self.started_at is None:
            self.started_at = self._schedule.clock()
        if self._jump_pending:
            self._jump_pending = False
            self._jump_to_keyframe()
        if self._next >= len(self._packets):
            if not self._looping:
                self.stop()
                raise MediaStreamError
            self._next = 0
            self.loops += 1
        item = self._packets[self._next]
        packet = av.Packet(item.data)
        packet.pts = packet.dts = round(self._media_time * self._rate)
        packet.time_base = self._time_base
        self._next += 1
        self._media_time += item.duration
        self.packets_sent += 1
        return packet

    def _jump_to_keyframe(self) -> None:
        if self._next < len(self._packets) and self._packets[self._next].keyframe:
            return  # already at one: several requests in a row cost one keyframe
        ahead = bisect.bisect_right(self._keyframes, self._next)
        if ahead < len(self._keyframes):
            self._next = self._keyframes[ahead]
        elif self._looping:
            self._next = 0
            self.loops += 1
        else:
            self._next = len(self._packets)
        self.jumps += 1


def hook_keyframe_requests(sender: RTCRtpSender, track: PacedPacketTrack) -> None:
    """Route the PLI/FIR that ``sender`` receives to ``track.request_keyframe``.

    aiortc's sender answers PLI/FIR by calling its own ``_send_keyframe()``, which only flags its
    encoder; with pre-encoded packets there is no encoder, so we replace it on this instance.
    """
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise AiortcChanged("RTCRtpSender._send_keyframe is gone: PLI would be ignored")
    sender._send_keyframe = track.request_keyframe  # type: ignore[method-assign]


def video_codec_preferences(clip: EncodedClip) -> list[RTCRtpCodecCapability]:
    """The sender capabilities matching the clip's codec (plus RTX, so lost packets are resent)."""

    def wanted(cap: RTCRtpCodecCapability) -> bool:
        name = cap.mimeType.lower()
        if name == "video/h264":
            profile = cap.parameters.get("profile-level-id")
            return clip.codec == "h264" and profile == H264_PROFILE_LEVEL_ID
        return name == "video/rtx" or name == f"video/{clip.codec}"

    return [c for c in RTCRtpSender.getCapabilities("video").codecs if wanted(c)]


def audio_codec_preferences() -> list[RTCRtpCodecCapability]:
    return [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name.lower() == "opus"]


# --- WHIP/WHEP signalling -------------------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_offer(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    offer_sdp: str,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> tuple[str, str]:
    """POST an SDP offer (WHIP or WHEP); returns the answer SDP and the absolute resource URL."""
    headers = {**_auth(token), "Content-Type": "application/sdp"}
    async with (
        _http_errors(url, request_timeout),
        http.post(
            url,
            data=offer_sdp.encode(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(request_timeout),
        ) as response,
    ):
        body = await response.read()
        if response.status != 201:
            raise _answer_error(url, response, body)
        location = response.headers.get("Location")
        if not location:
            raise SignallingError("201 answer without a Location header", status=201, url=url)
        if response.content_type != "application/sdp":
            raise SignallingError(
                f"answer is {response.content_type or 'untyped'}, not application/sdp",
                status=201,
                url=url,
            )
        return body.decode(), str(URL(url).join(URL(location)))


async def delete_resource(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    *,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> None:
    """End a WHIP/WHEP session: DELETE its resource URL (RFC 9725 section 4.2)."""
    async with (
        _http_errors(url, request_timeout),
        http.delete(
            url, headers=_auth(token), timeout=aiohttp.ClientTimeout(request_timeout)
        ) as response,
    ):
        body = await response.read()
        if response.status >= 300:
            raise _answer_error(url, response, body)


@contextlib.asynccontextmanager
async def _http_errors(url: str, request_timeout: float) -> AsyncIterator[None]:
    """Translate aiohttp's failures into ``SignallingError`` at this boundary."""
    try:
        yield
    except TimeoutError:
        raise SignallingError(
            f"no answer within {request_timeout:g} s", code="timeout", url=url
        ) from None
    except aiohttp.ClientError as exc:
        raise SignallingError(str(exc) or type(exc).__name__, code="unreachable", url=url) from exc


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """An HTTP ``Retry-After`` (RFC 9110 section 10.2.3) as seconds from ``now``: delay-seconds
    or an HTTP-date. None when absent or unreadable; a date in the past is 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        # A year at most (callers cap it far lower): int() of thousands of digits would raise.
        return float(int(value)) if len(value) <= 8 else float(YEAR_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's UTC of unknown origin
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _answer_error(url: str, response: aiohttp.ClientResponse, body: bytes) -> SignallingError:
    """The server's JSON ``{"error", "detail"}`` if it sent one, else the start of its body;
    with its ``Retry-After``, if any."""
    status, content_type = response.status, response.content_type
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    code, detail = "http_error", body.decode(errors="replace").strip()[:300] or "(empty body)"
    if content_type == "application/json" or content_type.endswith("+json"):
        with contextlib.suppress(ValueError):
            data: Any = json.loads(body)
            if isinstance(data, dict):
                code = str(data.get("error") or code)
                detail = str(data.get("detail") or detail)
    return SignallingError(detail, status=status, code=code, url=url, retry_after=retry_after)


async def wait_for_connection(pc: RTCPeerConnection, within: float) -> None:
    """Wait until ICE and DTLS are up; ``SignallingError`` if they fail, TimeoutError if slow."""
    async with asyncio.timeout(within):
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise SignallingError(f"peer connection {pc.connectionState}", code="ice_failed")
            await asyncio.sleep(0.05)


# --- publishing -----------------------------------------------------------------------------


class Publication:
    """A live WHIP publication: its peer, tracks and resource URL. ``close()`` ends it."""

    def __init__(
        self,
        *,
        pc: RTCPeerConnection,
        http: aiohttp.ClientSession,
        owns_http: bool,
        token: str,
        resource_url: str,
        answer_sdp: str,
        audio: PacedPacketTrack,
        video: PacedPacketTrack,
    ) -> None:
        self.pc = pc
        self.resource_url = resource_url
        self.answer_sdp = answer_sdp
        self.audio = audio
        self.video = video
        self.close_error: SignallingError | None = None
        self._http = http
        self._owns_http = owns_http
        self._token = token
        self._closing: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    @property
    def keyframe_requests(self) -> int:
        return self.video.keyframe_requests

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close_after(self, seconds: float) -> None:
        """End the publication by itself after ``seconds``."""
        if self._timer is None and self._closing is None:
            self._timer = asyncio.create_task(self._close_later(seconds))

    async def _close_later(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        await self.close()

    async def wait_connected(self, within: float = 10.0) -> None:
        await wait_for_connection(self.pc, within)

    async def wait_closed(self) -> None:
        """Wait until the publication ends (after ``close()`` or the ``seconds`` timer)."""
        if self._closing is None and self._timer is None:
            raise RuntimeError("nothing will close this publication: call close()")
        await self._closed.wait()

    async def close(self) -> None:
        """DELETE the resource and close the peer; safe to call more than once."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()  # harmless if the timer is what called close(): it is shielded
        try:
            await delete_resource(self._http, self.resource_url, self._token)
        except SignallingError as exc:
            self.close_error = exc
            log.warning("WHIP DELETE %s failed: %s", self.resource_url, exc)
        finally:
            try:
                await self.pc.close()
                if self._owns_http:
                    await self._http.close()
            finally:
                self._closed.set()


async def publish(
    whip_url: str,
    token: str,
    clip: EncodedClip,
    *,
    seconds: float | None = None,
    http: aiohttp.ClientSession | None = None,
    loop: bool = True,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_lag: float = DEFAULT_MAX_LAG,
) -> Publication:
    """Start publishing ``clip`` to a WHIP endpoint; returns once the answer is applied.

    The offer is sent complete (aiortc gathers every candidate in ``setLocalDescription``), so no
    trickle PATCH is needed. With ``seconds`` the publication ends itself after that long. Audio
    and video share one ``Schedule(max_lag)``.
    """
    owns_http = http is None
    session = aiohttp.ClientSession() if http is None else http
    pc = RTCPeerConnection(configuration=rtc_configuration())
    try:
        schedule = Schedule(max_lag)
        audio = PacedPacketTrack("audio", clip, loop, schedule=schedule)
        video = PacedPacketTrack("video", clip, loop, schedule=schedule)
        audio_tx = pc.addTransceiver(audio, direction="sendonly")
        audio_tx.setCodecPreferences(audio_codec_preferences())
        video_tx = pc.addTransceiver(video, direction="sendonly")
        video_tx.setCodecPreferences(video_codec_preferences(clip))
        hook_keyframe_requests(video_tx.sender, video)
        await pc.setLocalDescription(await pc.createOffer())
        answer_sdp, resource_url = await post_offer(
            session, whip_url, token, pc.localDescription.sdp, request_timeout=request_timeout
        )
    except BaseException:
        await pc.close()
        if owns_http:
            await session.close()
        raise
    publication = Publication(
        pc=pc,
        http=session,
        owns_http=owns_http,
        token=token,
        resource_url=resource_url,
        answer_sdp=answer_sdp,
        audio=audio,
        video=video,
    )
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        _check_sending(video_tx)
    except BaseException:
        await publication.close()
        raise
    if seconds is not None:
        publication.close_after(seconds)
    return publication


def _check_sending(transceiver: RTCRtpTransceiver) -> None:
    """The answer must accept our video codec and let us send: otherwise nothing would flow."""
    if transceiver.currentDirection not in ("sendonly", "sendrecv"):
        raise SignallingError(
            f"the answer does not let us send video ({transceiver.currentDirection})",
            code="rejected",
        )
