"""Audio against video in a segment: placed by the earliest arrivals, not the first ones.

The pure core (``recordings.lipsync``) with scripted arrivals, then a real segment file written
from the relay's packets where a stall at the start of the segment made the audio arrive late in
one burst: the file's audio still starts with its picture.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import av
import pytest
from recording_support import clip_packets, decoded_audio_seconds, decoded_numbers
from relay_support import create_study_session, shared_clip

from attendance.store import Store
from recordings import Recordings, SegmentClosed
from recordings.lipsync import AUDIO_RATE, SETTLE_S, VIDEO_RATE, LipSync

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
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
    arrivals(sync, audio_delay=0.04)
    placement = sync.place()
    assert placement is not None
    assert placement.timestamp == A0
    assert placement.pts == round(0.04 * AUDIO_RATE)
    assert placement.pts_of(A0 + 960) == placement.pts + 960


def test_a_stall_before_the_first_audio_does_not_delay_the_audio() -> None:
    """The first audio arrives 1.2 s late in a burst; frames after the burst come on time."""
    sync = LipSync(V0, T0)
    arrivals(sync, audio_delay=0.0, late_until=T0 + 1.2, until=3.0)
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


def test_the_audio_settles_after_a_second_of_arrivals() -> None:
    sync = LipSync(V0, T0)
    assert not sync.settled and sync.place() is None
    step = 0.02
    for k in range(round(SETTLE_S / step) + 1):
        assert not sync.settled, k
        sync.audio(A0 + k * 960, T0 + k * step)
    assert sync.settled


@SQLITE_ONLY
@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_a_stall_at_the_start_of_a_segment_leaves_audio_and_video_together(
    store: Store, tmp_path: Path, now: datetime, codec: str
) -> None:
    """The relay's stamps as a stall makes them: the keyframe read on time, then nothing for
    1.2 s, then a burst of everything sent meanwhile, then on time again."""
    session_id = await create_study_session(store, now, codec)
    recordings = Recordings(store, tmp_path / "data", lambda: now)
    recordings.start()
    try:
        recorder = recordings.recorder(session_id, codec)
        for item in clip_packets(shared_clip(codec)):
            if item.at > 6.0:
                break
            stalled = item.at < 1.2 and item.number != 0  # all but the keyframe's packets
            recorder.media(replace(item.packet, arrived_at=T0 + (1.2 if stalled else item.at)))
    finally:
        await recordings.close()
    closed = [e for e in recordings.events if isinstance(e, SegmentClosed)]
    assert len(closed) == 1
    [row_path] = list((tmp_path / "data").rglob("0.*"))
    numbers = decoded_numbers(row_path)
    assert numbers[0] == 0 and numbers == sorted(numbers)
    with av.open(str(row_path)) as media:
        audio = media.streams.audio[0]
        first = next(p for p in media.demux(audio) if p.pts is not None)
        assert first.pts is not None and first.time_base is not None
        starts_at = float(first.pts * first.time_base)
    assert starts_at < 0.05, f"the audio starts {starts_at:.3f} s after its picture"
    assert abs(decoded_audio_seconds(row_path) - closed[0].duration_s) < 0.1
