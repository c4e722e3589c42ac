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
