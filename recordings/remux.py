"""Writing one segment file with PyAV by remuxing, never encoding: VP8 + Opus into WebM,
H.264 + Opus into Matroska.

Streams are made without opening any encoder: VP8 needs only its picture size (read from the
keyframe header); H.264 and Opus need codec private data, which PyAV only copies from a demuxed
stream, so a tiny in-memory Annex B access unit (the first keyframe) and a two-page Ogg Opus
header serve as templates. Matroska turns the Annex B SPS/PPS into ``avcC`` and the Annex B
frames into length-prefixed NAL units itself.

Clusters are closed at least every second and flushed to the file, so a killed writer leaves a
file that plays up to its last second or so.
"""

from __future__ import annotations

import fractions
import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av

VIDEO_TIME_BASE = fractions.Fraction(1, 90_000)
AUDIO_TIME_BASE = fractions.Fraction(1, 48_000)
OPUS_FRAME_TICKS = 960  # 20 ms, what WebRTC sends
CLUSTER_MS = 1000

CONTAINERS = {"vp8": ("webm", "webm"), "h264": ("matroska", "mkv")}


class RemuxError(Exception):
    """The segment's first keyframe cannot start a file (no size, no SPS/PPS)."""


def container_for(video_codec: str) -> tuple[str, str]:
    """The container format name and file extension for a session's video codec."""
    return CONTAINERS[video_codec]


def vp8_picture_size(keyframe: bytes) -> tuple[int, int]:
    """Width and height from a VP8 keyframe's uncompressed header (RFC 6386 section 9.1)."""
    if len(keyframe) < 10 or keyframe[0] & 1 or keyframe[3:6] != b"\x9d\x01\x2a":
        raise RemuxError("not a VP8 keyframe")
    width, height = struct.unpack("<HH", keyframe[6:10])
    return width & 0x3FFF, height & 0x3FFF


# --- templates ---------------------------------------------------------------------------------


def _ogg_crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x8000_0000 else r << 1
        table.append(r & 0xFFFF_FFFF)
    return table


_OGG_CRC = _ogg_crc_table()


def _ogg_page(data: bytes, sequence: int, flags: int) -> bytes:
    lacing = [255] * (len(data) // 255) + [len(data) % 255]
    header = b"OggS" + bytes([0, flags]) + struct.pack("<qIII", 0, 1, sequence, 0)
    page = header + bytes([len(lacing), *lacing]) + data
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFF_FFFF) ^ _OGG_CRC[((crc >> 24) ^ byte) & 0xFF]
    return page[:22] + struct.pack("<I", crc) + page[26:]


# One 20 ms Opus frame of silence (CELT, fullband): the template's only packet.
_OPUS_SILENCE = b"\xf8\xff\xfe"


def opus_template_bytes() -> bytes:
    """A minimal Ogg Opus stream: OpusHead (stereo, 48 kHz, no pre-skip, as WebRTC signals
    ``opus/48000/2``), OpusTags, and one silent packet so the demuxer settles."""
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, 48_000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 9) + b"studycast" + struct.pack("<I", 0)
    return _ogg_page(head, 0, 2) + _ogg_page(tags, 1, 0) + _ogg_page(_OPUS_SILENCE, 2, 4)


# --- the writer --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """A packet kept back until the next one of its track gives its duration."""

    data: bytes
    pts: int
    keyframe: bool


