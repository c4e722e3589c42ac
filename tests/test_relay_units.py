"""The relay's pure parts on real inputs: keyframe detection on payloads packetised by aiortc from
frames PyAV encoded, per-viewer RTP rewriting, keyframe-request coalescing, rate metering, the
codec policy on offers aiortc generated, and token checks."""

from __future__ import annotations

import fractions
import gc
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import av
import jwt
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from av.video.frame import PictureType
from relay_support import ICE_ADDRESSES

from attendance.errors import AuthError, Forbidden, InvalidInput
from server import collector
from server.http_errors import status_for
from server.relay import codecs
from server.relay.feedback import KeyframeRequests
from server.relay.ice import advertise_addresses, rtc_configuration
from server.relay.keyframes import h264_keyframe_start, keyframe_start, vp8_keyframe_start
from server.relay.meter import RateMeter
from server.relay.rewrite import OutboundStream, one_byte_extensions
from server.tokens import VIEWER_ROLES, TokenRole, bearer, issue, verify

advertise_addresses(ICE_ADDRESSES)

# --- keyframe detection on real payloads --------------------------------------------------------


def encoded_frames(codec: str, count: int, *, threads: int = 1) -> list[tuple[bool, list[bytes]]]:
    """``count`` frames of noise (large: many RTP packets each), keyframe first and every 4th,
    encoded by PyAV and packetised by aiortc's own packetiser: (keyframe, payloads) per frame."""
    width, height = 640, 480
    context = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = fractions.Fraction(1, 30)
    context.bit_rate = 4_000_000
    context.gop_size = 4
    if codec == "vp8":
        context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    else:
        # Sliced threads give several IDR slices per keyframe, as OBS's zerolatency tune does.
        context.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "profile": "baseline",
            "x264-params": f"threads={threads}:sliced-threads={int(threads > 1)}:repeat-headers=1"
            ":bframes=0:scenecut=0",
        }
    rng = np.random.default_rng(7)
    packets: list[av.Packet] = []
    for i in range(count):
        image = rng.integers(0, 256, (height * 3 // 2, width), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = i
        frame.pict_type = PictureType.I if i % 4 == 0 else PictureType.NONE
        packets.extend(context.encode(frame))
    packets.extend(context.encode(None))
    packer = Vp8Encoder() if codec == "vp8" else H264Encoder()
    frames = []
    for i, packet in enumerate(packets):
        packet.pts = i * 3000
        packet.time_base = fractions.Fraction(1, 90000)
        payloads, _ = packer.pack(packet)
        frames.append((bool(packet.is_keyframe), payloads))
    return frames


@pytest.fixture(scope="module")
def vp8_frames() -> list[tuple[bool, list[bytes]]]:
    return encoded_frames("vp8", 6)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-slice", "two-slices"])
def h264_frames(request: pytest.FixtureRequest) -> list[tuple[bool, list[bytes]]]:
    return encoded_frames("h264", 6, threads=request.param)


def test_the_encoded_test_frames_are_what_the_tests_need(
    vp8_frames: list[tuple[bool, list[bytes]]], h264_frames: list[tuple[bool, list[bytes]]]
) -> None:
    for frames in (vp8_frames, h264_frames):
        assert [key for key, _ in frames] == [True, False, False, False, True, False]
        assert all(len(payloads) >= 5 for _, payloads in frames), "several packets per frame"


def test_vp8_only_the_first_packet_of_a_keyframe_starts_one(
    vp8_frames: list[tuple[bool, list[bytes]]],
) -> None:
    for key, payloads in vp8_frames:
        flags = [vp8_keyframe_start(p) for p in payloads]
        assert flags == [key] + [False] * (len(payloads) - 1)
        assert [keyframe_start("VP8", p) for p in payloads] == flags
        assert [keyframe_start("vp8", p) for p in payloads] == flags


def test_h264_a_keyframe_starts_with_its_first_packet_and_no_delta_packet_starts_one(
    h264_frames: list[tuple[bool, list[bytes]]],
) -> None:
    for key, payloads in h264_frames:
        flags = [h264_keyframe_start(p) for p in payloads]
        assert flags[0] is key
        if not key:
            assert flags == [False] * len(payloads)
        assert [keyframe_start("H264", p) for p in payloads] == flags


def _idr_slice_starts(payloads: list[bytes]) -> list[int]:
    """Indices of packets that begin an IDR slice (whole NAL, or FU-A with the S bit)."""
    starts = []
    for i, p in enumerate(payloads):
        nal_type = p[0] & 0x1F
        if nal_type == 5 or (nal_type == 28 and p[1] & 0x80 and p[1] & 0x1F == 5):
            starts.append(i)
    return starts


def test_h264_only_the_sps_and_the_first_idr_slice_start_a_keyframe(
    h264_frames: list[tuple[bool, list[bytes]]],
) -> None:
    """The packet with the SPS starts a keyframe, and so does its first IDR slice (for streams
    whose parameter sets are not repeated in-band); later slices of the same picture do not.
    The ingest keeps one start per picture by its RTP timestamp (tested end to end)."""
    for key, payloads in h264_frames:
        flags = [h264_keyframe_start(p) for p in payloads]
        if not key:
            assert flags == [False] * len(payloads)
            continue
        slices = _idr_slice_starts(payloads)
        assert slices, "a keyframe has IDR slices"
        assert payloads[0][0] & 0x1F == 24, "x264 sends SPS/PPS in a STAP-A first"
        assert flags == [i in (0, slices[0]) for i in range(len(payloads))]


@pytest.mark.parametrize(
    ("codec", "payload", "expected"),
    [
        ("VP8", b"", False),
        ("VP8", b"\x10", False),  # too short for a payload header
        ("VP8", b"\x10\x00", True),  # S=1, PID=0, P=0
        ("VP8", b"\x10\x01", False),  # P=1: a delta frame
        ("VP8", b"\x00\x00", False),  # S=0: not the start of a partition
        ("VP8", b"\x11\x00", False),  # partition 1
        ("VP8", b"\x90\x80", False),  # X, I, then the picture id is missing
        ("VP8", b"\x90\x80\x81\x02\x00", True),  # 15-bit picture id, then a keyframe
        ("VP8", b"\x90\xe0\x05\x07\x20\x00", True),  # I (7-bit), L, T: three bytes to skip
        ("H264", b"", False),
        ("H264", b"\x67\x42", True),  # SPS
        ("H264", b"\x68\xce", False),  # PPS alone
        ("H264", b"\x65\x88", True),  # IDR slice, first_mb_in_slice 0
        ("H264", b"\x65\x48", False),  # IDR slice further down the picture
        ("H264", b"\x41\x9a", False),  # non-IDR slice
        ("H264", b"\x7c\x85\x88", True),  # FU-A, start, IDR, first slice
        ("H264", b"\x7c\x85\x00", False),  # FU-A, start, IDR, a later slice
        ("H264", b"\x7c\x45\x00", False),  # FU-A, end, IDR
        ("H264", b"\x7c\x81\x00", False),  # FU-A, start, non-IDR
        ("H264", b"\x78\x00\x02\x68\xce\x00\x02\x67\x42", True),  # STAP-A: PPS, SPS
        ("H264", b"\x78\x00\x02\x68\xce\x00\x02\x41\x9a", False),  # STAP-A: PPS, slice
        ("H264", b"\x78\x00", False),  # STAP-A, truncated
        ("OPUS", b"\x10\x00", False),
    ],
)
def test_keyframe_start_on_crafted_payloads(codec: str, payload: bytes, expected: bool) -> None:
    assert keyframe_start(codec, payload) is expected


# --- RTP rewriting ------------------------------------------------------------------------------

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def make_stream(seq: int = 1000, timestamp: int = 5000, extensions: bytes = b"") -> OutboundStream:
    return OutboundStream(
        ssrc=0x11223344,
        payload_type=96,
        clock_rate=90000,
        seq=seq,
        timestamp=timestamp,
        extensions=extensions,
    )


def forward(
    stream: OutboundStream, source: list[tuple[str, int, int, float]]
) -> list[tuple[int, int]]:
    """Send (epoch, seq, timestamp, now) source packets as ``Viewer.send`` does; returns the
    (seq, timestamp) of every rewritten header."""
    out = []
    for epoch, seq, ts, now in source:
        if stream.epoch != epoch:
            stream.rebase(seq, ts, now, epoch)
        header, sent_seq = stream.header(seq, ts, False, now)
        fields = RtpPacket.parse(header)
        assert fields.sequence_number == sent_seq
        out.append((sent_seq, fields.timestamp))
    return out


def test_rewriting_across_a_broadcaster_change_keeps_one_continuous_stream() -> None:
    # Times are exact binary fractions, so that elapsed * 90 kHz is exact too.
    stream = make_stream()
    got = forward(
        stream,
        [
            ("a", 40000, 123456, 10.0),
            ("a", 40001, 123456, 10.0),
            ("a", 40002, 126456, 10.03125),
            ("a", 40003, 129456, 10.0625),
            ("a", 40006, 138456, 10.25),  # 40004-40005 lost: the gap stays
            ("a", 40005, 135456, 10.28125),  # ...and one arrives late (or is retransmitted)
            ("b", 7, 999, 10.5),  # a new broadcaster, 0.25 s after the newest packet sent
            ("b", 8, 999, 10.5),
            ("b", 9, 3999, 10.53125),
        ],
    )
    assert got == [
        (1001, 5000),  # right after what the stream had sent, at the same timestamp
        (1002, 5000),
        (1003, 8000),
        (1004, 11000),
        (1007, 20000),
        (1006, 17000),
        (1008, 20000 + 22500),  # last + 1; the timestamp advanced by 0.25 s at 90 kHz
        (1009, 42500),
        (1010, 45500),
    ]
    assert (stream.seq, stream.timestamp, stream.epoch) == (1010, 45500, "b")


def test_a_late_packet_does_not_move_what_the_next_epoch_continues_from() -> None:
    stream = make_stream(seq=200, timestamp=0)
    got = forward(
        stream,
        [
            ("a", 10, 900, 1.0),
            ("a", 12, 2700, 1.125),
            ("a", 11, 1800, 1.125),  # late: not the newest
            ("b", 500, 70, 1.125),  # at once: the timestamp still moves, by one tick
        ],
    )
    assert got == [(201, 0), (203, 1800), (202, 900), (204, 1801)]


def test_rewriting_wraps_sequence_numbers_and_timestamps() -> None:
    top = 2**32
    stream = make_stream(seq=65533, timestamp=top - 3000)
    got = forward(
        stream,
        [
            ("a", 65534, top - 1296, 0.0),
            ("a", 65535, 1704, 0.03125),  # the source timestamp wraps
            ("a", 0, 4704, 0.0625),  # the source sequence number wraps
            ("a", 1, 7704, 0.09375),
            ("a", 65535, 1704, 0.125),  # late, from before the wraps
            ("b", 3, 10, 1.09375),  # one second after the newest packet sent
        ],
    )
    assert got == [
        (65534, top - 3000),
        (65535, 0),
        (0, 3000),
        (1, 6000),
        (65535, 0),
        (2, 96000),
    ]
    assert (stream.seq, stream.timestamp) == (2, 96000)


def test_the_rewritten_header_bytes() -> None:
    mid = one_byte_extensions([(1, b"0")])
    stream = make_stream(extensions=mid)
    stream.rebase(40000, 123456, 1.0, "a")
    header, seq = stream.header(40000, 123456, True, 1.0)
    assert seq == 1001
    assert header == (
        bytes([0x90, 0x80 | 96])
        + (1001).to_bytes(2, "big")
        + (5000).to_bytes(4, "big")
        + bytes.fromhex("11223344")
        + b"\xbe\xde\x00\x01\x10\x30\x00\x00"
    )
    # aiortc reads it back, MID included.
    extensions = HeaderExtensionsMap()
    extensions.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=1, uri=MID_URI)])
    )
    packet = RtpPacket.parse(header + b"payload", extensions)
    assert (packet.marker, packet.payload_type, packet.sequence_number) == (1, 96, 1001)
    assert (packet.timestamp, packet.ssrc, packet.extensions.mid) == (5000, 0x11223344, "0")
    assert packet.payload == b"payload"

    plain = make_stream()
    plain.rebase(7, 8, 1.0, "a")
    header, _ = plain.header(7, 8, False, 1.0)
    assert header == b"\x80\x60" + (1001).to_bytes(2, "big") + (5000).to_bytes(4, "big") + (
        bytes.fromhex("11223344")
    )


