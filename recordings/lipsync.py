"""Where a segment's audio goes against its video. Pure: no I/O, no clock.

A segment's video is written by its RTP timestamps from its first keyframe; the audio's RTP
timestamps count from an origin of their own (RFC 3550 picks it at random), so the two tracks are
lined up by when their frames arrived. An arrival can be late (a relay busy for a moment reads
what queued meanwhile in one burst), never early. So each track has a *base*: the earliest
``arrival - media time`` over its frames, the moment its media time zero would have arrived
without any delay. The first arrivals alone would put the audio as late as a stall at the start
of a segment lasted, for the whole segment; the bases do not.

The audio is held until its frames have been arriving for ``SETTLE_S`` (frames that come on time
after a burst show the burst was late), then placed at the difference of the bases, once for
the segment. Arrival times are the relay's stamps, so the result depends on nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_RATE = 90_000
AUDIO_RATE = 48_000
# Seconds of audio arrivals held before the audio is placed (and written).
SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class Placement:
    """The audio's first timestamp and the pts (1/48000 s from the segment start) it goes at."""

    timestamp: int
    pts: int

    def pts_of(self, timestamp: int) -> int:
        return self.pts + timestamp - self.timestamp


class LipSync:
    """One segment's two bases. ``video``/``audio`` for each frame (timestamps unwrapped);
    ``place()`` once the audio has ``settled`` (or when the segment ends)."""

    def __init__(self, video_origin: int, video_arrived: float) -> None:
        self._video_origin = video_origin
        self.video_base = video_arrived
        self._audio_first: tuple[int, float] | None = None
        self._audio_last_arrived = 0.0
        self.audio_base: float | None = None

    def video(self, timestamp: int, arrived: float) -> None:
        media = (timestamp - self._video_origin) / VIDEO_RATE
        self.video_base = min(self.video_base, arrived - media)

    def audio(self, timestamp: int, arrived: float) -> None:
        if self._audio_first is None:
            self._audio_first = (timestamp, arrived)
        first = self._audio_first[0]
        base = arrived - (timestamp - first) / AUDIO_RATE
        self.audio_base = base if self.audio_base is None else min(self.audio_base, base)
        self._audio_last_arrived = max(self._audio_last_arrived, arrived)

    @property
    def settled(self) -> bool:
        """Audio has been arriving long enough to place it."""
        if self._audio_first is None:
            return False
        return self._audio_last_arrived - self._audio_first[1] >= SETTLE_S

    def place(self) -> Placement | None:
        """Where the audio goes (None before any audio came)."""
        if self._audio_first is None or self.audio_base is None:
            return None
        offset = self.audio_base - self.video_base
        return Placement(self._audio_first[0], round(offset * AUDIO_RATE))
