"""Counting what a viewer receives from RTP headers and payload starts, without decoding.

``StreamCounter`` counts one media kind's packets, bytes, frames, keyframes and sequence gaps;
``install_counter`` puts one in place of an aiortc receiver's depacketiser and decoder while
keeping the receiver's RTCP statistics fed, so its receiver reports stay accurate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import StreamStatistics
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription

from client.publisher import CLOCK_RATES, AiortcChanged
from server.relay.keyframes import keyframe_start

_MAX_TRACKED_MISSING = 2048
COUNTS = (  # what StreamCounter counts, by attribute name
    "packets",
    "bytes",
    "frames",
    "keyframes",
    "expected",
    "lost",
    "recovered",
    "duplicates",
    "retransmissions",
    "unknown_payload_type",
    "ssrc_changes",
)


# --- reading RTP payloads -------------------------------------------------------------------


def is_keyframe_start(codec: str, payload: bytes) -> bool:
    """Whether this RTP payload begins a keyframe (reads at most a few header bytes): the
    relay's own rule (``server.relay.keyframes``), so both sides agree on what a start is."""
    return keyframe_start(codec, payload)


def payload_codecs(answer_sdp: str) -> dict[str, dict[int, str]]:
    """Payload type → lower-case codec name, per media kind, from an SDP answer."""
    description = SessionDescription.parse(answer_sdp)
    codecs: dict[str, dict[int, str]] = {"audio": {}, "video": {}}
    for media in description.media:
        if media.kind in codecs:
            for codec in media.rtp.codecs:
                if codec.payloadType is not None:
                    codecs[media.kind][codec.payloadType] = codec.name.lower()
    return codecs


# --- counting -------------------------------------------------------------------------------


class StreamCounter:
    """What one viewer received of one kind: counts only, from RTP headers and payload starts.

    Frames: video frames end at a packet with the marker bit (counted once per RTP timestamp);
    every audio packet is a frame. Loss: gaps in the sequence numbers, minus packets that arrive
    late or as RTX retransmissions.
    """

    def __init__(self, kind: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.codecs: dict[int, str] = {}
        self.packets = 0
        self.bytes = 0
        self.frames = 0
        self.keyframes = 0
        self.expected = 0
        self.lost = 0
        self.recovered = 0
        self.duplicates = 0
        self.retransmissions = 0
        self.unknown_payload_type = 0
        self.ssrc_changes = 0
        self.first_packet_at: float | None = None
        self.first_keyframe_at: float | None = None
        self.first_frame_keyframe: bool | None = None
        self._clock = clock
        self._ssrc: int | None = None
        self._last_seq = 0
        self._last_frame_ts: int | None = None
        self._last_key_ts: int | None = None
        self._missing: set[int] = set()

    def add(self, packet: RtpPacket) -> bool:
        """Count one packet; True if it is media (not RTX, known payload type)."""
        payload = packet.payload
        self.packets += 1
        self.bytes += len(payload)
        codec = self.codecs.get(packet.payload_type)
        if codec == "rtx":
            self.retransmissions += 1
            if len(payload) >= 2:
                self._late(((payload[0] << 8) | payload[1]), count_duplicate=False)
            return False
        if codec is None:
            self.unknown_payload_type += 1
            return False
        seq = packet.sequence_number
        if packet.ssrc != self._ssrc:
            if self._ssrc is not None:
                self.ssrc_changes += 1
            self._ssrc = packet.ssrc
            self._last_seq = (seq - 1) & 0xFFFF
            self._missing.clear()
        delta = (seq - self._last_seq) & 0xFFFF
        if delta == 0 or delta >= 0x8000:
            self._late(seq, count_duplicate=True)
            return True
        if delta > 1:
            self.lost += delta - 1
            if len(self._missing) + delta < _MAX_TRACKED_MISSING:
                self._missing.update((self._last_seq + i) & 0xFFFF for i in range(1, delta))
        self.expected += delta
        self._last_seq = seq
        if self.first_packet_at is None:
            self.first_packet_at = self._clock()
            if self.kind == "video":
                self.first_frame_keyframe = is_keyframe_start(codec, payload)
        if self.kind == "video":
            if packet.marker and packet.timestamp != self._last_frame_ts:
                self._last_frame_ts = packet.timestamp
                self.frames += 1
            if packet.timestamp != self._last_key_ts and is_keyframe_start(codec, payload):
                self._last_key_ts = packet.timestamp
                self.keyframes += 1
                if self.first_keyframe_at is None:
                    self.first_keyframe_at = self._clock()
        elif packet.timestamp != self._last_frame_ts:
            self._last_frame_ts = packet.timestamp
            self.frames += 1
        return True

    def _late(self, seq: int, *, count_duplicate: bool) -> None:
        if seq in self._missing:
            self._missing.discard(seq)
            self.lost -= 1
            self.recovered += 1
        elif count_duplicate:
            self.duplicates += 1

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTS}


def install_counter(receiver: RTCRtpReceiver, counter: StreamCounter) -> None:
    """Count this receiver's RTP instead of depacketising and decoding it.

    Must run after the transceiver exists and before media flows. The receiver's RTCP task
    keeps sending receiver reports because we feed its per-SSRC ``StreamStatistics``. Its idle
    decoder thread (started by ``receive()``, before the first packet can reach us) is stopped
    at the first packet, so a thousand viewers do not hold two thousand threads.
    """
    for name in ("_handle_rtp_packet", "_handle_disconnect"):
        if not callable(getattr(receiver, name, None)):
            raise AiortcChanged(f"RTCRtpReceiver.{name} is gone")
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    if not isinstance(streams, dict):
        raise AiortcChanged("RTCRtpReceiver.__remote_streams is gone: no receiver reports")
    clock_rate = CLOCK_RATES[counter.kind]
    decoder_running = True

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        nonlocal decoder_running
        if decoder_running:
            decoder_running = False
            receiver._handle_disconnect()  # ends the decoder thread (and the unused track)
        if counter.add(packet):
            stats = streams.get(packet.ssrc)
            if stats is None:
                stats = streams[packet.ssrc] = StreamStatistics(clock_rate)
            stats.add(packet)

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