@pytest.mark.parametrize(
    ("elements", "expected"),
    [
        ([], b"\xbe\xde\x00\x00"),
        ([(1, b"0")], b"\xbe\xde\x00\x01\x10\x30\x00\x00"),
        ([(3, b"ab"), (5, b"\x01\x02\x03\x04")], b"\xbe\xde\x00\x02\x31ab\x53\x01\x02\x03\x04"),
        ([(14, b"x" * 16)], b"\xbe\xde\x00\x05\xef" + b"x" * 16 + b"\x00\x00\x00"),
    ],
)
def test_one_byte_extensions(elements: list[tuple[int, bytes]], expected: bytes) -> None:
    assert one_byte_extensions(elements) == expected


# --- keyframe requests ----------------------------------------------------------------------


def test_keyframe_requests_are_coalesced_to_one_per_interval() -> None:
    requests = KeyframeRequests()
    decisions: list[tuple[str, float, float | None]] = []

    def ask(now: float) -> None:
        decisions.append(("ask", now, requests.request(now)))

    def sent(now: float) -> None:
        requests.mark_sent(now)
        decisions.append(("sent", now, None))

    ask(0.0)
    sent(0.0)
    ask(0.05)  # ten viewers joining together...
    for i in range(9):
        ask(0.06 + i / 100)
    sent(0.3)  # ...cost one more PLI, when the interval is over
    ask(0.35)
    sent(0.6)
    ask(0.95)  # long enough after: at once
    sent(0.95)
    ask(1.25)  # exactly one interval after: at once
    assert decisions == [
        ("ask", 0.0, 0.0),
        ("sent", 0.0, None),
        ("ask", 0.05, 0.3),
        *[("ask", 0.06 + i / 100, None) for i in range(9)],
        ("sent", 0.3, None),
        ("ask", 0.35, 0.6),
        ("sent", 0.6, None),
        ("ask", 0.95, 0.95),
        ("sent", 0.95, None),
        ("ask", 1.25, 1.25),
    ]
    assert (requests.requested, requests.sent) == (14, 4)


