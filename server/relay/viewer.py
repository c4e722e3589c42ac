"""A viewer's connection: a WHEP peer fed with rewritten copies of the broadcaster's packets.

aiortc's sender would encode frames from a track. Our senders get a track that never yields, so
their encoding loop waits forever; we write each packet straight onto the viewer's socket,
encrypted with its DTLS transport's SRTP session (``Wire``; aiortc's own path while that is not
usable), and answer the viewer's RTCP ourselves: NACKs from a short history, PLI/FIR passed
upstream through the fan-out, receiver reports kept as loss statistics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender
from aiortc import clock as rtc_clock
from aiortc.rtp import (
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
)

from attendance.errors import InvalidInput
from server.relay import codecs
from server.relay.ice import rtc_configuration
from server.relay.packet import SourcePacket
from server.relay.rewrite import OutboundStream, one_byte_extensions
from server.relay.wire import Wire

log = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
HISTORY = {"video": 512, "audio": 64}  # packets kept per viewer for NACKs (shared payloads)
CLOCK_RATES = {"video": 90000, "audio": 48000}


class SilentTrack(MediaStreamTrack):
    """A track whose ``recv`` never returns: it parks aiortc's sender loop for good."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        return await self._never

    def stop(self) -> None:
        super().stop()
        self._never.cancel()


