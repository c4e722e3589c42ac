"""The benchmark clip: real encoders, decoded again with PyAV to check what viewers will see."""

from __future__ import annotations

import re
import time
from pathlib import Path

import av
import numpy as np
import pytest

from client.clip import EncodedClip, draw_frame, make_clip, read_frame_number

FPS = 30
SECONDS = 3
GOP_SECONDS = 1.0


@pytest.fixture(scope="module")
def clip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="module")
def vp8_clip(clip_cache: Path) -> EncodedClip:
    return make_clip("vp8", SECONDS, FPS, 320, 240, 500_000, GOP_SECONDS, cache_dir=clip_cache)


@pytest.fixture(scope="module")
def h264_clip(clip_cache: Path) -> EncodedClip:
    return make_clip("h264", SECONDS, FPS, 320, 240, 500_000, GOP_SECONDS, cache_dir=clip_cache)


@pytest.fixture(params=["vp8", "h264"])
def clip(request: pytest.FixtureRequest) -> EncodedClip:
    clip: EncodedClip = request.getfixturevalue(f"{request.param}_clip")
    return clip


def decode(clip: EncodedClip, start: int = 0, stop: int | None = None) -> list[int]:
    """Frame numbers decoded by a fresh decoder fed ``clip.video[start:stop]``, in output order."""
    decoder = av.CodecContext.create("libvpx" if clip.codec == "vp8" else "h264", "r")
    frames = []
    for packet in clip.video[start:stop]:
        frames.extend(decoder.decode(av.Packet(packet.data)))
    frames.extend(decoder.decode(None))
    return [read_frame_number(f) for f in frames]


def test_frames_decode_in_order_with_keyframes_every_gop(clip: EncodedClip) -> None:
    count = SECONDS * FPS
    assert (clip.fps, clip.width, clip.height, clip.gop_frames) == (FPS, 320, 240, 30)
    assert [p.index for p in clip.video] == list(range(count))
    assert all(p.duration == pytest.approx(1 / FPS) for p in clip.video)
    assert clip.keyframe_indices == (0, 30, 60)
    assert decode(clip) == list(range(count))
    # A viewer can start at any keyframe: a fresh decoder shows it and what follows.
    for k in clip.keyframe_indices:
        assert decode(clip, k, k + 3) == [k, k + 1, k + 2]


def test_h264_is_annex_b_constrained_baseline_with_headers_before_every_idr(
    h264_clip: EncodedClip,
) -> None:
    for packet in h264_clip.video:
        assert packet.data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
        starts = [m.end() for m in re.finditer(b"\x00\x00\x01", packet.data)]
        nal_types = [packet.data[i] & 0x1F for i in starts]
        if packet.keyframe:
            assert nal_types[:2] == [7, 8]  # SPS, PPS, then the IDR slices
            assert set(nal_types[2:]) <= {5, 6} and 5 in nal_types
            sps = packet.data[starts[0] : starts[0] + 4]
            assert sps[1] == 66  # profile_idc: baseline
            assert sps[2] & 0x40  # constraint_set1: constrained baseline (42e01f-compatible)
            assert sps[3] <= 31  # level 3.1 or lower
        else:
            assert set(nal_types) == {1}  # P slices only: no B-frames, no headers


def test_vp8_keyframe_flag_matches_the_bitstream(vp8_clip: EncodedClip) -> None:
    # VP8 frame tag (RFC 6386 9.1): bit 0 is 0 for a keyframe, whose start code follows.
    video = vp8_clip.video
    assert [not p.data[0] & 1 for p in video] == [p.keyframe for p in video]
    assert all(p.data[3:6] == b"\x9d\x01\x2a" for p in video if p.keyframe)


def test_audio_is_20ms_opus_carrying_a_440hz_tone(clip: EncodedClip) -> None:
    assert len(clip.audio) == SECONDS * 50
    assert all(p.duration == 0.02 and p.keyframe for p in clip.audio)
    decoder = av.CodecContext.create("libopus", "r")
    samples = []
    for packet in clip.audio:
        for frame in decoder.decode(av.Packet(packet.data)):
            data = frame.to_ndarray()
            channels = len(frame.layout.channels)
            samples.append(data[0] if frame.format.is_planar else data.reshape(-1, channels)[:, 0])
    pcm = np.concatenate(samples).astype(np.float64)
    assert len(pcm) == SECONDS * 48_000
    spectrum = np.abs(np.fft.rfft(pcm[48_000:96_000]))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)  # 1 s window: bins are 1 Hz


def test_frame_numbers_survive_drawing_at_several_sizes() -> None:
    for width, height in ((64, 64), (320, 240), (640, 480), (1280, 720)):
        for number in (0, 1, 2, 255, 4097, 65535):
            assert read_frame_number(draw_frame(number, width, height)) == number


def test_cache_returns_the_same_clip_and_rebuilds_a_damaged_file(tmp_path: Path) -> None:
    first = make_clip("vp8", 0.5, width=128, height=96, cache_dir=tmp_path)
    (path,) = tmp_path.glob("vp8-*.clip")
    started = time.perf_counter()
    assert make_clip("vp8", 0.5, width=128, height=96, cache_dir=tmp_path) == first
    assert time.perf_counter() - started < 0.5
    other = make_clip("vp8", 0.5, width=128, height=96, bitrate=200_000, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("vp8-*.clip"))) == 2 and other.codec == "vp8"
    path.write_bytes(path.read_bytes()[:-10])  # truncated: must not be trusted
    rebuilt = make_clip("vp8", 0.5, width=128, height=96, cache_dir=tmp_path)
    assert [p.index for p in rebuilt.video] == list(range(15))
    assert len(path.read_bytes()) > 0 and rebuilt.keyframe_indices == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"codec": "av1"}, "codec must be one of"),
        ({"fps": 0}, "fps"),
        ({"width": 321}, "even"),
        ({"seconds": 0.001}, "at least one frame"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"codec": "vp8", "seconds": 1.0, "cache": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_clip(**args)  # type: ignore[arg-type]