# --- rate meter --------------------------------------------------------------------------------


def test_rate_meter_over_a_sliding_window() -> None:
    meter = RateMeter(window=5.0)
    assert meter.rate("bytes") == 0.0
    rates = []
    for t, total in [
        (0, 0),
        (1, 100),
        (2, 200),
        (3, 300),
        (4, 400),
        (5, 500),
        (6, 1500),
        (7, 2500),
    ]:
        meter.sample(float(t), bytes=total, frames=t * 30)
        rates.append(meter.rate("bytes"))
    assert rates == [0.0, 100.0, 100.0, 100.0, 100.0, 100.0, 280.0, 460.0]
    assert meter.rate("frames") == 30.0
    assert meter.rate("unknown") == 0.0
    meter.sample(20.0, bytes=2500, frames=210)  # silence since t=7
    assert meter.rate("bytes") == 0.0
    assert meter.rate("frames") == 0.0

    same = RateMeter()
    same.sample(1.0, bytes=0)
    same.sample(1.0, bytes=10)
    assert same.rate("bytes") == 0.0


# --- codec policy on real offers ------------------------------------------------------------------


async def aiortc_offer(
    *, video: list[str] | None = None, audio: bool = True, video_kind: bool = True
) -> str:
    """An offer aiortc makes (recvonly), limited to some video codecs ("H264/42001f" names one
    profile) or without audio or video."""
    pc = RTCPeerConnection(rtc_configuration())
    try:
        if video_kind:
            transceiver = pc.addTransceiver("video", direction="recvonly")
            if video is not None:
                caps = transceiver.receiver.getCapabilities("video").codecs
                transceiver.setCodecPreferences(
                    [
                        c
                        for c in caps
                        if f"{c.name}/{c.parameters.get('profile-level-id', '')}" in video
                        or c.name in video
                    ]
                )
        if audio:
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def without_opus(sdp: str) -> str:
    """The offer with Opus removed from its audio section (other audio codecs stay)."""
    pt = re.search(r"a=rtpmap:(\d+) opus/", sdp, re.IGNORECASE)
    assert pt is not None
    number = pt.group(1)
    lines = []
    for line in sdp.splitlines():
        if line.startswith("m=audio"):
            parts = line.split(" ")
            line = " ".join(parts[:3] + [p for p in parts[3:] if p != number])
        elif re.match(rf"a=(rtpmap|fmtp|rtcp-fb):{number} ", line):
            continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def invalid(call: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(InvalidInput) as info:
        call(*args)
    assert status_for(info.value) == 400
    return info.value.code, info.value.detail


async def test_codec_choice_on_aiortcs_default_offer() -> None:
    offer = codecs.parse_offer(await aiortc_offer())
    assert codecs.choose_video(offer, "vp8", "viewer") == ""
    assert codecs.choose_video(offer, "h264", "viewer") == "42e01f"
    assert codecs.check_audio(offer, "viewer") is True


async def test_codec_choice_on_single_codec_offers() -> None:
    vp8 = codecs.parse_offer(await aiortc_offer(video=["VP8"]))
    h264 = codecs.parse_offer(await aiortc_offer(video=["H264"]))
    baseline = codecs.parse_offer(await aiortc_offer(video=["H264/42001f"]))
    assert codecs.choose_video(vp8, "vp8", "viewer") == ""
    assert codecs.choose_video(h264, "h264", "broadcaster") == "42e01f"
    assert codecs.choose_video(baseline, "h264", "broadcaster") == "42001f"
    assert invalid(codecs.choose_video, vp8, "h264", "viewer") == (
        "unsupported_codec",
        "this session's video is H264 (constrained baseline or baseline, packetization-mode 1), "
        "which the viewer does not offer (offered: VP8)",
    )
    assert invalid(codecs.choose_video, h264, "vp8", "broadcaster") == (
        "unsupported_codec",
        "this session's video is VP8, which the broadcaster does not offer (offered: H264)",
    )
    mode0 = (await aiortc_offer(video=["H264"])).replace(
        "packetization-mode=1", "packetization-mode=0"
    )
    assert invalid(codecs.choose_video, codecs.parse_offer(mode0), "h264", "broadcaster") == (
        "unsupported_codec",
        "this session's video is H264 (constrained baseline or baseline, packetization-mode 1), "
        "which the broadcaster does not offer (offered: H264)",
    )


async def test_audio_must_be_opus() -> None:
    audio_only = codecs.parse_offer(await aiortc_offer(video_kind=False))
    assert codecs.choose_video(audio_only, "h264", "viewer") is None
    assert codecs.check_audio(audio_only, "viewer") is True
    video_only = codecs.parse_offer(await aiortc_offer(audio=False))
    assert codecs.check_audio(video_only, "viewer") is False
    no_opus = codecs.parse_offer(without_opus(await aiortc_offer()))
    assert [c.name for m in no_opus.media if m.kind == "audio" for c in m.rtp.codecs] == [
        "G722",
        "PCMU",
        "PCMA",
    ]
    assert invalid(codecs.check_audio, no_opus, "broadcaster") == (
        "unsupported_codec",
        "audio must be Opus, which the broadcaster does not offer",
    )


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("", "the SDP offer is empty"),
        ("  \r\n", "the SDP offer is empty"),
        ("hello", "the body is not an SDP offer (it must start with v=0)"),
        (
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
            "the SDP offer has no media sections",
        ),
        ("v=0\r\nm=video\r\n", "the SDP offer cannot be parsed: AssertionError()"),
        (
            "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\n",
            "the SDP offer cannot be parsed: "
            "ValueError('not enough values to unpack (expected 2, got 1)')",
        ),
    ],
)
def test_unusable_offers(text: str, detail: str) -> None:
    assert invalid(codecs.parse_offer, text) == ("bad_sdp", detail)


