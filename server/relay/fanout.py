"""One session's media hub: the current broadcaster, its viewers, and the keyframe policy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from attendance.errors import Conflict
from server.relay.feedback import KeyframeRequests
from server.relay.ingest import Ingest
from server.relay.overload import OverloadGuard, newest_first
from server.relay.packet import SenderReport, SourcePacket
from server.relay.viewer import Viewer

log = logging.getLogger(__name__)

# A broadcaster silent this long counts as gone (the connection may take far longer to fail).
SILENCE_S = 5.0
# A viewer still without a keyframe this long after asking asks again (the PLI may be lost).
KEYFRAME_RETRY_S = 1.0
WATCH_INTERVAL_S = 0.5
# Broadcaster connections another connection took over (not their own reconnect) are
# remembered, so that their reconnect is refused instead of taking the session back: two
# devices broadcasting one session would otherwise replace each other for ever.
TAKEN_OVER_KEPT = 32

StateListener = Callable[[int, str], None]


class MediaTap(Protocol):
    """Something that sees the broadcaster's media beside the viewers (the recorder). Every call
    is made on the event loop and must return at once; exceptions are logged, never raised."""

    def media(self, packet: SourcePacket) -> None: ...

    def sender_report(self, report: SenderReport) -> None:
        """An RTCP sender report of the broadcaster."""

    def broadcaster_gone(self, epoch: int) -> None:
        """The broadcaster connection ``epoch`` (``SourcePacket.epoch >> 32``) has ended."""

    def relay_closed(self) -> None:
        """The hub is closing (the session ended or the server stops): no more media."""


class SessionRelay:
    """Fan-out for one study session. States: ``waiting`` (no broadcaster yet), ``live``,
    ``paused`` (broadcaster gone, viewers stay), ``ended``."""

    def __init__(
        self,
        session_id: int,
        video_codec: str,
        on_state: StateListener,
        on_idle: Callable[[int], None] | None = None,
        resource_prefix: str = "",
        on_viewer_left: Callable[[int, Viewer], None] | None = None,
        behind_bytes: int = 0,
    ) -> None:
        self.session_id = session_id
        self.resource_prefix = resource_prefix
        self._on_viewer_left = on_viewer_left
        self.video_codec = video_codec
        self.video_profile = "42e01f"
        self._on_state = on_state
        self._on_idle = on_idle
        self.state = "waiting"
        self.ingest: Ingest | None = None
        self.viewers: dict[str, Viewer] = {}
        self._epoch = 0
        self.keyframes = KeyframeRequests()
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self.broadcasters_seen = 0
        self.packets_out = {"audio": 0, "video": 0}
        self.bytes_out = {"audio": 0, "video": 0}
        self.viewers_served = 0
        # Counters of viewers that have left, so totals only ever grow.
        self.left = {"nacks": 0, "retransmitted": 0, "plis": 0}
        self.taps: list[MediaTap] = []
        self.overload = OverloadGuard(behind_bytes)
        self._shedding: set[str] = set()  # viewers being closed for it
        self.taken_over: dict[str, float] = {}  # resource id -> when (monotonic), oldest first
        # The source that ended last while none replaced it: a new broadcaster displaces it as
        # it would a live one (a device cut off for long must not take the session back).
        self._last_source: str | None = None

    # -- broadcaster --------------------------------------------------------------------------

    async def add_broadcaster(
        self, offer_sdp: str, reconnect: str | None = None
    ) -> tuple[str, str]:
        """Accept a broadcaster; a live one is replaced (that is how broadcasters reconnect).

        ``reconnect``: the resource of the connection this client had before. If another
        connection took that one over, this is refused (``taken_over``): the client was
        replaced, not cut off, and must not take the session back by itself."""
        if self.state == "ended":
            raise Conflict("the session has ended", code="session_ended")
        if reconnect is not None and reconnect in self.taken_over:
            ago = time.monotonic() - self.taken_over[reconnect]
            raise Conflict(
                f"another broadcaster connection took session {self.session_id} over "
                f"{ago:.0f} s ago; connect again without reconnect= to take it back",
                code="taken_over",
            )
        ingest = Ingest(
            resource_id=secrets.token_urlsafe(12),
            session_codec=self.video_codec,
            epoch=self.next_epoch(),
            sink=self._forward,
            on_gone=self._broadcaster_gone,
            on_report=self._sender_report,
        )
        try:
            answer = await ingest.answer(offer_sdp)
        except BaseException:
            await ingest.close()
            raise
        displaced = self.ingest.resource_id if self.ingest is not None else self._last_source
        await self.take_source(ingest)
        self._last_source = None
        if displaced is not None and displaced != reconnect:
            self.taken_over[displaced] = time.monotonic()
            while len(self.taken_over) > TAKEN_OVER_KEPT:
                del self.taken_over[next(iter(self.taken_over))]
        return ingest.resource_id, answer

    def next_epoch(self) -> int:
        """A number for the next source connection (it keeps sources' SSRCs apart)."""
        self._epoch += 1
        return self._epoch

    async def take_source(self, ingest: Ingest) -> None:
        """Make a negotiated source (a broadcaster, or an edge's upstream) the one viewers get;
        the previous one is closed."""
        previous, self.ingest = self.ingest, ingest
        self.broadcasters_seen += 1
        if ingest.profile:
            # Viewers from now on are answered with the broadcaster's H.264 profile.
            self.video_profile = ingest.profile
        if previous is not None:
            log.info("session %s: broadcaster replaced", self.session_id)
            await previous.close()
        now = time.monotonic()
        for viewer in self.viewers.values():
            viewer.expect_keyframe(now)
        self._set_state("live")
        self._ensure_watch()

    async def forward(self, packet: SourcePacket) -> None:
        """Where a source hands its packets (``Ingest``'s sink)."""
        await self._forward(packet)

    def source_gone(self, ingest: Ingest) -> None:
        """What a source calls when its connection has ended."""
        self._broadcaster_gone(ingest)

    async def remove_broadcaster(self, resource_id: str) -> bool:
        if self.ingest is None or self.ingest.resource_id != resource_id:
            return False
        await self.ingest.close()
        return True

    def _broadcaster_gone(self, ingest: Ingest) -> None:
        self._tell_taps("broadcaster_gone", ingest.epoch)
        if ingest is self.ingest:
            self.ingest = None
            self._last_source = ingest.resource_id
            if self.state == "live":
                self._set_state("paused")

    # -- viewers ------------------------------------------------------------------------------

    async def add_viewer(self, offer_sdp: str, kind: str, subject: str) -> tuple[str, str]:
        if self.state == "ended":
            raise Conflict("the session has ended", code="session_ended")
        viewer = Viewer(
            resource_id=self.resource_prefix + secrets.token_urlsafe(12),
            kind=kind,
            subject=subject,
            session_codec=self.video_codec,
            video_profile=self.video_profile,
            on_keyframe_request=self._viewer_wants_keyframe,
            on_gone=self._viewer_gone,
        )
        try:
            answer = await viewer.answer(offer_sdp)
        except BaseException:
            await viewer.close()
            raise
        self.viewers[viewer.resource_id] = viewer
        self.viewers_served += 1
        self._ensure_watch()
        return viewer.resource_id, answer

    async def remove_viewer(self, resource_id: str) -> bool:
        viewer = self.viewers.get(resource_id)
        if viewer is None:
            return False
        await viewer.close()
        return True

    def _drop(self, viewer: Viewer) -> None:
        task = asyncio.ensure_future(viewer.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _viewer_gone(self, viewer: Viewer) -> None:
        self._shedding.discard(viewer.resource_id)
        if self.viewers.pop(viewer.resource_id, None) is not None:
            self.left["nacks"] += viewer.nacks_received
            self.left["retransmitted"] += viewer.retransmitted
            self.left["plis"] += viewer.plis_received
            if self._on_viewer_left is not None:
                self._on_viewer_left(self.session_id, viewer)

    def feedback_totals(self) -> dict[str, int]:
        """NACKs, retransmissions and PLIs from viewers, since the hub began."""
        totals = dict(self.left)
        for v in self.viewers.values():
            totals["nacks"] += v.nacks_received
            totals["retransmitted"] += v.retransmitted
            totals["plis"] += v.plis_received
        return totals

    def _viewer_wants_keyframe(self, viewer: Viewer) -> None:
        if viewer.waiting_for_keyframe:
            viewer.keyframe_asked_at = time.monotonic()
        self.request_keyframe()

    # -- media --------------------------------------------------------------------------------

    def _tell_taps(self, what: str, *args: Any) -> None:
        for tap in self.taps:
            try:
                getattr(tap, what)(*args)
            except Exception:
                # A failing tap (the recorder) must never cost the viewers their broadcast.
                log.exception("session %s: tap %r failed on %s", self.session_id, tap, what)

    def _sender_report(self, report: SenderReport) -> None:
        if self.taps:
            self._tell_taps("sender_report", report)

    async def _forward(self, packet: SourcePacket) -> None:
        if self.taps:
            self._tell_taps("media", packet)
        kind = packet.kind
        sent = 0
        now = packet.arrived_at
        for viewer in list(self.viewers.values()):
            if viewer.ready:
                try:
                    done = viewer.send_now(packet, now)
                    if done is None:  # not on the wire yet (or any more): aiortc's own path
                        done = await viewer.send(packet, now)
                    sent += done
                except Exception:
                    # One broken viewer must never stall the broadcast for the others.
                    log.exception("session %s: dropping viewer %s", self.session_id, viewer)
                    self._drop(viewer)
        self.packets_out[kind] += sent
        self.bytes_out[kind] += sent * len(packet.payload)

    def request_keyframe(self) -> None:
        """Ask the broadcaster for a keyframe, at most once per interval however many ask."""
        loop = asyncio.get_running_loop()
        due = self.keyframes.request(loop.time())
        if due is None:
            return
        self._keyframe_timer = loop.call_at(due, self._send_keyframe_request)

    def _send_keyframe_request(self) -> None:
        self._keyframe_timer = None
        self.keyframes.mark_sent(asyncio.get_running_loop().time())
        if self.ingest is not None:
            self.ingest.request_keyframe()

    def _ensure_watch(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        """Every half second until nobody is connected: see ``_watch_tick``."""
        while self.state != "ended":
            await asyncio.sleep(WATCH_INTERVAL_S)
            if not self._watch_tick(time.monotonic()):
                self._watch = None
                if self._on_idle is not None:
                    self._on_idle(self.session_id)
                return

    def _watch_tick(self, now: float) -> bool:
        """Pause on a silent broadcaster, resume when it speaks again; re-ask for keyframes that
        have not come; feed sender reports. False once nobody is connected. (A method of its
        own, so no viewer stays referenced from the sleeping loop.)"""
        for viewer in self.viewers.values():
            viewer.sync_sender_reports(now)
        ingest = self.ingest
        queue = None if ingest is None else ingest.receive_queue()
        staying = len(self.viewers) - len(self._shedding)
        shed = self.overload.observe(queue, now, staying)  # no source: not behind
        if shed:
            self._shed(shed)
        if ingest is not None:
            ingest.sample(now)
            last = ingest.last_packet_at or ingest.connected_at
            if last is not None and now - last > SILENCE_S and self.state == "live":
                self._set_state("paused")
            elif (
                ingest.last_packet_at and now - ingest.last_packet_at < 1 and self.state == "paused"
            ):
                self._set_state("live")
            waiting = [
                v
                for v in self.viewers.values()
                if v.ready
                and v.waiting_for_keyframe
                and (v.keyframe_asked_at is None or now - v.keyframe_asked_at > KEYFRAME_RETRY_S)
            ]
            for v in waiting:
                v.keyframe_asked_at = now
            if waiting:
                self.request_keyframe()
        return ingest is not None or bool(self.viewers)

    def _shed(self, count: int) -> None:
        """Close the ``count`` newest viewers (edges last: each serves many); they reconnect
        and are refused while this node is behind, or land on another worker or node."""
        staying = (v for v in self.viewers.values() if v.resource_id not in self._shedding)
        chosen = newest_first(staying)[:count]
        log.warning(
            "session %s: %s KB of its source queued (the oldest for %.2f s), behind live: "
            "closing %d newest viewers",
            self.session_id,
            (self.overload.backlog or 0) // 1024,
            self.overload.waited_s or 0.0,
            count,
        )
        for viewer in chosen:
            self._shedding.add(viewer.resource_id)  # until it is gone: never chosen twice
            self._drop(viewer)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("session %s: %s -> %s", self.session_id, self.state, state)
            self.state = state
            self._on_state(self.session_id, state)

    @property
    def idle(self) -> bool:
        """Nobody connected and nothing pending: the hub can be forgotten (the store keeps the
        session's state)."""
        return (
            self.ingest is None and not self.viewers and (self._watch is None or self._watch.done())
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def end(self) -> None:
        """End the session: every peer is closed, nobody may join again."""
        self._set_state("ended")
        await self.close()

    async def close(self) -> None:
        if self.taps:
            self._tell_taps("relay_closed")
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        peers: list[Any] = list(self.viewers.values())
        if self.ingest is not None:
            peers.append(self.ingest)
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        """What the stats endpoint and the dashboard show."""
        ingest = self.ingest
        by_kind: dict[str, int] = {}
        for v in self.viewers.values():
            by_kind[v.kind] = by_kind.get(v.kind, 0) + 1
        return {
            "session_id": self.session_id,
            "state": self.state,
            "video_codec": self.video_codec,
            "broadcaster": None if ingest is None else ingest.stats(),
            "broadcasters_seen": self.broadcasters_seen,
            "viewers": {"total": len(self.viewers), "by_kind": by_kind},
            "viewers_served": self.viewers_served,
            "source_backlog_bytes": self.overload.backlog,
            "source_waited_s": self.overload.waited_s,
            "behind_live": self.overload.behind,
            "viewers_shed": self.overload.shed,
            "viewers_refused_behind": self.overload.refused,
            "packets_out": dict(self.packets_out),
            "bytes_out": dict(self.bytes_out),
            "keyframe_requests": {"asked": self.keyframes.requested, "sent": self.keyframes.sent},
            "viewer_feedback": self.feedback_totals(),
            "viewer_details": [v.stats() for v in self.viewers.values()],
        }