class Viewer:
    """One WHEP viewer. ``close()`` is idempotent."""

    def __init__(
        self,
        *,
        resource_id: str,
        kind: str,  # viewer kind for statistics: "venue", "member", "viewer"
        subject: str,
        session_codec: str,
        video_profile: str,
        on_keyframe_request: Callable[[Viewer], None],
        on_gone: Callable[[Viewer], None],
    ) -> None:
        self.resource_id = resource_id
        self.kind = kind
        self.subject = subject
        self.session_codec = session_codec
        self.video_profile = video_profile
        self._on_keyframe_request = on_keyframe_request
        self._on_gone = on_gone
        self.pc = RTCPeerConnection(rtc_configuration())
        self.streams: dict[str, OutboundStream] = {}
        self._senders: dict[str, RTCRtpSender] = {}
        # Per kind, what NACKs may ask for again: our header and the shared payload, slot
        # ``seq % HISTORY``. Two lists of bytes, not a tuple per packet: bytes are not tracked
        # by Python's cycle collector, so a viewer adds no collectable objects per packet
        # (with tuples, hundreds of viewers made every full collection take 0.4-0.8 s).
        self._history: dict[str, tuple[list[bytes | None], list[bytes | None]]] = {}
        self.waiting_for_keyframe = True
        self.keyframe_asked_at: float | None = None
        self.created_at = time.monotonic()
        self.first_keyframe_at: float | None = None
        self.nacks_received = 0
        self.retransmitted = 0
        self.plis_received = 0
        self.fraction_lost = 0.0
        self.packets_lost = 0
        self.jitter = 0
        self._send_rtp: dict[str, Callable[[bytes], Awaitable[None]]] = {}
        self._wires: dict[str, Wire] = {}  # per kind: the same one for both under BUNDLE
        self.ready = False  # connected and not closed: media may be sent
        self._closed = False
        self.pc.on("connectionstatechange", self._state_changed)

    async def answer(self, offer_sdp: str) -> str:
        description = codecs.parse_offer(offer_sdp)
        profile = codecs.choose_video(
            description, self.session_codec, "viewer", (self.video_profile,)
        )
        has_audio = codecs.check_audio(description, "viewer")
        if profile is None and not has_audio:
            raise InvalidInput("the viewer offers neither video nor audio", code="bad_sdp")
        tracks = []
        if profile is not None:
            video = self.pc.addTransceiver("video", direction="sendonly")
            codecs.prefer(video, codecs.video_preferences(self.session_codec, profile))
            tracks.append(("video", video))
        if has_audio:
            audio = self.pc.addTransceiver("audio", direction="sendonly")
            codecs.prefer(audio, codecs.audio_preferences())
            tracks.append(("audio", audio))
        for kind, transceiver in tracks:
            transceiver.sender.replaceTrack(SilentTrack(kind))
            transceiver.sender._handle_rtcp_packet = self._rtcp_handler(kind)  # type: ignore[method-assign,assignment]
            self._senders[kind] = transceiver.sender
        answer = await codecs.negotiate(self.pc, offer_sdp)
        for kind, transceiver in tracks:
            codec = transceiver._codecs[0]
            assert codec.payloadType is not None
            mid_ext = [
                (ext.id, transceiver.mid.encode())
                for ext in transceiver._headerExtensions
                if ext.uri == MID_URI and transceiver.mid
            ]
            self.streams[kind] = OutboundStream(
                ssrc=transceiver.sender._ssrc,
                payload_type=codec.payloadType,
                clock_rate=codec.clockRate,
                seq=transceiver.sender._ssrc & 0x7FFF,
                timestamp=0,
                extensions=one_byte_extensions(mid_ext) if mid_ext else b"",
            )
            self._history[kind] = ([None] * HISTORY[kind], [None] * HISTORY[kind])
            # Bound once: the transport is fixed after negotiation (BUNDLE or not).
            dtls = transceiver.sender.transport
            self._send_rtp[kind] = dtls._send_rtp
            self._wires[kind] = next(
                (w for w in self._wires.values() if w.dtls is dtls), None
            ) or Wire(dtls)
        if "video" not in self.streams:
            self.waiting_for_keyframe = False
        return answer

    def send_now(self, packet: SourcePacket, now: float) -> bool | None:
        """Forward one source packet, rewritten for this viewer, in one synchronous call
        (``Wire``): True if sent, False if not (not for this viewer yet, or refused by the
        socket); None when only aiortc's own path can send now: then call ``send``."""
        wire = self._wires.get(packet.kind)
        if wire is None or not wire.usable():
            return None
        rewritten = self._rewrite(packet, now)
        if rewritten is None:
            return False
        stream, data = rewritten
        if not wire.send(data):
            return False
        stream.packets += 1
        stream.octets += len(packet.payload)
        return True

    async def send(self, packet: SourcePacket, now: float) -> bool:
        """Forward one source packet through aiortc's DTLS transport; False when not sent."""
        rewritten = self._rewrite(packet, now)
        if rewritten is None:
            return False
        stream, data = rewritten
        try:
            await self._send_rtp[packet.kind](data)
        except ConnectionError:
            return False
        stream.packets += 1
        stream.octets += len(packet.payload)
        return True

    def _rewrite(self, packet: SourcePacket, now: float) -> tuple[OutboundStream, bytes] | None:
        """This viewer's copy of ``packet`` (kept for NACKs), or None if it gets none."""
        stream = self.streams.get(packet.kind)
        if stream is None:
            return None
        if packet.kind == "video" and self.waiting_for_keyframe:
            if not packet.keyframe_start:
                return None
            self.waiting_for_keyframe = False
            if self.first_keyframe_at is None:
                self.first_keyframe_at = now
        if stream.epoch != packet.epoch:
            stream.rebase(packet.seq, packet.timestamp, now, packet.epoch)
        header, seq = stream.header(packet.seq, packet.timestamp, packet.marker, now)
        headers, payloads = self._history[packet.kind]
        slot = seq % HISTORY[packet.kind]
        headers[slot] = header
        payloads[slot] = packet.payload
        return stream, header + packet.payload

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        first_key = self.first_keyframe_at
        return {
            "resource": self.resource_id,
            "kind": self.kind,
            "subject": self.subject,
            "connection": self.pc.connectionState,
            "connected_s": round(now - self.created_at, 1),
            "waiting_for_keyframe": self.waiting_for_keyframe,
            "first_keyframe_ms": None
            if first_key is None
            else round((first_key - self.created_at) * 1000),
            "packets_out": {k: s.packets for k, s in self.streams.items()},
            "bytes_out": {k: s.octets for k, s in self.streams.items()},
            "nacks_received": self.nacks_received,
            "retransmitted": self.retransmitted,
            "plis_received": self.plis_received,
            "fraction_lost": round(self.fraction_lost, 4),
            "packets_lost": self.packets_lost,
            "jitter": self.jitter,
        }

    def expect_keyframe(self, now: float) -> None:
        """The source changed: send no video until its next keyframe."""
        if "video" in self.streams:
            self.waiting_for_keyframe = True
            self.keyframe_asked_at = now

    def sync_sender_reports(self, now: float) -> None:
        """Give the stock senders our counters and the (NTP, RTP) time of the last packet, so
        the sender reports they send (lip sync, viewers' stats) are right. Called a few times a
        second rather than per packet: reading the clock per packet per viewer costs."""
        ntp_now = rtc_clock.current_ntp_time()
        for kind, stream in self.streams.items():
            if stream.last_sent_at is None:
                continue
            sender = self._senders[kind]
            ntp = ntp_now - int((now - stream.last_sent_at) * (1 << 32))
            sender._RTCRtpSender__ntp_timestamp = ntp  # type: ignore[attr-defined]
            sender._RTCRtpSender__rtp_timestamp = stream.timestamp  # type: ignore[attr-defined]
            sender._RTCRtpSender__packet_count = stream.packets  # type: ignore[attr-defined]
            sender._RTCRtpSender__octet_count = stream.octets  # type: ignore[attr-defined]

    def _rtcp_handler(self, kind: str) -> Callable[[Any], Any]:
        async def handle(packet: Any) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                self.nacks_received += 1
                await self._retransmit(kind, packet.lost)
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (
                RTCP_PSFB_PLI,
                RTCP_PSFB_FIR,
            ):
                self.plis_received += 1
                self._on_keyframe_request(self)
            elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
                stream = self.streams.get(kind)
                for report in packet.reports:
                    if stream is not None and report.ssrc == stream.ssrc and kind == "video":
                        self.fraction_lost = report.fraction_lost / 256
                        self.packets_lost = report.packets_lost
                        self.jitter = report.jitter

        return handle

    async def _retransmit(self, kind: str, lost: list[int]) -> None:
        history = self._history.get(kind)
        stream = self.streams.get(kind)
        if not history or stream is None:
            return
        size = HISTORY[kind]
        headers, payloads = history
        for seq in lost:
            header, payload = headers[seq % size], payloads[seq % size]
            if header is None or payload is None:
                continue
            if int.from_bytes(header[2:4], "big") != seq:
                continue  # overwritten by a newer packet
            self.retransmitted += 1
            wire = self._wires.get(kind)
            if wire is not None and wire.usable():
                wire.send(header + payload)
                continue
            try:
                await self._send_rtp[kind](header + payload)
            except ConnectionError:
                return

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.debug("viewer %s connection %s", self.resource_id, state)
        self.ready = state == "connected" and not self._closed
        if state == "connected":
            self._on_keyframe_request(self)
        elif state in ("failed", "closed"):
            await self.close()

    def __repr__(self) -> str:
        return f"<Viewer {self.resource_id} {self.kind} {self.subject}>"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self._history.clear()
        await self.pc.close()
        self._on_gone(self)