class SegmentFile:
    """One segment being written. Not thread-safe: one writer thread owns it.

    ``write_video``/``write_audio`` take pts in 1/90000 and 1/48000 from the segment start; they
    must grow per track. ``close()`` writes the trailer (duration, cues) and is idempotent.
    """

    def __init__(self, path: Path, video_codec: str, first_keyframe: bytes) -> None:
        self.path = path
        self.video_codec = video_codec
        self.container, _ = container_for(video_codec)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out: Any = av.open(
            str(path),
            "w",
            format=self.container,
            container_options={"cluster_time_limit": str(CLUSTER_MS), "flush_packets": "1"},
        )
        try:
            self._video = self._video_stream(first_keyframe)
            # Always an Opus track: the header is written before audio is sure to have come.
            with av.open(io.BytesIO(opus_template_bytes()), format="ogg") as template:
                self._audio = self._out.add_stream_from_template(template.streams.audio[0])
            self._audio.time_base = AUDIO_TIME_BASE
        except BaseException:
            self._out.close()
            raise
        self._held: dict[str, _Held | None] = {"video": None, "audio": None}
        self._last_step = {"video": 3000, "audio": OPUS_FRAME_TICKS}
        self.end_ticks = {"video": 0, "audio": 0}
        self.frames = {"video": 0, "audio": 0}
        self._closed = False

    def _video_stream(self, keyframe: bytes) -> Any:
        if self.video_codec == "vp8":
            width, height = vp8_picture_size(keyframe)
            stream = self._out.add_mux_stream("vp8", width=width, height=height)
        else:
            try:
                with av.open(io.BytesIO(keyframe), format="h264") as template:
                    source = template.streams.video[0]
                    if not source.codec_context.extradata or not source.codec_context.width:
                        raise RemuxError("the first H.264 keyframe carries no SPS/PPS")
                    stream = self._out.add_stream_from_template(source)
            except av.FFmpegError as exc:
                raise RemuxError(f"cannot read the first H.264 keyframe: {exc}") from exc
        stream.time_base = VIDEO_TIME_BASE
        return stream

    def write_video(self, data: bytes, pts: int, keyframe: bool) -> None:
        self._write("video", _Held(data, pts, keyframe))

    def write_audio(self, data: bytes, pts: int) -> None:
        self._write("audio", _Held(data, pts, True))

    def _write(self, kind: str, packet: _Held) -> None:
        held = self._held[kind]
        if held is not None:
            if packet.pts <= held.pts:
                return  # out of order after all: never give the muxer a step back
            self._last_step[kind] = packet.pts - held.pts
            self._mux(kind, held, self._last_step[kind])
        self._held[kind] = packet

    def _mux(self, kind: str, held: _Held, duration: int) -> None:
        stream = self._video if kind == "video" else self._audio
        time_base = VIDEO_TIME_BASE if kind == "video" else AUDIO_TIME_BASE
        packet = av.Packet(held.data)
        packet.stream = stream
        packet.time_base = time_base
        packet.pts = packet.dts = held.pts
        packet.duration = duration
        packet.is_keyframe = held.keyframe
        self._out.mux(packet)
        self.frames[kind] += 1
        self.end_ticks[kind] = held.pts + duration

    @property
    def duration_s(self) -> float:
        """Seconds from the segment start to the end of its last muxed frame."""
        return max(
            self.end_ticks["video"] * VIDEO_TIME_BASE, self.end_ticks["audio"] * AUDIO_TIME_BASE
        ).__float__()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for kind, held in self._held.items():
                if held is not None:
                    self._mux(kind, held, self._last_step[kind])
            self._held = {"video": None, "audio": None}
        finally:
            self._out.close()


# --- reading a segment back --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What a segment file holds, as far as it can be read (a crashed file ends early)."""

    size_bytes: int
    sha256: str
    duration_s: float
    video_frames: int
    audio_frames: int


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def inspect_file(path: Path) -> FileFacts:
    """Demux a segment file to the end (or to where it breaks off): its duration is the end of
    its last packet, counted from the start of the file."""
    size, sha256 = file_digest(path)
    end = 0.0
    counts = {"video": 0, "audio": 0}
    try:
        with av.open(str(path)) as container:
            try:
                for packet in container.demux():
                    if packet.pts is None or packet.time_base is None:
                        continue
                    kind = packet.stream.type
                    if kind in counts:
                        counts[kind] += 1
                    finish = (packet.pts + (packet.duration or 0)) * packet.time_base
                    end = max(end, float(finish))
            except av.FFmpegError:
                pass  # a file cut short by a crash: everything before the cut counts
    except av.FFmpegError:
        pass  # not even a header: an empty segment
    return FileFacts(size, sha256, round(end, 3), counts["video"], counts["audio"])


__all__ = [
    "AUDIO_TIME_BASE",
    "VIDEO_TIME_BASE",
    "FileFacts",
    "RemuxError",
    "SegmentFile",
    "container_for",
    "file_digest",
    "inspect_file",
]
