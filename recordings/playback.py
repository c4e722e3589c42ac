"""Playing a session's recording back: the segments as one timeline, the session's moments
(quiz questions, presence checks, broadcast pauses) placed on it as WebVTT chapters, and the
segments joined into one file by remuxing (packets copied with shifted timestamps, never decoded).

The timeline is the playlist's (``catalogue.playlist``): each segment sits at its wall-clock
offset from the first one, so the gaps between broadcaster connections stay gaps. A moment in a
gap, or before the first segment, is placed at the start of the next segment; a moment after the
last segment is not on the timeline at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

# A cue must end after it starts; a moment that falls entirely in a gap gets this much.
MIN_CUE_S = 0.001


@dataclass(frozen=True, slots=True)
class Placed:
    """A segment on the timeline: it starts ``offset_s`` in and plays ``duration_s`` (None:
    still being written; it then reaches to the next segment, or without end)."""

    started_at: datetime
    offset_s: float
    duration_s: float | None


@dataclass(frozen=True, slots=True)
class Moment:
    """Something that happened in the session, by wall clock; ``ended_at`` None for an instant
    or a span still open."""

    cue_id: str  # quiz-3, presence-12, pause-1: what kind of chapter it is, for the player
    text: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class Chapter:
    cue_id: str
    text: str
    start_s: float
    end_s: float


def timeline_position(segments: Sequence[Placed], at: datetime) -> float | None:
    """Where the wall-clock moment ``at`` falls on the timeline of ``segments`` (in order):
    inside a segment, its offset plus the time into it; before a segment (in a gap, or before
    the first), that segment's start; after the last segment's end, None."""
    for i, segment in enumerate(segments):
        into = (at - segment.started_at).total_seconds()
        if into <= 0:
            return segment.offset_s
        last = i == len(segments) - 1
        if segment.duration_s is None:
            if last:
                return round(segment.offset_s + into, 3)
            if at < segments[i + 1].started_at:
                return round(segment.offset_s + into, 3)
            continue
        if into <= segment.duration_s:
            return round(segment.offset_s + into, 3)
    return None


def timeline_end(segments: Sequence[Placed]) -> float:
    """The end of the last segment on the timeline (0 without segments)."""
    if not segments:
        return 0.0
    last = segments[-1]
    return round(last.offset_s + (last.duration_s or 0.0), 3)


def chapters(segments: Sequence[Placed], moments: Iterable[Moment]) -> list[Chapter]:
    """The moments on the timeline, in order of their start: a moment that starts after the
    recording is left out; one that ends after it (or never) ends with it."""
    end = timeline_end(segments)
    out: list[Chapter] = []
    for moment in moments:
        start = timeline_position(segments, moment.started_at)
        if start is None:
            continue
        stop = None if moment.ended_at is None else timeline_position(segments, moment.ended_at)
        stop = max(end if stop is None else stop, start)
        if stop - start < MIN_CUE_S:
            stop = round(start + MIN_CUE_S, 3)
        out.append(Chapter(moment.cue_id, moment.text, start, stop))
    return sorted(out, key=lambda c: (c.start_s, c.end_s, c.cue_id))


def vtt_time(seconds: float) -> str:
    """HH:MM:SS.mmm, as WebVTT writes cue times."""
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def _cue_text(text: str) -> str:
    # One line (a blank line would end the cue), and the three characters WebVTT reserves.
    line = " ".join(text.split())
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") or "-"


def webvtt(items: Iterable[Chapter]) -> str:
    """A WebVTT chapters file: one cue per chapter, its identifier the chapter's ``cue_id``."""
    blocks = ["WEBVTT"]
    for c in items:
        blocks.append(
            f"{c.cue_id}\n{vtt_time(c.start_s)} --> {vtt_time(c.end_s)}\n{_cue_text(c.text)}"
        )
    return "\n\n".join(blocks) + "\n"


def pauses(changes: Iterable[tuple[datetime, str]]) -> list[tuple[datetime, datetime | None]]:
    """The broadcast's pauses from its state changes (in order): from each ``paused`` to the
    next ``live`` or ``ended`` (None while still paused)."""
    spans: list[tuple[datetime, datetime | None]] = []
    paused_at: datetime | None = None
    for at, state in changes:
        if state == "paused" and paused_at is None:
            paused_at = at
        elif state in ("live", "ended") and paused_at is not None:
            spans.append((paused_at, at))
            paused_at = None
    if paused_at is not None:
        spans.append((paused_at, None))
    return spans


# --- joining segments --------------------------------------------------------------------------


def join_shifts(offsets: Sequence[float], ends: Sequence[float]) -> list[float]:
    """How far to shift each segment's timestamps in the joined file: its offset on the
    timeline, but never back into the previous segment (wall clock and media clock drift)."""
    shifts: list[float] = []
    reached = 0.0
    for offset, end in zip(offsets, ends, strict=True):
        shift = max(offset, reached)
        shifts.append(shift)
        reached = shift + end
    return shifts


def _media_end(path: Path) -> float:
    """Seconds from the file's start to the end of its last packet."""
    end = 0.0
    with av.open(str(path)) as source:
        for packet in source.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end


def join_files(parts: Sequence[tuple[Path, float]], out: Path, container: str) -> float:
    """Remux the segment files ``parts`` (path, timeline offset) into one ``container`` file at
    ``out``: every packet copied, its timestamps shifted by its segment's place (``join_shifts``).
    Streams are matched by kind; the first segment's give the codec parameters. Returns the
    joined duration in seconds."""
    if not parts:
        raise ValueError("nothing to join")
    ends = [_media_end(path) for path, _ in parts]
    shifts = join_shifts([offset for _, offset in parts], ends)
    with av.open(str(out), "w", format=container) as output:
        streams: dict[str, Any] = {}
        with av.open(str(parts[0][0])) as first:
            for stream in first.streams:
                if stream.type in ("video", "audio") and stream.type not in streams:
                    streams[stream.type] = output.add_stream_from_template(stream)
        last_dts: dict[str, int] = {}
        for (path, _), shift in zip(parts, shifts, strict=True):
            with av.open(str(path)) as source:
                for packet in source.demux():
                    kind = packet.stream.type
                    if kind not in streams or packet.pts is None or packet.time_base is None:
                        continue
                    ticks = math.floor(Fraction(shift).limit_denominator(1000) / packet.time_base)
                    packet.pts += ticks
                    packet.dts = packet.pts if packet.dts is None else packet.dts + ticks
                    if packet.dts <= last_dts.get(kind, -1):
                        continue  # the muxer refuses a step back; drift makes one rarely
                    last_dts[kind] = packet.dts
                    packet.stream = streams[kind]
                    output.mux(packet)
    return round(shifts[-1] + ends[-1], 3)


__all__ = [
    "MIN_CUE_S",
    "Chapter",
    "Moment",
    "Placed",
    "chapters",
    "join_files",
    "join_shifts",
    "pauses",
    "timeline_end",
    "timeline_position",
    "vtt_time",
    "webvtt",
]
