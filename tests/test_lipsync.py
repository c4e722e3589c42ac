"""Audio against video in a segment: placed by the earliest arrivals, not the first ones.

The pure core (``recordings.lipsync``) with scripted arrivals, then a real segment file written
from the relay's packets where a stall at the start of the segment made the audio arrive late in
one burst: the file's audio still starts with its picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import av
import pytest
from recording_support import (
    AUDIO_SSRC,
    VIDEO_SSRC,
    Scheduled,
    clip_packets,
    decoded_audio_seconds,
    decoded_numbers,
)
from relay_support import create_study_session, shared_clip

from attendance.store import Store
from recordings import Recordings, SegmentClosed, SegmentOpened
from recordings.lipsync import AUDIO_RATE, SETTLE_S, VIDEO_RATE, LipSync
from server.relay.packet import SenderReport

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CODECS = pytest.mark.parametrize("codec", ["vp8", "h264"])
NTP0 = 3_900_000_000.0  # the sender's clock (seconds since 1900) at the clip's start
V0, A0 = 4_294_000_000, 3_000_000_000  # RTP origins of their own, as senders choose them
T0 = 1_000.0  # the keyframe's arrival (monotonic seconds)


def arrivals(
    sync: LipSync, *, audio_delay: float, late_until: float = 0.0, until: float = 2.0
) -> None:
    """Video at 15 fps and audio every 20 ms from T0 on, the audio ``audio_delay`` behind the
    picture it goes with; whatever would arrive before ``late_until`` arrives then (a stall)."""
    for k in range(1, round(until * 15)):
        sync.video(V0 + k * VIDEO_RATE // 15, max(T0 + k / 15, late_until))
    for k in range(round(until * 50)):
        at = T0 + audio_delay + k * 0.02
        sync.audio(A0 + k * AUDIO_RATE // 50, max(at, late_until))


def test_audio_on_time_is_placed_where_it_arrived() -> None:
    sync = LipSync(V0, T0)
    arrivals(sync, audio_delay=0.04, until=SETTLE_S + 0.1)
    assert sync.settled
    placement = sync.place()
    assert placement is not None and placement.by == "arrival"
    assert placement.timestamp == A0
    assert placement.pts == round(0.04 * AUDIO_RATE)
    assert placement.pts_of(A0 + 960) == placement.pts + 960


def test_a_stall_before_the_first_audio_does_not_delay_the_audio() -> None:
    """The first audio arrives 1.2 s late in a burst; frames after the burst come on time."""
    sync = LipSync(V0, T0)
    arrivals(sync, audio_delay=0.0, late_until=T0 + 1.2, until=SETTLE_S + 1.3)
    placement = sync.place()
    assert placement is not None
    assert abs(placement.pts) <= 1, placement  # not 1.2 s (57,600 ticks) in


def test_a_late_keyframe_moves_the_video_base_back() -> None:
    """The keyframe itself was read late: the pictures after it show when it was due."""
    sync = LipSync(V0, T0 + 0.5)
    arrivals(sync, audio_delay=0.1)
    placement = sync.place()
    assert placement is not None
    assert sync.video_base == pytest.approx(T0)
    assert placement.pts == round(0.1 * AUDIO_RATE)


def test_sender_reports_place_the_audio_whatever_the_arrivals() -> None:
    """Every audio frame read 2 s late (a relay catching up slowly): the reports, which pair
    each track's RTP time with the sender's one clock, still say where it goes."""
    sync = LipSync(V0, T0)
    arrivals(sync, audio_delay=2.0, until=0.5)
    assert not sync.settled  # half a second of audio, no reports yet
    ntp = 3_900_000_000.25  # the sender's clock when the keyframe was captured
    sync.report("video", ntp + 1.0, (V0 + VIDEO_RATE) % 2**32)  # 1 s later, by RTP time
    assert not sync.settled
    sync.report("audio", ntp + 0.5, (A0 - 960 + AUDIO_RATE // 2) % 2**32)  # A0 was 20 ms late
    assert sync.settled
    placement = sync.place()
    assert placement is not None and placement.by == "sender reports"
    assert placement.pts == 960  # 20 ms in, not 2 s


def test_reports_with_a_zero_clock_do_not_count() -> None:
    sync = LipSync(V0, T0)
    arrivals(sync, audio_delay=0.0, until=0.5)
    sync.report("video", 0.0, 0)
    sync.report("audio", 3_900_000_000.0, A0)
    assert not sync.settled


def test_the_audio_settles_after_the_window_of_arrivals() -> None:
    sync = LipSync(V0, T0)
    assert not sync.settled and sync.place() is None
    step = 0.02
    for k in range(round(SETTLE_S / step) + 1):
        assert not sync.settled, k
        sync.audio(A0 + k * 960, T0 + k * step)
    assert sync.settled


def test_video_without_audio_is_held_no_longer_than_the_window() -> None:
    sync = LipSync(V0, T0)
    sync.video(V0 + VIDEO_RATE, T0 + 1.0)
    assert not sync.video_only_so_far
    sync.video(V0 + round(SETTLE_S * VIDEO_RATE), T0 + SETTLE_S)
    assert sync.video_only_so_far and sync.place() is None
    sync.audio(A0, T0 + SETTLE_S)
    assert not sync.video_only_so_far


async def record(
    store: Store,
    data_dir: Path,
    now: datetime,
    codec: str,
    delay: Callable[[Scheduled], float],
    reports: bool = False,
) -> tuple[SegmentClosed, Path, dict[str, int]]:
    """Six seconds of the clip through a real recorder, each packet stamped as read ``delay``
    seconds after it was due; with ``reports``, the sender's reports after one second. Returns
    the segment closed, its file and the packets fed by kind."""
    session_id = await create_study_session(store, now, codec)
    recordings = Recordings(store, data_dir, lambda: now)
    recordings.start()
    sent: dict[str, int] = {}
    try:
        recorder = recordings.recorder(session_id, codec)
        for item in clip_packets(shared_clip(codec)):
            if item.at > 6.0:
                break
            packet = item.packet
            recorder.media(replace(packet, arrived_at=T0 + item.at + delay(item)))
            sent[packet.kind] = sent.get(packet.kind, 0) + 1
            if reports and item.at >= 1.0 and len(sent) == 2 and sent.get("reported") is None:
                sent["reported"] = 1
                for kind, rate in (("video", VIDEO_RATE), ("audio", AUDIO_RATE)):
                    epoch = (1 << 32) + (VIDEO_SSRC if kind == "video" else AUDIO_SSRC)
                    # The sender's clock at the clip's time 1.0 s, and that RTP time.
                    rtp = round(1.0 * rate) if kind == "audio" else 15 * (VIDEO_RATE // 15)
                    recorder.sender_report(SenderReport(kind, epoch, NTP0 + 1.0, rtp, 50))
    finally:
        await recordings.close()
    [closed] = [e for e in recordings.events if isinstance(e, SegmentClosed)]
    [opened] = [e for e in recordings.events if isinstance(e, SegmentOpened)]
    return closed, data_dir / opened.path, sent


def audio_start(path: Path) -> float:
    """Seconds from the segment's start to its first audio packet."""
    numbers = decoded_numbers(path)
    assert numbers[0] == 0 and numbers == sorted(numbers)
    with av.open(str(path)) as media:
        first = next(p for p in media.demux(media.streams.audio[0]) if p.pts is not None)
        assert first.pts is not None and first.time_base is not None
        return float(first.pts * first.time_base)


