"""A test and benchmark clip, encoded once: numbered video frames (VP8 or H.264) and an Opus tone.

The relay forwards encoded media without transcoding, so our publishers and load tools send
pre-encoded packets; encoding them once here keeps a benchmark's CPU for the relay. Every frame
carries its frame number as a row of black/white blocks (``read_frame_number`` reads it back), so a
test that decodes what arrived can check order, gaps and keyframe jumps.

Clips are cached on disk (keyed by every parameter and the codec library versions) because
encoding even a few seconds costs more than a test should pay twice.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
from av.video.frame import PictureType

VideoCodec = Literal["vp8", "h264"]
VIDEO_CODECS: tuple[VideoCodec, ...] = ("vp8", "h264")

AUDIO_SAMPLE_RATE = 48_000
AUDIO_PACKET_SECONDS = 0.020
AUDIO_SAMPLES_PER_PACKET = 960
AUDIO_CHANNELS = 2
TONE_HZ = 440.0

COUNTER_BITS = 16
_FORMAT_VERSION = 1
_CACHE_ENV = "STUDYCAST_CLIP_CACHE"


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """One encoded video frame or Opus packet; ``duration`` in seconds, ``index`` in its track."""

    data: bytes
    duration: float
    keyframe: bool
    index: int


@dataclass(frozen=True, slots=True)
class EncodedClip:
    """A pre-encoded clip: video packets (one per frame, decode order = display order) and
    20 ms Opus packets covering the same time."""

    codec: VideoCodec
    fps: int
    width: int
    height: int
    gop_frames: int
    video: tuple[EncodedPacket, ...]
    audio: tuple[EncodedPacket, ...]

    @property
    def seconds(self) -> float:
        return len(self.video) / self.fps

    @property
    def keyframe_indices(self) -> tuple[int, ...]:
        return tuple(p.index for p in self.video if p.keyframe)

    def packets(self, kind: str) -> tuple[EncodedPacket, ...]:
        """The packets of one kind (``"audio"`` or ``"video"``)."""
        if kind == "video":
            return self.video
        if kind == "audio":
            return self.audio
        raise ValueError(f"unknown media kind {kind!r}")


def make_clip(
    codec: VideoCodec,
    seconds: float,
    fps: int = 30,
    width: int = 640,
    height: int = 480,
    bitrate: int = 1_000_000,
    gop_seconds: float = 2.0,
    *,
    cache: bool = True,
    cache_dir: Path | None = None,
) -> EncodedClip:
    """Encode (or load from the cache) a clip with a keyframe every ``gop_seconds``.

    H.264 is constrained baseline (SPS 42c01f, compatible with profile-level-id 42e01f), Annex B,
    no B-frames, SPS/PPS before every IDR, so a viewer can start at any keyframe.
    """
    if codec not in VIDEO_CODECS:
        raise ValueError(f"codec must be one of {', '.join(VIDEO_CODECS)}, not {codec!r}")
    if not 1 <= fps <= 120:
        raise ValueError("fps must be 1..120")
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise ValueError("width and height must be even and at least 64")
    frames = round(seconds * fps)
    if frames < 1:
        raise ValueError("the clip must have at least one frame")
    gop_frames = max(1, round(gop_seconds * fps))
    params: dict[str, Any] = {
        "codec": codec,
        "frames": frames,
        "fps": fps,
        "width": width,
        "height": height,
        "bitrate": bitrate,
        "gop_frames": gop_frames,
    }
    path = _cache_path(params, cache_dir) if cache else None
    if path is not None:
        loaded = _load(path)
        if loaded is not None:
            return loaded
    video = _encode_video(codec, frames, fps, width, height, bitrate, gop_frames)
    audio = _encode_audio(frames / fps)
    clip = EncodedClip(codec, fps, width, height, gop_frames, video, audio)
    if path is not None:
        _store(path, clip)
    return clip


# --- the picture ------------------------------------------------------------------------------


def _block_size(width: int, height: int) -> int:
    return max(4, min(width // (COUNTER_BITS + 4), height // 8))


def draw_frame(number: int, width: int, height: int) -> av.VideoFrame:
    """Frame ``number`` as yuv420p: a moving gradient and bar, with the number in blocks on top."""
    y = np.empty((height, width), dtype=np.uint8)
    cols = np.arange(width, dtype=np.int32)
    y[:] = ((cols * 160 // width + number * 3) % 160 + 48).astype(np.uint8)
    bar = max(4, width // 16)
    x0 = (number * 7) % (width - bar)
    b = _block_size(width, height)
    y[3 * b :, x0 : x0 + bar] = 235
    # The counter row: one b×b block per bit, most significant first, on a black strip.
    y[: 2 * b, : (COUNTER_BITS + 1) * b] = 16
    top = b // 2
    for bit in range(COUNTER_BITS):
        if (number >> (COUNTER_BITS - 1 - bit)) & 1:
            left = b // 2 + bit * b
            y[top : top + b, left : left + b] = 235
    u = np.full((height // 2, width // 2), 128 + int(60 * math.sin(number / 20)), np.uint8)
    v = np.full((height // 2, width // 2), 128 + int(60 * math.cos(number / 33)), np.uint8)
    planes = np.concatenate([y.ravel(), u.ravel(), v.ravel()]).reshape(height * 3 // 2, width)
    return av.VideoFrame.from_ndarray(planes, format="yuv420p")


def read_frame_number(frame: av.VideoFrame) -> int:
    """The number ``draw_frame`` wrote into a (decoded) frame."""
    y = np.asarray(frame.to_ndarray(format="gray"), dtype=np.uint8)
    b = _block_size(frame.width, frame.height)
    top = b // 2
    margin = max(1, b // 4)
    number = 0
    for bit in range(COUNTER_BITS):
        left = b // 2 + bit * b
        cell = y[top + margin : top + b - margin, left + margin : left + b - margin]
        number = (number << 1) | int(float(cell.mean()) > 128)
    return number


# --- encoding ---------------------------------------------------------------------------------


def _video_encoder(
    codec: VideoCodec, fps: int, width: int, height: int, bitrate: int, gop: int
) -> av.VideoCodecContext:
    ctx = av.CodecContext.create("libvpx" if codec == "vp8" else "libx264", "w")
    assert isinstance(ctx, av.VideoCodecContext)
    ctx.width = width
    ctx.height = height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = bitrate
    ctx.gop_size = gop
    if codec == "vp8":
        ctx.options = {
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "0",
            "auto-alt-ref": "0",
            "keyint_min": str(gop),
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
        }
    else:
        ctx.options = {
            "preset": "veryfast",
            "tune": "zerolatency",  # no B-frames, no lookahead
            "profile": "baseline",
            "level": "31",
            "forced-idr": "1",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            "x264-params": f"repeat-headers=1:scenecut=0:keyint={gop}:min-keyint={gop}:bframes=0",
        }
    return ctx


def _encode_video(
    codec: VideoCodec, frames: int, fps: int, width: int, height: int, bitrate: int, gop: int
) -> tuple[EncodedPacket, ...]:
    ctx = _video_encoder(codec, fps, width, height, bitrate, gop)
    encoded: list[av.Packet[Any]] = []
    for number in range(frames):
        frame = draw_frame(number, width, height)
        frame.pts = number
        frame.time_base = ctx.time_base
        # Forcing the picture type pins keyframes to exact GOP boundaries in both encoders.
        frame.pict_type = PictureType.I if number % gop == 0 else PictureType.NONE
        encoded.extend(ctx.encode(frame))
    encoded.extend(ctx.encode(None))
    if len(encoded) != frames:
        raise RuntimeError(f"{codec} encoder gave {len(encoded)} packets for {frames} frames")
    return tuple(
        EncodedPacket(bytes(p), 1 / fps, bool(p.is_keyframe), i) for i, p in enumerate(encoded)
    )


def _encode_audio(seconds: float) -> tuple[EncodedPacket, ...]:
    ctx = av.CodecContext.create("libopus", "w")
    assert isinstance(ctx, av.AudioCodecContext)
    ctx.sample_rate = AUDIO_SAMPLE_RATE
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = 64_000
    ctx.time_base = fractions.Fraction(1, AUDIO_SAMPLE_RATE)
    count = max(1, round(seconds / AUDIO_PACKET_SECONDS))
    encoded: list[av.Packet[Any]] = []
    t = np.arange(AUDIO_SAMPLES_PER_PACKET, dtype=np.float64)
    for i in range(count):
        start = i * AUDIO_SAMPLES_PER_PACKET
        wave = 0.25 * np.sin(2 * np.pi * TONE_HZ * (start + t) / AUDIO_SAMPLE_RATE)
        samples = (wave * 32767).astype(np.int16)
        stereo = np.repeat(samples, AUDIO_CHANNELS).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate = AUDIO_SAMPLE_RATE
        frame.pts = start
        frame.time_base = ctx.time_base
        encoded.extend(ctx.encode(frame))
    encoded.extend(ctx.encode(None))
    return tuple(
        EncodedPacket(bytes(p), AUDIO_PACKET_SECONDS, True, i)
        for i, p in enumerate(encoded[:count])
    )


# --- the on-disk cache ------------------------------------------------------------------------
# Layout: one JSON header line (parameters and packet table), then the packet bytes back to back.


def default_cache_dir() -> Path:
    """``$STUDYCAST_CLIP_CACHE``, or ``studycast-clips`` in the system temp directory."""
    configured = os.environ.get(_CACHE_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "studycast-clips"


def _cache_path(params: dict[str, Any], cache_dir: Path | None) -> Path:
    key = dict(params, version=_FORMAT_VERSION, av=av.__version__, libs=_library_versions())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return (cache_dir or default_cache_dir()) / f"{params['codec']}-{digest}.clip"


def _library_versions() -> dict[str, Any]:
    return {name: list(v) for name, v in sorted(av.library_versions.items())}


def _table(packets: Sequence[EncodedPacket]) -> list[list[Any]]:
    return [[len(p.data), p.duration, p.keyframe] for p in packets]


def _store(path: Path, clip: EncodedClip) -> None:
    header = {
        "codec": clip.codec,
        "fps": clip.fps,
        "width": clip.width,
        "height": clip.height,
        "gop_frames": clip.gop_frames,
        "video": _table(clip.video),
        "audio": _table(clip.audio),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed: load-test processes may build the same clip at once.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".clip-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(json.dumps(header).encode() + b"\n")
            for packet in (*clip.video, *clip.audio):
                out.write(packet.data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load(path: Path) -> EncodedClip | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        line, _, body = raw.partition(b"\n")
        header = json.loads(line)
        pos = 0

        def unpack(table: list[list[Any]]) -> tuple[EncodedPacket, ...]:
            nonlocal pos
            out = []
            for i, (size, duration, keyframe) in enumerate(table):
                out.append(EncodedPacket(body[pos : pos + size], duration, keyframe, i))
                pos += size
            return tuple(out)

        video, audio = unpack(header["video"]), unpack(header["audio"])
        if pos != len(body):
            return None
        return EncodedClip(
            header["codec"],
            header["fps"],
            header["width"],
            header["height"],
            header["gop_frames"],
            video,
            audio,
        )
    except (ValueError, KeyError, TypeError):
        return None  # a damaged cache file is rebuilt, not trusted