def test_video_preferences_allow_exactly_the_session_codec() -> None:
    assert [
        (c.name, c.parameters.get("profile-level-id")) for c in codecs.video_preferences("vp8", "")
    ] == [("VP8", None)]
    for profile in ("42e01f", "42001f"):
        assert [
            (c.name, c.parameters.get("profile-level-id"))
            for c in codecs.video_preferences("h264", profile)
        ] == [("H264", profile)]
    assert [c.name for c in codecs.audio_preferences()] == ["opus"]


# --- tokens -----------------------------------------------------------------------------------

SECRET = "unit-test-secret-0123456789abcdefghijklmnop"
NOW = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)


def check(
    token: str,
    *,
    session_id: int = 7,
    roles: frozenset[TokenRole] = VIEWER_ROLES,
    now: datetime = NOW,
) -> tuple[int, str, str]:
    with pytest.raises(AuthError) as info:
        verify(SECRET, token, session_id=session_id, roles=roles, now=now)
    return status_for(info.value), info.value.code, info.value.detail


def test_a_genuine_token_is_accepted() -> None:
    token = issue(SECRET, session_id=7, role=TokenRole.VENUE, subject="venue:hall", now=NOW)
    claims = verify(SECRET, token, session_id=7, roles=VIEWER_ROLES, now=NOW + timedelta(days=29))
    assert (claims.session_id, claims.role, claims.subject) == (7, TokenRole.VENUE, "venue:hall")
    assert claims.expires_at == NOW + timedelta(days=30)