@SQLITE_ONLY
@CODECS
async def test_a_stall_at_the_start_of_a_segment_leaves_audio_and_video_together(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    """The relay's stamps as a stall makes them: the keyframe read on time, then nothing for
    1.2 s, then a burst of everything sent meanwhile, then on time again. No sender reports."""

    def stalled(item: Scheduled) -> float:
        return 1.2 - item.at if item.at < 1.2 and item.number != 0 else 0.0

    closed, path, sent = await record(store, tmp_path / "data", now, codec, stalled)
    assert closed.audio_placed_by == "arrival"
    starts_at = audio_start(path)
    assert starts_at < 0.05, f"the audio starts {starts_at:.3f} s after its picture"
    assert abs(decoded_audio_seconds(path) - closed.duration_s) < 0.1
    assert closed.audio_frames == sent["audio"]  # none lost in the hold


@SQLITE_ONLY
@CODECS
async def test_sender_reports_place_the_audio_of_a_relay_that_stays_behind(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    """The keyframe read on time, then everything 2 s late for good: arrivals alone would put
    the audio 2 s in; the sender's reports put it with its picture."""

    def behind(item: Scheduled) -> float:
        return 0.0 if item.number == 0 else 2.0

    closed, path, sent = await record(store, tmp_path / "data", now, codec, behind, True)
    assert closed.audio_placed_by == "sender reports"
    starts_at = audio_start(path)
    assert starts_at < 0.05, f"the audio starts {starts_at:.3f} s after its picture"
    assert abs(decoded_audio_seconds(path) - closed.duration_s) < 0.1
    assert closed.audio_frames == sent["audio"]
