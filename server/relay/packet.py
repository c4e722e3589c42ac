"""A source RTP packet as the fan-out shares it between all viewers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class SourcePacket:
    """Parsed once per broadcaster packet; viewers only write their own 12-byte header."""

    kind: str  # "audio" | "video"
    epoch: int  # changes with each broadcaster connection or source SSRC
    seq: int
    timestamp: int
    marker: bool
    payload: bytes
    keyframe_start: bool
    arrived_at: float


@dataclass(slots=True, frozen=True)
class SenderReport:
    """An RTCP sender report of the source: its sender's clock at one of its RTP timestamps."""

    kind: str  # "audio" | "video"
    epoch: int  # as SourcePacket.epoch: connection << 32 | SSRC
    ntp_s: float  # the sender's wall clock, seconds since 1900 (0: the sender has no clock yet)
    rtp_timestamp: int
    packets: int  # the sender's packet count so far
