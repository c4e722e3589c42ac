"""The broadcaster's connection: a WHIP peer whose media is handed on, never decoded.

aiortc's receiver would reassemble frames and decode them in a thread. We keep what it does for
the link (receiver reports, NACKs and bandwidth estimates to the broadcaster) but stop its decoder
thread before any frame reaches it, and pass every decrypted RTP packet to the fan-out first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RtcpSrPacket, RtpPacket

from attendance.errors import InvalidInput
from server.relay import codecs
from server.relay.ice import rtc_configuration
from server.relay.keyframes import keyframe_start
from server.relay.meter import RateMeter
from server.relay.overload import SocketQueue, receive_queue
from server.relay.packet import SenderReport, SourcePacket

log = logging.getLogger(__name__)

# Bytes of socket receive buffer for a broadcaster (the kernel caps it at rmem_max).
INGEST_RCVBUF = 4 * 1024 * 1024

_small_buffer_told = False  # the warning about net.core.rmem_max, once per process

PacketSink = Callable[[SourcePacket], Awaitable[None]]


class Ingest:
    """One broadcaster connection. ``close()`` is idempotent."""

    def __init__(
        self,
        *,
        resource_id: str,
        session_codec: str,
        epoch: int,
        sink: PacketSink,
        on_gone: Callable[[Ingest], None],
        on_report: Callable[[SenderReport], None] | None = None,
    ) -> None:
        self.resource_id = resource_id
        self.session_codec = session_codec
        self.epoch = epoch
        self._sink = sink
        self._on_gone = on_gone
        self._on_report = on_report
        self.pc = RTCPeerConnection(rtc_configuration())
        self.video_receiver: RTCRtpReceiver | None = None
        self._keyframe_ts: int | None = None
        self.profile = ""  # the negotiated H.264 profile-level-id ('' for VP8)
        self.video_ssrc: int | None = None
        self.video_codec_name = codecs.VIDEO_NAMES[session_codec]
        self.connected_at: float | None = None
        self.last_packet_at: float | None = None
        self.packets_in = {"audio": 0, "video": 0}
        self.bytes_in = {"audio": 0, "video": 0}
        self.frames_in = 0
        self.keyframes_in = 0
        self.plis_sent = 0
        self.meter = RateMeter()
        self._closed = False
        self._tasks: set[asyncio.Future[None]] = set()
        self.pc.on("connectionstatechange", self._state_changed)

    async def answer(self, offer_sdp: str) -> str:
        """Negotiate from the broadcaster's offer; returns the SDP answer."""
        description = codecs.parse_offer(offer_sdp)
        profile = codecs.choose_video(description, self.session_codec, "broadcaster")
        has_audio = codecs.check_audio(description, "broadcaster")
        if profile is None:
            raise InvalidInput("the broadcaster offers no video", code="unsupported_codec")
        direction = next(m.direction for m in description.media if m.kind == "video")
        if direction not in (None, "sendonly", "sendrecv"):
            raise InvalidInput(
                f"the broadcaster's offer does not send video (it is {direction}): a WHIP "
                "offer is sendonly",
                code="bad_sdp",
            )
        # Transceivers made before the offer is applied are the ones it binds to, so their codec
        # preferences decide the answer.
        video = self.pc.addTransceiver("video", direction="recvonly")
        codecs.prefer(video, codecs.video_preferences(self.session_codec, profile))
        self._tap(video.receiver, "video")
        if has_audio:
            audio = self.pc.addTransceiver("audio", direction="recvonly")
            codecs.prefer(audio, codecs.audio_preferences())
            self._tap(audio.receiver, "audio")
        self.video_receiver = video.receiver
        self.profile = profile
        return await codecs.negotiate(self.pc, offer_sdp)

    def _tap(self, receiver: RTCRtpReceiver, kind: str) -> None:
        original_receive = receiver.receive
        original_handle = receiver._handle_rtp_packet
        is_video = kind == "video"
        codec_name = self.video_codec_name

        async def receive(parameters: Any) -> None:
            await original_receive(parameters)
            # The stock receiver starts a decoder thread here; the relay never decodes.
            receiver._RTCRtpReceiver__stop_decoder()  # type: ignore[attr-defined]

        async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
            now = time.monotonic()
            self.last_packet_at = now
            self.packets_in[kind] += 1
            self.bytes_in[kind] += len(packet.payload)
            # One start per keyframe: an SPS packet and the IDR slice after it share a timestamp.
            key = (
                is_video
                and packet.timestamp != self._keyframe_ts
                and keyframe_start(codec_name, packet.payload)
            )
            if key:
                self._keyframe_ts = packet.timestamp
            if is_video:
                self.video_ssrc = packet.ssrc
                if packet.marker:
                    self.frames_in += 1
                if key:
                    self.keyframes_in += 1
            await self._sink(
                SourcePacket(
                    kind,
                    self.epoch * 0x1_0000_0000 + packet.ssrc,
                    packet.sequence_number,
                    packet.timestamp,
                    bool(packet.marker),
                    packet.payload,
                    key,
                    now,
                )
            )
            # Link upkeep (receiver reports, NACKs, bandwidth estimate); no decoder runs.
            await original_handle(packet, arrival_time_ms)

        receiver.receive = receive  # type: ignore[method-assign]
        receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
        if self._on_report is not None:
            self._tap_reports(receiver, kind, self._on_report)

    def _tap_reports(
        self, receiver: RTCRtpReceiver, kind: str, on_report: Callable[[SenderReport], None]
    ) -> None:
        """Hand the source's sender reports on (the recorder lines audio up with video by
        them), then let aiortc's receiver see them as usual."""
        original = receiver._handle_rtcp_packet

        async def handle_rtcp_packet(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                on_report(
                    SenderReport(
                        kind,
                        self.epoch * 0x1_0000_0000 + packet.ssrc,
                        info.ntp_timestamp / 0x1_0000_0000,
                        info.rtp_timestamp,
                        info.packet_count,
                    )
                )
            await original(packet)

        receiver._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]

    def sample(self, now: float) -> None:
        self.meter.sample(
            now,
            bytes=self.bytes_in["audio"] + self.bytes_in["video"],
            frames=self.frames_in,
        )

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "resource": self.resource_id,
            "connection": self.pc.connectionState,
            "video_codec": self.video_codec_name,
            "connected_s": None if self.connected_at is None else round(now - self.connected_at, 1),
            "idle_s": None if self.last_packet_at is None else round(now - self.last_packet_at, 1),
            "bitrate_in_bps": round(self.meter.rate("bytes") * 8),
            "frame_rate_in": round(self.meter.rate("frames"), 1),
            "packets_in": dict(self.packets_in),
            "bytes_in": dict(self.bytes_in),
            "frames_in": self.frames_in,
            "keyframes_in": self.keyframes_in,
            "plis_sent": self.plis_sent,
        }

    def request_keyframe(self) -> bool:
        """Send a PLI to the broadcaster; False while no video has arrived to address it to."""
        if self.video_receiver is None or self.video_ssrc is None or self._closed:
            return False
        self.plis_sent += 1
        task = asyncio.ensure_future(self.video_receiver._send_rtcp_pli(self.video_ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _state_changed(self) -> None:
        state = self.pc.connectionState
        log.info("broadcaster %s connection %s", self.resource_id, state)
        if state == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self._enlarge_receive_buffers()
        elif state in ("failed", "closed"):
            self._on_gone(self)
            if state == "failed":
                await self.close()

    def _enlarge_receive_buffers(self) -> None:
        """The whole fan-out of a packet runs before the next is read: a deep socket buffer
        rides out those bursts instead of dropping the broadcaster's packets for everyone."""
        global _small_buffer_told
        for sock in self._sockets():
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, INGEST_RCVBUF)
                got = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                if got < INGEST_RCVBUF and not _small_buffer_told:
                    _small_buffer_told = True
                    log.warning(
                        "a source's receive buffer is capped at %d KB by net.core.rmem_max: "
                        "a busy relay drops its packets sooner, and is behind live at a "
                        "quarter of it (sysctl -w net.core.rmem_max=%d lifts the cap)",
                        got // 1024,
                        INGEST_RCVBUF,
                    )

    def receive_queue(self) -> SocketQueue | None:
        """The deepest receive queue of this connection's sockets; None if unknown."""
        queues = [q for q in map(receive_queue, self._sockets()) if q is not None]
        return max(queues) if queues else None

    def _sockets(self) -> list[socket.socket]:
        """The ICE sockets of this connection (one transport when bundled, as peers do)."""
        found: dict[int, socket.socket] = {}
        for transceiver in self.pc.getTransceivers():
            ice = transceiver.receiver.transport.transport
            for protocol in getattr(ice._connection, "_protocols", []):
                sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
                if sock is not None:
                    found[sock.fileno()] = sock
        return list(found.values())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.pc.close()
        self._on_gone(self)
