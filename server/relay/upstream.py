"""An edge's feed of a session: the node pulls the media once from its origin over WHEP and hands
every packet to its own viewers, exactly as a broadcaster's packets are handed on.

``Upstream`` is a broadcaster connection (``Ingest``) that makes the offer instead of answering
one: same tap (no decoder), same keyframe requests (PLI to the origin, which passes them on to
the broadcaster), same link upkeep by aiortc (receiver reports, NACKs). ``EdgeFeeds`` keeps one
upstream per session that has viewers on this node: it connects on the first viewer, follows the
origin (a lost connection is made again with backoff; the origin's broadcaster reconnects are
invisible here, as for any viewer), and hangs up once the session has had no viewers here for
``LINGER_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

from attendance.errors import StudycastError
from client.publisher import SignallingError, delete_resource, post_offer
from server.relay import codecs
from server.relay.fanout import SessionRelay
from server.relay.ingest import Ingest

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 5.0
# A session's feed is kept this long after its last viewer here left (a reload, a reconnect).
LINGER_S = 10.0
CHECK_S = 0.5


class SessionOver(Exception):
    """The origin says the session has ended or does not exist: stop pulling it."""


class Upstream(Ingest):
    """A WHEP viewer of the origin whose packets feed this node's hub. ``close()`` hangs up
    (and DELETEs the WHEP resource, best effort)."""

    def __init__(self, *, url: str, token: str, http: aiohttp.ClientSession, **kwargs: Any):
        super().__init__(**kwargs)
        self.url = url
        self._token = token
        self._http = http
        self.location: str | None = None

    async def connect(self) -> None:
        """Offer to receive the session's video (and Opus audio) and apply the origin's answer;
        ``SignallingError`` when the origin refuses, ``InvalidInput`` for an unusable answer."""
        name = codecs.VIDEO_NAMES[self.session_codec]
        video = self.pc.addTransceiver("video", direction="recvonly")
        codecs.prefer(video, [c for c in codecs.capabilities("video") if c.name.upper() == name])
        self._tap(video.receiver, "video")
        audio = self.pc.addTransceiver("audio", direction="recvonly")
        codecs.prefer(audio, codecs.audio_preferences())
        self._tap(audio.receiver, "audio")
        self.video_receiver = video.receiver
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answer, self.location = await post_offer(
            self._http, self.url, self._token, self.pc.localDescription.sdp
        )
        await codecs.apply_answer(self.pc, answer)
        chosen = video._codecs[0] if video._codecs else None
        if chosen is not None and name == "H264":
            self.profile = codecs.h264_profile(chosen.parameters)

    async def close(self) -> None:
        if self._closed:
            return
        location, self.location = self.location, None
        if location is not None:
            with contextlib.suppress(StudycastError):
                await delete_resource(self._http, location, self._token, request_timeout=2.0)
        await super().close()


class EdgeFeeds:
    """One upstream per session with viewers on this node, pulled from ``origin_url``."""

    def __init__(
        self,
        origin_url: str,
        node_token: str,
        *,
        whep_path: Callable[[int], str] = lambda session_id: f"/whep/{session_id}",
    ) -> None:
        self.origin_url = origin_url.rstrip("/")
        self._token = node_token
        self._whep_path = whep_path
        self._http: aiohttp.ClientSession | None = None
        self._feeds: dict[int, asyncio.Task[None]] = {}
        self.connects = 0
        self.failures = 0
        self._closed = False

    def ensure(self, hub: SessionRelay) -> None:
        """Make sure the session is being pulled (call when a viewer joins here)."""
        if self._closed:
            return
        task = self._feeds.get(hub.session_id)
        if task is None or task.done():
            self._feeds[hub.session_id] = asyncio.create_task(self._feed(hub))

    @property
    def sessions(self) -> list[int]:
        return [s for s, t in self._feeds.items() if not t.done()]

    async def _feed(self, hub: SessionRelay) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        delay = FIRST_RETRY_S
        idle_since: float | None = None
        loop = asyncio.get_running_loop()
        while not self._closed and hub.state != "ended":
            if not hub.viewers:
                idle_since = idle_since or loop.time()
                if loop.time() - idle_since >= LINGER_S:
                    break
            else:
                idle_since = None
            if hub.ingest is None and hub.viewers:  # nobody watching here: no new pull
                try:
                    upstream = await self._connect(hub)
                except SessionOver:
                    break
                if upstream is None:
                    await asyncio.sleep(delay)
                    delay = min(MAX_RETRY_S, delay * 2)
                    continue
                delay = FIRST_RETRY_S
            await asyncio.sleep(CHECK_S)
        if hub.ingest is not None:
            await hub.ingest.close()
        self._feeds.pop(hub.session_id, None)
        log.info("edge: stopped pulling session %s", hub.session_id)

    async def _connect(self, hub: SessionRelay) -> Upstream | None:
        assert self._http is not None
        upstream = Upstream(
            url=self.origin_url + self._whep_path(hub.session_id),
            token=self._token,
            http=self._http,
            resource_id="up-" + secrets.token_urlsafe(9),
            session_codec=hub.video_codec,
            epoch=hub.next_epoch(),
            sink=hub.forward,
            on_gone=hub.source_gone,
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await upstream.connect()
        except SignallingError as exc:
            await upstream.close()
            if exc.status in (404, 409):  # the session is gone or has ended: nothing to pull
                raise SessionOver(str(exc)) from exc
            self.failures += 1
            log.warning("edge: cannot pull session %s: %s", hub.session_id, exc)
            return None
        except (StudycastError, TimeoutError, OSError) as exc:
            self.failures += 1
            log.warning(
                "edge: cannot pull session %s from %s: %s", hub.session_id, self.origin_url, exc
            )
            await upstream.close()
            return None
        self.connects += 1
        await hub.take_source(upstream)
        log.info("edge: pulling session %s from %s", hub.session_id, self.origin_url)
        return upstream

    async def close(self) -> None:
        """Stop every feed (idempotent); the hubs close their upstreams with the relay."""
        if self._closed:
            return
        self._closed = True
        tasks = list(self._feeds.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._http is not None:
            await self._http.close()
