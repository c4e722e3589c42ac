"""The broadcaster's video sender, set up through aiortc's seams: which codecs it offers, where
the keyframe requests it receives go, and an encoder whose bitrate never passes a ceiling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from client.publisher import AiortcChanged
from client.sources import MediaSource


def video_preferences(source: MediaSource) -> list[RTCRtpCodecCapability]:
    """The video codecs to offer: the file's own when sent as it is, else both that aiortc
    encodes (the session picks one), each with RTX so lost packets can be resent."""
    wanted: set[tuple[str, str | None]]
    if source.passthrough == "vp8":
        wanted = {("video/vp8", None)}
    elif source.passthrough == "h264":
        wanted = {("video/h264", source.h264_profile)}
    else:
        wanted = {("video/h264", "42e01f"), ("video/vp8", None)}
    chosen = []
    for cap in RTCRtpSender.getCapabilities("video").codecs:
        name = cap.mimeType.lower()
        profile = cap.parameters.get("profile-level-id") if name == "video/h264" else None
        if name == "video/rtx" or (name, profile) in wanted:
            chosen.append(cap)
    return chosen


def hook_keyframe_requests(sender: RTCRtpSender, request: Callable[[], None]) -> None:
    """Send the PLI/FIR ``sender`` receives to ``request`` (aiortc only tells its encoder)."""
    if not callable(getattr(sender, "_send_keyframe", None)):
        raise AiortcChanged("RTCRtpSender._send_keyframe is gone: PLI would be ignored")
    sender._send_keyframe = request  # type: ignore[method-assign]


class CappedEncoder(Encoder):
    """aiortc's encoder for the negotiated codec, with ``--bitrate`` as ceiling: the server's
    bandwidth estimates (REMB) move it down and back up, never above the operator's choice.
    aiortc starts its encoders at 0.5-1 Mbps and clamps them (VP8 1.5 Mbps, H.264 3 Mbps)."""

    def __init__(self, inner: Encoder, ceiling: int) -> None:
        self._inner = inner
        self.ceiling = ceiling
        self.target_bitrate = ceiling

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        result: tuple[list[bytes], int] = self._inner.encode(frame, force_keyframe)
        return result

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        result: tuple[list[bytes], int] = self._inner.pack(packet)
        return result

    @property
    def target_bitrate(self) -> int:
        return int(getattr(self._inner, "target_bitrate", self.ceiling))

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        if hasattr(self._inner, "target_bitrate"):
            self._inner.target_bitrate = min(bitrate, self.ceiling)


def cap_encoder(transceiver: RTCRtpTransceiver, ceiling: int) -> CappedEncoder:
    """Give the sender its encoder now (it would make one at its first frame), capped."""
    sender = transceiver.sender
    codecs = getattr(transceiver, "_codecs", None)
    if not codecs or not hasattr(sender, "_RTCRtpSender__encoder"):
        raise AiortcChanged("RTCRtpTransceiver._codecs or RTCRtpSender.__encoder is gone")
    encoder = CappedEncoder(get_encoder(codecs[0]), ceiling)
    sender._RTCRtpSender__encoder = encoder
    return encoder
