"""Codec policy: a session fixes its video codec, audio is Opus, nothing is transcoded.

Offers are checked before any peer is built, so that a broadcaster or viewer that cannot send or
receive the session's codec gets a clear 400 instead of a failed negotiation.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.exceptions import OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.sdp import SessionDescription

from attendance.errors import InvalidInput

MAX_SDP_BYTES = 32 * 1024
# H.264 profiles we can negotiate, best first: constrained baseline (every browser and phone
# decodes it in hardware), then baseline.
H264_PROFILES = ("42e01f", "42001f")
VIDEO_NAMES = {"vp8": "VP8", "h264": "H264"}


def capabilities(kind: str) -> list[RTCRtpCodecCapability]:
    """Every codec aiortc can negotiate for ``kind``."""
    found = RTCRtpReceiver.getCapabilities(kind)
    return [] if found is None else list(found.codecs)


def parse_offer(text: str) -> SessionDescription:
    """Parse an SDP offer, raising ``InvalidInput`` that says why it cannot be used."""
    if not text.strip():
        raise InvalidInput("the SDP offer is empty", code="bad_sdp")
    if not text.lstrip().startswith("v=0"):
        raise InvalidInput("the body is not an SDP offer (it must start with v=0)", code="bad_sdp")
    try:
        description = SessionDescription.parse(text)
    except Exception as exc:  # aiortc's parser raises plain ValueError/KeyError/IndexError
        raise InvalidInput(f"the SDP offer cannot be parsed: {exc!r}", code="bad_sdp") from None
    if not description.media:
        raise InvalidInput("the SDP offer has no media sections", code="bad_sdp")
    for index, media in enumerate(description.media):
        if media.ice is None or not media.ice.usernameFragment or not media.ice.password:
            raise InvalidInput(
                f"media section {index} has no ICE credentials (a=ice-ufrag, a=ice-pwd)",
                code="bad_sdp",
            )
        if media.dtls is None or not media.dtls.fingerprints:
            raise InvalidInput(
                f"media section {index} has no DTLS fingerprint and setup role "
                "(a=fingerprint, a=setup)",
                code="bad_sdp",
            )
    if not any(media.ice_candidates for media in description.media):
        raise InvalidInput(
            "the SDP offer has no ICE candidates: gather them before sending it "
            "(trickle ICE is not supported)",
            code="bad_sdp",
        )
    return description


async def negotiate(pc: RTCPeerConnection, offer_sdp: str) -> str:
    """Apply an offer and make the answer; aiortc's own failures become a 400 ``bad_sdp``."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except (ValueError, AttributeError, KeyError, IndexError, TypeError, OperationError) as exc:
        raise InvalidInput(f"the SDP offer cannot be used: {exc}", code="bad_sdp") from None
    return str(pc.localDescription.sdp)


async def apply_answer(pc: RTCPeerConnection, answer_sdp: str) -> None:
    """Apply the far end's answer to our offer; an unusable one is a 400-like ``bad_sdp``."""
    try:
        await pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
    except (ValueError, AttributeError, KeyError, IndexError, TypeError, OperationError) as exc:
        raise InvalidInput(f"the SDP answer cannot be used: {exc}", code="bad_sdp") from None


def h264_profile(parameters: Mapping[str, object]) -> str:
    return str(parameters.get("profile-level-id", "42e01f")).lower()


def _offered(description: SessionDescription, kind: str) -> list[tuple[str, dict[str, object]]]:
    return [
        (codec.name.upper(), dict(codec.parameters))
        for media in description.media
        if media.kind == kind
        for codec in media.rtp.codecs
    ]


def choose_video(
    description: SessionDescription,
    session_codec: str,
    who: str,
    profiles: tuple[str, ...] = H264_PROFILES,
) -> str | None:
    """The profile to use (H.264) or '' (VP8) when the offer can carry the session's video;
    raise ``InvalidInput`` naming the codec otherwise. None: the offer has no video at all.
    ``profiles`` are the acceptable H.264 profiles, best first (viewers: the broadcaster's)."""
    offered = _offered(description, "video")
    if not any(m.kind == "video" for m in description.media):
        return None
    name = VIDEO_NAMES[session_codec]
    if name == "VP8":
        if any(n == "VP8" for n, _ in offered):
            return ""
    else:
        offered_profiles = {
            h264_profile(p)[:4]: h264_profile(p)
            for n, p in offered
            if n == "H264" and str(p.get("packetization-mode", "0")) == "1"
        }
        for wanted in profiles:
            if wanted[:4] in offered_profiles:
                return wanted
    names = sorted({n for n, _ in offered if n not in ("RTX", "RED", "ULPFEC", "FLEXFEC-03")})
    detail = (
        f"this session's video is {name}"
        + (f" ({_describe_profiles(profiles)}, packetization-mode 1)" if name == "H264" else "")
        + f", which the {who} does not offer (offered: {', '.join(names) or 'none'})"
    )
    raise InvalidInput(detail, code="unsupported_codec")


def _describe_profiles(profiles: tuple[str, ...]) -> str:
    if profiles == H264_PROFILES:
        return "constrained baseline or baseline"
    return "profile-level-id " + " or ".join(profiles)


def check_audio(description: SessionDescription, who: str) -> bool:
    """True when the offer has Opus audio, False without audio; raise for audio without Opus."""
    if not any(m.kind == "audio" for m in description.media):
        return False
    if any(n == "OPUS" for n, _ in _offered(description, "audio")):
        return True
    raise InvalidInput(
        f"audio must be Opus, which the {who} does not offer", code="unsupported_codec"
    )


def video_preferences(session_codec: str, profile: str) -> list[RTCRtpCodecCapability]:
    """The one video codec a transceiver may negotiate (no RTX: retransmissions are plain)."""
    name = VIDEO_NAMES[session_codec]
    return [
        c
        for c in capabilities("video")
        if c.name.upper() == name and (name != "H264" or h264_profile(c.parameters) == profile)
    ]


def audio_preferences() -> list[RTCRtpCodecCapability]:
    return [c for c in capabilities("audio") if c.name.lower() == "opus"]


def prefer(transceiver: RTCRtpTransceiver, codecs: list[RTCRtpCodecCapability]) -> None:
    if not codecs:
        raise InvalidInput("no codec of this kind is available", code="unsupported_codec")
    transceiver.setCodecPreferences(codecs)
