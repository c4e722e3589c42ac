"""Where a segment's audio goes against its video. Pure: no I/O, no clock.

A segment's video is written by its RTP timestamps from its first keyframe; the audio's RTP
timestamps count from an origin of their own (RFC 3550 picks it at random). Two ways line them up:

- **Sender reports** (RTCP SR, RFC 3550 6.4.1): each track's sender pairs one of its RTP
  timestamps with its own wall clock, the same clock for both tracks. That is how players keep
  lips in sync, and nothing on the way (a relay reading late, a burst) moves it. Used once both
  tracks have sent one.
- **Arrival**: when a sender sends none in time (or sends them with a zero clock), each track's
  *base* is the earliest ``arrival - media time`` over its frames: the moment its media time zero
  would have arrived without any delay. An arrival can be late (a relay busy for a moment reads
  what queued meanwhile in one burst), never early, so the first arrivals alone would put the
  audio as late as a stall at the start of the segment lasted, for the whole segment; the bases
  do not, once frames have come on time again. A relay that catches up slowly, over more than
  the window, can still leave the audio late: that is what the sender reports are for.

The recorder holds the start of a segment until the audio is placed: both reports have come, or
``SETTLE_S`` of audio has arrived (or as long of video, with no audio).
"""

from __future__ import annotations

from dataclasses import dataclass

VIDEO_RATE = 90_000
AUDIO_RATE = 48_000
RATES = {"video": VIDEO_RATE, "audio": AUDIO_RATE}
# Seconds of arrivals held before the audio is placed without sender reports.
SETTLE_S = 3.0
_TS_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class Placement:
    """The audio's first timestamp and the pts (1/48000 s from the segment start) it goes at."""

    timestamp: int
    pts: int
    by: str  # "sender reports" | "arrival"

    def pts_of(self, timestamp: int) -> int:
        return self.pts + timestamp - self.timestamp


def _ticks_since(timestamp: int, reference: int) -> int:
    """RTP ticks from ``reference`` (32 bits) to ``timestamp`` (either width), signed."""
    step = (timestamp - reference) % _TS_MOD
    return step - _TS_MOD if step >= _TS_MOD // 2 else step


class LipSync:
    """One segment's two tracks. ``video``/``audio`` for each frame (timestamps unwrapped),
    ``report`` for each sender report; ``place()`` once ``settled`` (or when the segment ends)."""

    def __init__(self, video_origin: int, video_arrived: float) -> None:
        self._video_origin = video_origin
        self._video_first = video_arrived
        self._video_last = video_arrived
        self.video_base = video_arrived
        self._audio_first: tuple[int, float] | None = None
        self._audio_last = 0.0
        self.audio_base: float | None = None
        self._reports: dict[str, tuple[float, int]] = {}

    @property
    def has_audio(self) -> bool:
        return self._audio_first is not None

    def video(self, timestamp: int, arrived: float) -> None:
        media = (timestamp - self._video_origin) / VIDEO_RATE
        self.video_base = min(self.video_base, arrived - media)
        self._video_last = max(self._video_last, arrived)

    def audio(self, timestamp: int, arrived: float) -> None:
        if self._audio_first is None:
            self._audio_first = (timestamp, arrived)
        first = self._audio_first[0]
        base = arrived - (timestamp - first) / AUDIO_RATE
        self.audio_base = base if self.audio_base is None else min(self.audio_base, base)
        self._audio_last = max(self._audio_last, arrived)

    def report(self, kind: str, ntp_s: float, rtp_timestamp: int) -> None:
        """A sender report of ``kind``: its sender's clock (seconds) at ``rtp_timestamp``."""
        if kind in RATES and ntp_s > 0:
            self._reports[kind] = (ntp_s, rtp_timestamp)

    @property
    def settled(self) -> bool:
        """The audio can be placed: both sender reports are in, or the window has passed."""
        if self._audio_first is None:
            return False
        if len(self._reports) == 2:
            return True
        return self._audio_last - self._audio_first[1] >= SETTLE_S

    @property
    def video_only_so_far(self) -> bool:
        """The window has passed on the video without any audio: stop holding the video."""
        return self._audio_first is None and self._video_last - self._video_first >= SETTLE_S

    def place(self) -> Placement | None:
        """Where the audio goes (None before any audio came)."""
        if self._audio_first is None or self.audio_base is None:
            return None
        first = self._audio_first[0]
        if len(self._reports) == 2:
            video_ntp, video_rtp = self._reports["video"]
            audio_ntp, audio_rtp = self._reports["audio"]
            video_at = video_ntp + _ticks_since(self._video_origin, video_rtp) / VIDEO_RATE
            audio_at = audio_ntp + _ticks_since(first, audio_rtp) / AUDIO_RATE
            return Placement(first, round((audio_at - video_at) * AUDIO_RATE), "sender reports")
        offset = self.audio_base - self.video_base
        return Placement(first, round(offset * AUDIO_RATE), "arrival")
