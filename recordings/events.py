"""What the recorder reports: a segment file was opened, a segment file was closed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SegmentOpened:
    """A segment's file exists and is being written (its first keyframe has arrived)."""

    session_id: int
    segment_index: int
    path: str  # relative to the data directory
    container: str  # "webm" | "matroska"
    video_codec: str
    audio_codec: str | None
    started_at: datetime


@dataclass(frozen=True, slots=True)
class SegmentClosed:
    """A segment's file is complete; ``duration_s`` is measured on the muxed timestamps."""

    session_id: int
    segment_index: int
    ended_at: datetime
    duration_s: float
    size_bytes: int
    sha256: str
    video_frames: int
    audio_frames: int
    audio_codec: str | None
    dropped: int  # packets dropped because the writer fell behind, and frames lost to gaps
    audio_placed_by: str | None = None  # "sender reports" | "arrival" (recordings.lipsync)


RecordingEvent = SegmentOpened | SegmentClosed