def test_tokens_that_are_refused() -> None:
    viewer = issue(SECRET, session_id=7, role=TokenRole.VIEWER, subject="session:7", now=NOW)
    short = issue(
        SECRET, session_id=7, role=TokenRole.VIEWER, subject="s", now=NOW, ttl=timedelta(minutes=5)
    )
    forged = issue("x" * 40, session_id=7, role=TokenRole.VIEWER, subject="s", now=NOW)
    other_audience = jwt.encode(
        {"aud": "elsewhere", "sid": 7, "role": "viewer", "sub": "s", "exp": 2**31},
        SECRET,
        algorithm="HS256",
    )
    unsigned = jwt.encode(
        {"aud": "studycast", "sid": 7, "role": "viewer", "sub": "s", "exp": 2**31},
        None,
        algorithm="none",
    )
    bad_role = jwt.encode(
        {"aud": "studycast", "sid": 7, "role": "admin", "sub": "s", "exp": 2**31},
        SECRET,
        algorithm="HS256",
    )
    no_subject = jwt.encode(
        {"aud": "studycast", "sid": 7, "role": "viewer", "exp": 2**31}, SECRET, algorithm="HS256"
    )
    assert [
        check(""),
        check("not.a.jwt"),
        check(forged),
        check(other_audience),
        check(unsigned),
        check(bad_role),
        check(no_subject),
        check(short, now=NOW + timedelta(minutes=5)),
        check(viewer, session_id=8),
        check(viewer, roles=frozenset({TokenRole.BROADCASTER})),
    ] == [
        (401, "missing_token", "a bearer token is required"),
        (401, "invalid_token", "the token is not valid: Invalid header padding"),
        (401, "invalid_token", "the token is not valid: Signature verification failed"),
        (401, "invalid_token", "the token is not valid: Audience doesn't match"),
        (401, "invalid_token", "the token is not valid: The specified alg value is not allowed"),
        (401, "invalid_token", "the token's claims are malformed"),
        (401, "invalid_token", 'the token is not valid: Token is missing the "sub" claim'),
        (401, "token_expired", "the token has expired"),
        (403, "wrong_session", "this token is for session 7, not 8"),
        (403, "wrong_role", "a viewer token cannot do this (needs: broadcaster)"),
    ]
    with pytest.raises(Forbidden):
        verify(SECRET, viewer, session_id=8, roles=VIEWER_ROLES, now=NOW)
    # One second before expiry it still works.
    verify(SECRET, short, session_id=7, roles=VIEWER_ROLES, now=NOW + timedelta(seconds=299))


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, ""),
        ("", ""),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", ""),
        ("Bearer", ""),
    ],
)
def test_bearer(header: str | None, token: str) -> None:
    assert bearer(header) == token


def test_the_collector_is_tuned_and_start_up_objects_are_frozen() -> None:
    before = gc.get_threshold()
    try:
        collector.tune()
        assert gc.get_threshold() == collector.THRESHOLDS
        collector.settle()
        assert gc.get_freeze_count() > 1000  # the test process's modules, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
