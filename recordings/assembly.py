"""From RTP packets to whole encoded frames: reorder by sequence number, join a video frame's
packets (one RTP timestamp, up to the marker bit) and depayload them, one Opus packet per frame.

Pure: no I/O, no clock. A gap (a packet lost, or dropped because the writer fell behind) spoils
the frame it falls in, and the frame after it says so (``after_loss``), so the segment can wait
for the next keyframe instead of writing pictures that would decode as garbage.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from server.relay.packet import SourcePacket

# Packets held back waiting for a missing one before it counts as lost.
REORDER_WINDOW = 64
_SEQ_MOD = 0x1_0000
_TS_MOD = 0x1_0000_0000

_CODECS = {
    "vp8": RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96),
    "h264": RTCRtpCodecParameters(mimeType="video/H264", clockRate=90_000, payloadType=96),
    "opus": RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48_000, payloadType=111),
}


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded frame: ``timestamp`` is the RTP timestamp unwrapped past 2^32."""

    kind: str
    timestamp: int
    data: bytes
    keyframe: bool
    arrived_at: float  # of its first packet (monotonic seconds)
    after_loss: bool  # something before it was lost since the previous frame given out


class TimestampUnwrapper:
    """RTP timestamps (32 bits, wrapping) as a growing integer."""

    def __init__(self) -> None:
        self._last_raw: int | None = None
        self._last = 0

    def __call__(self, raw: int) -> int:
        if self._last_raw is None:
            self._last = raw
        else:
            step = (raw - self._last_raw) % _TS_MOD
            self._last += step - _TS_MOD if step >= _TS_MOD // 2 else step
        self._last_raw = raw
        return self._last


class TrackAssembler:
    """Frames of one track of one broadcaster connection. Feed ``push``; ``flush`` at the end."""

    def __init__(self, kind: str, codec: str) -> None:
        self.kind = kind
        self._codec = _CODECS[codec]
        self._held: dict[int, SourcePacket] = {}
        self._expected: int | None = None
        self._unwrap = TimestampUnwrapper()
        # The frame being joined.
        self._parts: list[SourcePacket] = []
        self._spoiled = False
        self._after_marker = True
        self._loss = False
        self.lost_packets = 0
        self.late_packets = 0

    def push(self, packet: SourcePacket) -> list[Frame]:
        if self._expected is None:
            self._expected = packet.seq
        ahead = (packet.seq - self._expected) % _SEQ_MOD
        if ahead >= _SEQ_MOD // 2 or packet.seq in self._held:
            self.late_packets += 1  # a repeat, or too late: its frame is already given up
            return []
        self._held[packet.seq] = packet
        frames: list[Frame] = []
        self._release(frames)
        while len(self._held) > REORDER_WINDOW:
            self._skip_gap()
            self._release(frames)
        return frames

    def flush(self) -> list[Frame]:
        """What can still be given out once no more packets will come."""
        frames: list[Frame] = []
        while self._held:
            self._skip_gap()
            self._release(frames)
        return frames

    def _skip_gap(self) -> None:
        assert self._expected is not None
        first = min(self._held, key=lambda s: (s - self._expected) % _SEQ_MOD)  # type: ignore[operator]
        self.lost_packets += (first - self._expected) % _SEQ_MOD
        self._expected = first
        self._spoiled = True
        self._loss = True

    def _release(self, out: list[Frame]) -> None:
        while self._expected is not None and self._expected in self._held:
            packet = self._held.pop(self._expected)
            self._expected = (self._expected + 1) % _SEQ_MOD
            frame = self._take(packet)
            if frame is not None:
                out.append(frame)

    def _take(self, packet: SourcePacket) -> Frame | None:
        if self.kind == "audio":
            return self._frame([packet])
        if self._parts and packet.timestamp != self._parts[0].timestamp:
            # The previous frame never saw its marker: its last packet was lost.
            self._parts = []
            self._spoiled = self._loss = True
        if not self._parts:
            # A frame is whole only if it starts right after the previous frame's marker, or
            # with the first packet of a keyframe (which is known to start its frame).
            if packet.keyframe_start:
                self._spoiled = False
            else:
                self._spoiled = self._spoiled or not self._after_marker
        self._parts.append(packet)
        self._after_marker = packet.marker
        if not packet.marker:
            return None
        parts, spoiled = self._parts, self._spoiled
        self._parts, self._spoiled = [], False
        if spoiled:
            self._loss = True
            return None
        return self._frame(parts)

    def _frame(self, parts: list[SourcePacket]) -> Frame:
        first = parts[0]
        data = b"".join(depayload(self._codec, p.payload) for p in parts)
        after_loss, self._loss = self._loss, False
        return Frame(
            kind=self.kind,
            timestamp=self._unwrap(first.timestamp),
            data=data,
            keyframe=self.kind == "audio" or any(p.keyframe_start for p in parts),
            arrived_at=first.arrived_at,
            after_loss=after_loss,
        )
